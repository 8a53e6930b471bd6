"""Turn-level advantages of GTPO (arXiv 2511.14846, sections 3.1-3.2) as plain tensor functions: no trainer, no model.

Shapes: N trajectories (the whole generation batch, every process; groups of `group_size` consecutive rows), T
completion tokens, K turns (the widest trajectory of the batch; shorter ones are padded with NaN, which every function
here treats as "no such turn").

One step reads top-down: [`turn_rewards`] (r_ij) -> [`discounted_returns`] (R_ij) -> an estimator (A_ij) ->
[`token_advantages`] (every token of turn j gets A_ij). [`turn_advantages`] runs the first three over one explicit
[`TurnBatch`]; the trainer only gathers the batch, calls it, slices its rows and broadcasts them.

The estimators (`GTPOConfig.turn_advantage_estimator`) differ in the baseline subtracted from R_ij and the scale it is
divided by:

- "pooled" (the paper's formula as we read it): baseline and std over every turn return of the group.
- "trajectory": GRPO's group statistics of whole trajectories: baseline = mean of the group's first-turn returns
  R_i1, scale = std of the group's total rewards sum_j r_ij; a group whose totals are all equal gets 0.
- "leave_one_out": as "trajectory", with the baseline of trajectory i the mean over the *other* trajectories of its
  group (RLOO).
"""

from dataclasses import dataclass

import torch

from ._trl_compat import nanstd

ESTIMATORS = ("pooled", "trajectory", "leave_one_out")
AGGREGATIONS = ("sum_then_normalize", "normalize_then_sum")
SCOPES = ("group", "batch")
SCALES = ("group", "batch", "none")


@dataclass(frozen=True)
class TurnBatch:
    """What the advantage step reads, for the whole generation batch.

    Attributes:
        outcome: (N,) r_out_i, the weighted sum of the reward functions; NaN for an unscorable trajectory.
        num_turns: (N,) model turns of each trajectory (0: no model token left, e.g. a masked truncated completion).
        turn_terms: (N, >= K) or None: the per-turn rewards besides outcome and shaping (format penalties, the user's
            turn rewards), already weighted and summed; columns past a trajectory's last turn are ignored.
        shaping: (N,) or None: r_shape_i, added to the final turn.
        group_size: trajectories per prompt (num_generations).
    """

    outcome: torch.Tensor
    num_turns: torch.Tensor
    group_size: int
    turn_terms: torch.Tensor | None = None
    shaping: torch.Tensor | None = None


@dataclass(frozen=True)
class AdvantageSettings:
    """The knobs of the step: `gamma`, `estimator` (one of ESTIMATORS), `scope` (SCOPES, "pooled" only) and `scale`
    (TRL's `scale_rewards`: SCALES)."""

    gamma: float = 0.9
    estimator: str = "pooled"
    scope: str = "group"
    scale: str = "group"

    def __post_init__(self):
        for name, allowed in (("estimator", ESTIMATORS), ("scope", SCOPES), ("scale", SCALES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"Unknown {name} {getattr(self, name)!r}: use one of {', '.join(allowed)}.")


@dataclass(frozen=True)
class TurnAdvantages:
    """The (N, K) tables of one step: turn rewards r_ij, returns R_ij and advantages A_ij (NaN: no such turn)."""

    rewards: torch.Tensor
    returns: torch.Tensor
    advantages: torch.Tensor


def turn_advantages(batch: TurnBatch, settings: AdvantageSettings) -> TurnAdvantages:
    """The turn-advantage table of one generation batch, with the rewards and returns it came from."""
    width = max(1, int(batch.num_turns.max().item())) if batch.num_turns.numel() else 1
    rewards = turn_rewards(batch.num_turns, batch.outcome, width, batch.turn_terms, batch.shaping)
    returns = discounted_returns(rewards, settings.gamma)
    if settings.estimator == "pooled":
        advantages = normalize_returns(returns, batch.group_size, settings.scope, settings.scale)
    else:
        leave_one_out = settings.estimator == "leave_one_out"
        advantages = trajectory_baseline_advantages(returns, rewards, batch.group_size, settings.scale, leave_one_out)
    return TurnAdvantages(rewards, returns, advantages)


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
    if aggregation == "sum_then_normalize":
        values = rewards_per_func
    elif aggregation == "normalize_then_sum":
        grouped = rewards_per_func.view(-1, group_size, rewards_per_func.shape[1])
        mean = torch.nanmean(grouped, dim=1, keepdim=True)
        std = nanstd(grouped, dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(mean)
        values = ((grouped - mean) / (std + 1e-4)).view(-1, rewards_per_func.shape[1])
    else:
        raise ValueError(f"Unknown multi_objective_aggregation {aggregation!r}: use one of {', '.join(AGGREGATIONS)}.")
    outcome = (values * weights.to(values).unsqueeze(0)).nansum(dim=1)
    outcome[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan
    return outcome


def zero_std_groups(returns: torch.Tensor, group_size: int) -> torch.Tensor:
    """(N / group_size,) True for a group whose turn returns are all equal (what the "pooled" estimator gives 0)."""
    grouped = returns.reshape(-1, group_size * returns.shape[1])
    std = nanstd(grouped, dim=1)
    return torch.isclose(std, torch.zeros_like(std)) | torch.isnan(std)


def turn_rewards(
    num_turns: torch.Tensor,
    outcome: torch.Tensor,
    width: int,
    turn_terms: torch.Tensor | None = None,
    shaping: torch.Tensor | None = None,
) -> torch.Tensor:
    """r_ij = t_ij + [j == K_i] (r_out_i + r_shape_i), NaN past the last turn (t_ij: `turn_terms`).

    A trajectory with an unscorable outcome (NaN) gets NaN on every turn, so it is left out of the statistics and
    its advantage becomes 0, as in GRPO. `turn_terms` (N, >= width) may be wider or narrower than `width`.
    """
    batch = num_turns.shape[0]
    turns = torch.arange(width, device=num_turns.device).expand(batch, width)
    rewards = torch.zeros(batch, width, dtype=torch.float32, device=num_turns.device)
    if turn_terms is not None:
        k = min(width, turn_terms.shape[1])
        rewards[:, :k] = turn_terms[:, :k].to(rewards)
    final = outcome.to(rewards) + (shaping.to(rewards) if shaping is not None else 0.0)
    is_final = turns == (num_turns.unsqueeze(1) - 1)
    rewards = rewards + torch.where(is_final, final.unsqueeze(1), torch.zeros_like(rewards))
    rewards[turns >= num_turns.unsqueeze(1)] = torch.nan
    rewards[torch.isnan(outcome)] = torch.nan
    return rewards


def discounted_returns(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """R_ij = sum_{m >= j} gamma^(m - j) r_im over the real turns; NaN padding stays NaN."""
    returns = torch.full_like(rewards, torch.nan)
    running = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    for j in reversed(range(rewards.shape[1])):
        reward = rewards[:, j]
        running = torch.where(torch.isnan(reward), torch.zeros_like(running), reward + gamma * running)
        returns[:, j] = torch.where(torch.isnan(reward), reward, running)
    return returns


def normalize_returns(returns: torch.Tensor, group_size: int, scope: str = "group", scale: str = "group") -> torch.Tensor:
    """The "pooled" estimator: A_ij = (R_ij - mean(S)) / (std(S) + 1e-4), NaN where R_ij is NaN.

    `scope` picks S for the mean ("group": every turn return of the trajectory's group; "batch": every turn of the
    batch). `scale` follows TRL's `scale_rewards`: "group" divides by the std of the same set as the mean, "batch" by
    the std of the whole batch, "none" not at all. With one turn per trajectory this is exactly GRPO's advantage.

    Known bias (measured, see the README): S holds each trajectory's own turns, as many as it took, so the baseline
    depends on the trajectory's own length; and in a group where every trajectory succeeds the discount alone makes
    the returns differ, which the std division blows up to unit size. A group of one trajectory gets 0, as in GRPO.
    """
    n, width = returns.shape
    if n % group_size:
        raise ValueError(f"{n} trajectories cannot be split into groups of {group_size}.")
    if group_size == 1:
        return torch.where(torch.isnan(returns), returns, torch.zeros_like(returns))
    if scope == "group":
        grouped = returns.reshape(n // group_size, group_size * width)
        mean = torch.nanmean(grouped, dim=1, keepdim=True)
        std = nanstd(grouped, dim=1, keepdim=True) if scale == "group" else None
        mean = mean.repeat_interleave(group_size, dim=0)
        std = std.repeat_interleave(group_size, dim=0) if std is not None else None
    elif scope == "batch":
        mean = torch.nanmean(returns)
        std = nanstd(returns) if scale == "group" else None
    else:
        raise ValueError(f"Unknown turn_advantage_scope {scope!r}: use 'group' or 'batch'.")
    if scale == "batch":
        std = nanstd(returns)
    elif scale not in ("group", "none"):
        raise ValueError(f"Unknown scale_rewards {scale!r}: use 'group', 'batch' or 'none'.")
    advantages = returns - mean
    if std is not None:
        advantages = advantages / (std + 1e-4)
    return advantages


def trajectory_baseline_advantages(
    returns: torch.Tensor, rewards: torch.Tensor, group_size: int, scale: str = "group", leave_one_out: bool = False
) -> torch.Tensor:
    """The "trajectory" and "leave_one_out" estimators: A_ij = (R_ij - b_i) / (sigma_g + 1e-4).

    b_i is the mean of the first-turn returns R_i'1 (each trajectory's discounted total) of i's group: over the whole
    group ("trajectory", GRPO's baseline) or over the other trajectories only ("leave_one_out", RLOO's). sigma_g is
    the std of the group's total rewards T_i = sum_j r_ij (`scale="group"`), of the whole batch's (`"batch"`), or no
    division (`"none"`). A group whose totals T_i are all equal carries no outcome signal and gets 0 on every turn,
    as GRPO gives 0 to such a group: discount differences between equally rewarded trajectories are never amplified.

    What each is unbiased for: b_i does not depend on trajectory i's actions under "leave_one_out", so with
    `scale="none"` the update is an unbiased estimate of g_R = E[sum_j R_ij grad log pi(a_ij | s_ij)] up to the
    zero-signal rule above, which drops turn-level differences inside equal-total groups (measured in
    benchmarks/estimator_bias.py: 1e-4 of the norm at gamma=1). g_R is the gradient of the discounted return from the
    first turn only at gamma=1; for gamma < 1 it lacks the gamma^(j-1) weight of turn j (Thomas, 2014), as every
    estimator built on R_ij does. "trajectory" shrinks the own-term by (1 - 1/G) and the std division rescales each
    prompt, exactly as GRPO does. With one turn per trajectory "trajectory" is exactly GRPO's advantage in every scale
    mode.
    """
    n, width = returns.shape
    if n % group_size:
        raise ValueError(f"{n} trajectories cannot be split into groups of {group_size}.")
    if group_size == 1:
        return torch.where(torch.isnan(returns), returns, torch.zeros_like(returns))
    first = returns[:, 0].reshape(-1, group_size)  # (groups, G) R_i1; NaN for unscorable trajectories
    totals = torch.where(torch.isnan(rewards), torch.zeros_like(rewards), rewards).sum(dim=1)
    totals[torch.isnan(rewards[:, 0])] = torch.nan  # unscorable (or turnless) trajectories: left out
    totals = totals.reshape(-1, group_size)
    if leave_one_out:
        scored = (~torch.isnan(first)).sum(dim=1, keepdim=True)
        others = torch.nansum(first, dim=1, keepdim=True) - torch.nan_to_num(first, nan=0.0)
        count = scored - (~torch.isnan(first)).long()
        baseline = torch.where(count > 0, others / count.clamp(min=1), torch.full_like(first, torch.nan))
    else:
        baseline = torch.nanmean(first, dim=1, keepdim=True).expand_as(first)
    group_std = nanstd(totals, dim=1, keepdim=True).expand_as(totals)
    # A group with a signal: totals that differ by more than float32 rounding of their sums (a NaN std, from fewer
    # than two scored trajectories, has none). Equal totals summed in a different order, e.g. -0.1 + 1 and
    # 0 + -0.1 + 1, differ by an ulp; an absolute tolerance of 1e-8 read that as a signal and divided the discount
    # differences by ~1e-4, giving advantages of ~1e3 (found by benchmarks/estimator_bias.py).
    magnitude = torch.nan_to_num(rewards, nan=0.0).abs().sum(dim=1).reshape(-1, group_size)
    tolerance = 1e-5 * (1.0 + magnitude.amax(dim=1, keepdim=True))
    has_signal = (group_std > tolerance).expand_as(totals)  # NaN > x is False
    if scale == "group":
        std = group_std
    elif scale == "batch":
        std = nanstd(totals.flatten()).expand_as(totals)
    elif scale == "none":
        std = None
    else:
        raise ValueError(f"Unknown scale_rewards {scale!r}: use 'group', 'batch' or 'none'.")
    advantages = returns - baseline.reshape(n, 1)
    if std is not None:
        advantages = advantages / (std.reshape(n, 1) + 1e-4)
    return torch.where(has_signal.reshape(n, 1) | torch.isnan(returns), advantages, torch.zeros_like(advantages))


def token_advantages(advantages: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Broadcast (B, K) turn advantages to (B, T) tokens: every token of turn j gets A_ij, other tokens 0."""
    # Column 0 of the padded table is "no turn": tool tokens and padding (index -1) read a 0 from it.
    table = torch.nan_to_num(advantages, nan=0.0)
    table = torch.cat([torch.zeros_like(table[:, :1]), table], dim=1)
    return torch.gather(table, 1, index + 1)
