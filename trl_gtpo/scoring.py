"""The scoring step of GTPO (arXiv 2511.14846, sections 3.1-3.3), one for both trainers: turn records, the reward
functions' table and the settings -> the turn-advantage table.

`GTPOTrainer` (a generation batch gathered from every process) and `AsyncGTPOTrainer` (one group, in TRL's rollout
process) only gather their step's inputs, call [`score_turns`], slice its table and log it; the rules that make turn
rewards (which records to read, the format rule, the weights of turn rewards, the outcome, shaping) live here once,
so the two trainers cannot drift apart. Pure: no trainer, no process group, no model (an embedding similarity is
loaded once per process by `similarity.make_similarity`).
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .advantages import AdvantageSettings, TurnAdvantages, TurnBatch, nanstd, turn_advantages
from .interpreter.environment import ToolRun, records_from_environment
from .rewards.format import format_terms
from .rewards.turn import weighted_turn_terms
from .shaping import batch_shaping_rewards
from .similarity import Similarity
from .turn_records import TurnRecord, records_from_messages, trajectory_code


@dataclass(frozen=True)
class ScoringSettings:
    """The settings of one scoring step, read from a config's GTPO fields (`from_config`).

    `aggregation` is TRL's `multi_objective_aggregation` (the asynchronous trainer sums its rewards); the shaping
    similarity is a name ("lexical", "embedding") or a callable, so the settings pickle to a rollout process.
    """

    advantages: AdvantageSettings = field(default_factory=AdvantageSettings)
    aggregation: str = "sum_then_normalize"
    format_penalty: float = -0.1
    shaping_alpha: float = 0.5
    shaping_success_threshold: float | None = None
    shaping_similarity: str | Similarity = "lexical"
    shaping_embedding_model: str | None = None

    @classmethod
    def from_config(
        cls, args, *, scale: str = "group", aggregation: str = "sum_then_normalize"
    ) -> "ScoringSettings":
        """The settings of a config's GTPO fields (`gtpo_config.GTPOFields`), with TRL's `scale_rewards` and
        `multi_objective_aggregation` where the trainer has them. TRL scales "normalize_then_sum" advantages by the
        batch std whatever `scale_rewards` says; so does GTPO."""
        scale = "batch" if aggregation == "normalize_then_sum" else scale
        return cls(
            advantages=AdvantageSettings(args.gamma, args.turn_advantage_estimator, args.turn_advantage_scope, scale),
            aggregation=aggregation,
            format_penalty=args.format_penalty,
            shaping_alpha=args.shaping_alpha,
            shaping_success_threshold=args.shaping_success_threshold,
            shaping_similarity=args.shaping_similarity,
            shaping_embedding_model=args.shaping_embedding_model,
        )


@dataclass(frozen=True)
class ScoredTurns:
    """What one scoring step gives: the `TurnBatch` it built, its (N, K) tables, and the format rule's terms (None
    off the code interpreter), for the trainers' logs."""

    batch: TurnBatch
    table: TurnAdvantages
    formats: torch.Tensor | None


def trajectory_records(
    completion_ids: Sequence[int],
    mask: Sequence[int] | None,
    messages,
    decode: Callable[[list[int]], str],
    *,
    own: Sequence[TurnRecord] | None = None,
    runs: Sequence[ToolRun] | None = None,
    spans: Sequence[tuple[int, int]] | None = None,
) -> list[TurnRecord]:
    """One trajectory's turn records, from the best source it has: the code interpreter's own records (`own`), a
    `PythonEnvironment`'s call log (`runs`), or TRL's tool messages (the mask alone when there are none). `spans`:
    the turns' token spans in `completion_ids` when the caller knows them (then `mask` is not read)."""
    if own is not None:
        return list(own)
    if runs is not None:
        return records_from_environment(completion_ids, mask, list(messages), runs, decode, spans)
    return records_from_messages(completion_ids, mask, messages, decode, spans)


def score_turns(
    records: Sequence[Sequence[TurnRecord]] | None,
    num_turns: torch.Tensor,
    rewards_per_func: torch.Tensor,
    reward_weights: torch.Tensor,
    group_size: int,
    settings: ScoringSettings,
    *,
    interpreter: bool = False,
    turn_values: Sequence[Sequence[Sequence[float | None]]] = (),
    turn_weights: Sequence[float] = (),
) -> ScoredTurns:
    """The turn-advantage table of N trajectories (consecutive groups of `group_size`).

    r_ij = format_ij + sum_f w_f u_f(i, j) + [j == K_i] (r_out_i + r_shape_i), then `advantages.turn_advantages`.

    - `records[i]`: trajectory i's turn records (None when nothing reads them). With `interpreter` (they are the code
      interpreter's, fence or `PythonEnvironment`), the format rule and shaping read them; other paths have no code
      of their own to judge.
    - `rewards_per_func` (N, F) and `reward_weights` (F,): the reward functions' table; r_out is its weighted sum
      (each function normalized in its group first under "normalize_then_sum"). Shaping decides success on the raw
      weighted sum.
    - `turn_values[s][i][j]` with weight `turn_weights[s]`: each source of turn rewards (the user's functions, an
      environment's, a rollout_func's); None and missing turns count 0.
    """
    width = max(1, int(num_turns.max().item())) if num_turns.numel() else 1
    outcome = outcome_rewards(rewards_per_func, reward_weights, group_size, settings.aggregation)
    raw = outcome_rewards(rewards_per_func, reward_weights, group_size)  # shaping's success: the raw weighted sum
    formats = format_terms(records, num_turns, width, settings.format_penalty) if interpreter else None
    terms = weighted_turn_terms(turn_values, turn_weights, width, base=formats)
    shaping = None
    if interpreter and settings.shaping_alpha != 0.0:  # part 3: failed trajectories near their group's successes
        codes = [trajectory_code(trajectory) for trajectory in records]
        values = batch_shaping_rewards(
            raw, codes, group_size, alpha=settings.shaping_alpha, success_threshold=settings.shaping_success_threshold,
            similarity=settings.shaping_similarity, embedding_model=settings.shaping_embedding_model,
        )
        shaping = torch.tensor(values, dtype=torch.float32, device=outcome.device)
    batch = TurnBatch(
        outcome=outcome,
        num_turns=num_turns,
        group_size=group_size,
        turn_terms=terms.to(outcome.device) if terms is not None else None,
        shaping=shaping,
    )
    return ScoredTurns(batch, turn_advantages(batch, settings.advantages), formats)


def outcome_rewards(
    rewards_per_func: torch.Tensor, weights: torch.Tensor, group_size: int, aggregation: str = "sum_then_normalize"
) -> torch.Tensor:
    """(N,) r_out_i from the (N, F) table of the reward functions, as TRL aggregates it (`multi_objective_aggregation`).

    "sum_then_normalize": the weighted sum sum_k w_k r_ik (GRPO's reward; GTPO normalizes it through the turn returns).
    "normalize_then_sum" (GDPO): each function is first normalized within its group, z_ik = (r_ik - mean_g r_k) /
    (std_g r_k + 1e-4), then r_out_i = sum_k w_k z_ik, exactly as TRL's `_generate_and_score_completions` does before
    its batch normalization (which GTPO's estimators then play, with `scale="batch"`). A NaN value (a function that
    returned None) is left out of its function's statistics and of the sum; a row where every function returned None
    is NaN (unscorable).
    """
    values = rewards_per_func  # "sum_then_normalize"; the config checks the name (`multi_objective_aggregation`)
    if aggregation == "normalize_then_sum":
        grouped = rewards_per_func.view(-1, group_size, rewards_per_func.shape[1])
        mean = torch.nanmean(grouped, dim=1, keepdim=True)
        std = nanstd(grouped, dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(mean)
        values = ((grouped - mean) / (std + 1e-4)).view(-1, rewards_per_func.shape[1])
    outcome = (values * weights.to(values).unsqueeze(0)).nansum(dim=1)
    outcome[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan
    return outcome
