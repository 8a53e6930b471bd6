"""Turn-level advantages of one scored group of asynchronous rollouts (TRL's `AsyncGRPOTrainer` layout).

An asynchronous rollout is trained as one or more rows (TRL's `TrainingSequence`s): the tokens of the prompt and of the
conversation so far, with `completion_mask` 1 on the model's own tokens and 0 on the prompt, the tool responses and
any context a re-tokenization rewrote. A model turn is a maximal run of 1s (arXiv 2511.14846, section 3.1), as on the
synchronous paths; when a conversation forks into several rows (its chat template rewrote earlier turns), the later
rows carry only the turns after the fork as 1s, so the turns of a conversation are the runs of its rows in order.

Counting runs is only right while every turn keeps a trained token. TRL's reconciler rewrites a turn whose next
re-rendering differs (a tool call re-rendered as the template's JSON, dropped reasoning) into context: rewritten from
its first token, the turn has no 1 left, and every later run would be taken for the turn before it. So when the
rollout loop knows which turn sampled each token (`turn_ids`, from `_trl_compat.async_grpo.rollout_turns`), that
identity is used instead: a rewritten turn keeps its place in the table (its records, its turn rewards, its share of
the later turns' returns), and its advantage goes to whatever of its sampled tokens are still trained (none when it
was rewritten from its first token: `rewritten_turns` counts those).

Pure functions: the rollout worker gathers a group and calls `scoring.score_turns` (the same step as
`GTPOTrainer`'s), and `token_advantages_by_row` spreads each turn's advantage over its tokens.
"""

from collections.abc import Sequence

import torch

from .turn_records import turn_spans


def row_turns(masks: Sequence[Sequence[int]]) -> tuple[list[list[int]], int]:
    """Number the model tokens of a conversation's rows by turn.

    Returns `(index, num_turns)`: per row, the turn of each token (-1 for a masked token), counting on across rows,
    and the conversation's number of turns.
    """
    index, turn = [], 0
    for mask in masks:
        row = [-1] * len(mask)
        for start, end in turn_spans(mask):
            row[start:end] = [turn] * (end - start)
            turn += 1
        index.append(row)
    return index, turn


def token_advantages_by_row(
    advantages: torch.Tensor,
    masks: Sequence[Sequence[Sequence[int]]],
    turn_ids: Sequence[Sequence[Sequence[int]] | None] | None = None,
) -> list[list[list[float]]]:
    """Spread a group's (N, K) turn advantages over its rows: [i][r][t] = A_i,turn(t) on a model token, 0 elsewhere.

    `masks[i]` are the completion masks of conversation i's rows; `turn_ids[i]` (when known; None: the runs of the
    masks) the turn of each of their tokens, -1 off the trained ones. A NaN advantage (an unscorable trajectory) is
    0, as GRPO gives it.
    """
    table = torch.nan_to_num(advantages, nan=0.0).tolist()
    spread = []
    for i, rows in enumerate(masks):
        known = turn_ids[i] if turn_ids is not None else None
        index = known if known is not None else row_turns(rows)[0]
        if [len(row) for row in index] != [len(row) for row in rows] or any(
            (turn >= 0) != bool(value) for row, mask in zip(index, rows) for turn, value in zip(row, mask)
        ):
            raise ValueError(f"conversation {i}: its turn ids do not cover exactly its trained tokens")
        spread.append([[table[i][turn] if turn >= 0 else 0.0 for turn in row] for row in index])
    return spread


def rewritten_turns(turn_ids: Sequence[Sequence[int]], num_turns: int) -> list[int]:
    """The turns of a conversation (0 .. num_turns - 1) of which no token is trained in any of its rows."""
    trained = {turn for row in turn_ids for turn in row if turn >= 0}
    return [turn for turn in range(num_turns) if turn not in trained]
