"""Turn-level advantages of one scored group of asynchronous rollouts (TRL's `AsyncGRPOTrainer` layout).

An asynchronous rollout is trained as one or more rows (TRL's `TrainingSequence`s): the tokens of the prompt and of the
conversation so far, with `completion_mask` 1 on the model's own tokens and 0 on the prompt, the tool responses and
any context a re-tokenization rewrote. A model turn is a maximal run of 1s (arXiv 2511.14846, section 3.1), as on the
synchronous paths; when a conversation forks into several rows (its chat template rewrote earlier turns), the later
rows carry only the turns after the fork as 1s, so the turns of a conversation are the runs of its rows in order.

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
    advantages: torch.Tensor, masks: Sequence[Sequence[Sequence[int]]]
) -> list[list[list[float]]]:
    """Spread a group's (N, K) turn advantages over its rows: [i][r][t] = A_i,turn(t) on a model token, 0 elsewhere.

    `masks[i]` are the completion masks of conversation i's rows; a NaN advantage (an unscorable trajectory) is 0, as
    GRPO gives it.
    """
    table = torch.nan_to_num(advantages, nan=0.0).tolist()
    spread = []
    for i, rows in enumerate(masks):
        index, _ = row_turns(rows)
        spread.append([[table[i][turn] if turn >= 0 else 0.0 for turn in row] for row in index])
    return spread
