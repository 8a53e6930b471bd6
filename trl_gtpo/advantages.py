"""Turn-level advantages of GTPO (arXiv 2511.14846, sections 3.1-3.2) as plain tensor functions: no trainer, no model.

Shapes: N trajectories (the whole generation batch, every process; groups of `group_size` consecutive rows), T
completion tokens, K turns (the widest trajectory of the batch; shorter ones are padded with NaN, which every function
here treats as "no such turn").

One step reads top-down: [`turn_rewards`] (r_ij) -> [`discounted_returns`] (R_ij) -> an estimator (A_ij) ->
[`token_advantages`] (every token of turn j gets A_ij). [`turn_advantages`] runs the first three over one explicit
[`TurnBatch`]; the trainer only gathers the batch, calls it, slices its rows and broadcasts them.

The estimators (`GTPOConfig.turn_advantage_estimator`) differ in the baseline subtracted from R_ij and the scale it is
divided by:

- "aligned" (the default): each reward is compared with the group's mean reward at the same place (the outcome at
  the trajectory's end, a turn term at its turn index), so advantages come from reward differences only: a group
  that earns the same gets 0 whatever its turn counts, and a turn reward or penalty moves its own turn even when
  the group's totals tie. See [`aligned_advantages`].
- "pooled" (the paper's formula as we read it): baseline and std over every turn return of the group. Kept with
  its exact numbers; it gives a solved group unit-sized advantages from the discount alone.
"""

from dataclasses import dataclass

import torch


def nanstd(values: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    """Unbiased std over the non-NaN values (NaN with fewer than two): GRPO's statistics leave unscorable rows out."""
    count = (~torch.isnan(values)).sum(dim=dim, keepdim=keepdim)
    squares = (values - torch.nanmean(values, dim=dim, keepdim=True)) ** 2
    return (torch.nanmean(squares, dim=dim, keepdim=keepdim) * (count / (count - 1))).sqrt()


ESTIMATORS = ("aligned", "pooled")
# Estimators of earlier releases, refused with the reason (they turned the discount into large advantages in tied
# groups and dropped turn signal when totals tied).
REMOVED_ESTIMATORS = ("trajectory", "leave_one_out")
REMOVED_ESTIMATOR_REASON = (
    "it was removed: in groups whose totals nearly tie it divided the discount gap by a std of reward differences "
    "(advantages of +3 to +19 from a -0.1 penalty or a +0.01 turn reward), and it dropped turn rewards when totals "
    "tied. Use 'aligned' (the default), or 'pooled' for the paper's formula."
)
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


class SettingError(ValueError):
    """A setting of the advantage step with a value it does not take. `name` is the setting's, so that a config can
    say it with its own field's name (`message("GTPOConfig.turn_advantage_estimator")`)."""

    def __init__(self, name: str, value, fix: str):
        self.name, self.value, self.fix = name, value, fix
        super().__init__(self.message(f"AdvantageSettings.{name}"))

    def message(self, label: str) -> str:
        return f"{label}={self.value!r} is not allowed: {self.fix}."


def check_choice(name: str, value, allowed: tuple[str, ...]) -> None:
    """The one check of the step's string settings: `value` is one of `allowed` (removed estimators with why)."""
    if name == "estimator" and value in REMOVED_ESTIMATORS:
        raise SettingError(name, value, REMOVED_ESTIMATOR_REASON.rstrip("."))
    if value not in allowed:
        raise SettingError(name, value, f"use one of {', '.join(allowed)}")


@dataclass(frozen=True)
class AdvantageSettings:
    """The knobs of the step, checked here once for every caller (`GTPOConfig`, `AsyncGTPOConfig`, direct use):
    `gamma` in [0, 1], `estimator` (one of ESTIMATORS), `scope` (SCOPES, "pooled" only) and `scale` (TRL's
    `scale_rewards`: SCALES). The functions below take them as checked and only dispatch on them."""

    gamma: float = 0.9
    estimator: str = "aligned"
    scope: str = "group"
    scale: str = "group"

    def __post_init__(self):
        if not 0.0 <= self.gamma <= 1.0:
            raise SettingError("gamma", self.gamma, "use a number in [0, 1], e.g. 0.9")
        for name, allowed in (("estimator", ESTIMATORS), ("scope", SCOPES), ("scale", SCALES)):
            check_choice(name, getattr(self, name), allowed)


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
        final = batch.outcome.to(rewards) + (batch.shaping.to(rewards) if batch.shaping is not None else 0.0)
        terms = turn_term_table(batch.num_turns, width, batch.turn_terms)
        advantages = aligned_advantages(final, terms, batch.num_turns, settings.gamma, batch.group_size, settings.scale)
    return TurnAdvantages(rewards, returns, advantages)


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


def turn_term_table(num_turns: torch.Tensor, width: int, turn_terms: torch.Tensor | None = None) -> torch.Tensor:
    """(N, width) t_ij: the turn terms of the real turns, 0 past a trajectory's last turn (and everywhere when None)."""
    table = torch.zeros(num_turns.shape[0], width, dtype=torch.float32, device=num_turns.device)
    if turn_terms is not None:
        k = min(width, turn_terms.shape[1])
        table[:, :k] = torch.nan_to_num(turn_terms[:, :k].to(table), nan=0.0)
    turns = torch.arange(width, device=num_turns.device).expand_as(table)
    return torch.where(turns < num_turns.unsqueeze(1), table, torch.zeros_like(table))


def discounted_returns(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """R_ij = sum_{m >= j} gamma^(m - j) r_im over the real turns; NaN padding stays NaN."""
    returns = torch.full_like(rewards, torch.nan)
    running = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    for j in reversed(range(rewards.shape[1])):
        reward = rewards[:, j]
        running = torch.where(torch.isnan(reward), torch.zeros_like(running), reward + gamma * running)
        returns[:, j] = torch.where(torch.isnan(reward), reward, running)
    return returns


def normalize_returns(
    returns: torch.Tensor, group_size: int, scope: str = "group", scale: str = "group"
) -> torch.Tensor:
    """The "pooled" estimator: A_ij = (R_ij - mean(S)) / (std(S) + 1e-4), NaN where R_ij is NaN.

    `scope` picks S for the mean ("group": every turn return of the trajectory's group; "batch": every turn of the
    batch). `scale` follows TRL's `scale_rewards`: "group" divides by the std of the same set as the mean, "batch" by
    the std of the whole batch, "none" not at all. With one turn per trajectory this is exactly GRPO's advantage.

    Known bias (measured in docs/ADVANTAGES.md): S holds each trajectory's own turns, as many as it took, so the
    baseline depends on the trajectory's own length; and in a group where every trajectory succeeds the discount alone
    makes the returns differ, which the std division blows up to unit size. A group of one trajectory gets 0, as in
    GRPO.
    """
    n, width = returns.shape
    if n % group_size:
        raise ValueError(f"{n} trajectories cannot be split into groups of {group_size}.")
    if group_size == 1:
        return torch.where(torch.isnan(returns), returns, torch.zeros_like(returns))
    if scope == "batch":
        mean = torch.nanmean(returns)
        std = nanstd(returns) if scale == "group" else None
    else:  # "group"
        grouped = returns.reshape(n // group_size, group_size * width)
        mean = torch.nanmean(grouped, dim=1, keepdim=True)
        std = nanstd(grouped, dim=1, keepdim=True) if scale == "group" else None
        mean = mean.repeat_interleave(group_size, dim=0)
        std = std.repeat_interleave(group_size, dim=0) if std is not None else None
    if scale == "batch":
        std = nanstd(returns)
    advantages = returns - mean
    if std is not None:
        advantages = advantages / (std + 1e-4)
    return advantages


def aligned_advantages(
    final: torch.Tensor,
    terms: torch.Tensor,
    num_turns: torch.Tensor,
    gamma: float,
    group_size: int,
    scale: str = "group",
) -> torch.Tensor:
    """The "aligned" estimator (the default): each reward is compared with the group's mean reward at the same place.

        A_ij = [gamma^(K_i - j) (F_i - mean F) + sum_{m >= j} gamma^(m - j) (t_im - mean_m t)] / (sigma + 1e-4)
        sigma = std(F) + sum_m std_m(t)

    F_i (`final`, (N,)) is the trajectory-level reward (outcome + shaping), which the paper's return R_ij carries
    from the last turn with weight gamma^(K_i - j); t_im (`terms`, (N, W)) are the turn terms (format penalties, the
    user's turn rewards), 0 past a trajectory's last turn (a finished trajectory earns nothing more). mean F is over
    the group, mean_m t over the group's trajectories at turn m (those that ended before m count as 0), and std /
    std_m are their unbiased standard deviations: over the group (`scale="group"`), over the whole batch
    (`"batch"`, TRL's `scale_rewards="batch"`), or no division (`"none"`). NaN marks an unscorable or turnless
    trajectory (left out of every statistic; its advantage is NaN, i.e. 0 in the loss) and turns past K_i.

    Why the numerator: it is R_ij minus the return that turn j of trajectory i would have earned had every reward
    been the group's mean at the same place, so it is a sum of reward differences and nothing else: a group whose
    trajectories earn the same outcome and no turn terms gets exactly 0 whatever their turn counts (GRPO's 0 on a
    solved group; the paper's pooled formula and a baseline of first-turn returns both turned the discount gap
    (1 - gamma) F into unit-sized or larger advantages there), and a turn term moves the turns at and before it
    even when the group's totals tie.

    Why the scale (bounded, P7): sigma is the largest std the total reward can have given its places' stds
    (std(x + y) <= std(x) + std(y)), reached when the places move together, as an agent's per-call rewards and its
    outcome usually do; then sigma is GRPO's std of the totals. Every advantage is a discounted convex combination
    of the places' own z-scores, A_ij = sum_p c_ijp (s_p / sigma) z_ip with 0 <= c_ijp <= 1 and sum_p s_p = sigma,
    so |A_ij| <= max_p |z_ip|, GRPO's largest advantage on a single place's rewards: at most (G - 1) / sqrt(G) at
    group scale (GRPO's own bound), and GRPO's batch-scaled bound at batch scale, whatever the number of turns. The
    root of the sum of the places' variances, used before, equals the total's std only for independent places and
    let a trajectory with n correlated turn rewards reach about sqrt(n) times GRPO's bound. The price: when places
    vary independently, sigma exceeds the total's std (by up to sqrt(number of varying places)), so advantages are
    smaller than GRPO's, never larger. Rescaling every reward by c > 0 rescales numerator and sigma alike (P5); a
    place that does not vary in its group adds nothing. With one turn per trajectory and no turn terms it is exactly
    GRPO's advantage in every scale mode (P4).

    What it is unbiased for: at gamma = 1 the baseline of a turn is the group's mean reward-to-go, which does not
    depend on the trajectory's own actions except through its 1/G share of the mean (GRPO's own shrinkage), so the
    update estimates the gradient of the expected total reward E[F + sum_j t_j], as GRPO on the summed rewards
    does, with each turn weighted by the rewards at and after it only (past turn terms add no noise). With
    gamma < 1 each reward counts gamma^(distance) on the turns before it (credit placed nearer the reward) and the
    outcome part is measured against the group mean, so the discount never prefers a turn count by itself. At
    gamma = 1 two turns whose futures earn equal totals get equal credit, wherever the turn reward sat.
    """
    n, width = terms.shape
    if n % group_size:
        raise ValueError(f"{n} trajectories cannot be split into groups of {group_size}.")
    scored = ~torch.isnan(final) & (num_turns > 0)
    left_out = torch.full_like(terms, torch.nan)
    places = torch.cat([final.unsqueeze(1), torch.nan_to_num(terms, nan=0.0)], dim=1)  # (N, 1 + W): F, t_1..t_W
    places = torch.where(scored.unsqueeze(1), places, torch.cat([left_out[:, :1], left_out], dim=1))
    deviations, sigma = _place_deviations(places, group_size, scale)
    turns = torch.arange(width, device=terms.device).expand(n, width)
    to_end = (num_turns.unsqueeze(1) - 1 - turns).clamp(min=0).to(terms.dtype)
    numerator = gamma**to_end * deviations[:, :1] + discounted_returns(torch.nan_to_num(deviations[:, 1:]), gamma)
    advantages = numerator if sigma is None else numerator / (sigma + 1e-4)
    real = scored.unsqueeze(1) & (turns < num_turns.unsqueeze(1))
    return torch.where(real, advantages, left_out)


def _place_deviations(places: torch.Tensor, group_size: int, scale: str):
    """(N, P) deviations of each place's value from its group mean (exactly 0 where the group's values are equal,
    so float rounding of a mean is never read as a reward difference), and the (N, 1) sum of the places' unbiased
    stds (over the group, or the batch for `scale="batch"`; None for `"none"`). NaN rows are left out."""
    n, width = places.shape
    grouped = places.view(n // group_size, group_size, width)
    mean = torch.nanmean(grouped, dim=1, keepdim=True)
    high = torch.where(torch.isnan(grouped), -torch.inf, grouped).amax(dim=1, keepdim=True)
    low = torch.where(torch.isnan(grouped), torch.inf, grouped).amin(dim=1, keepdim=True)
    deviations = torch.where(high == low, torch.zeros_like(grouped), grouped - mean)
    deviations = torch.where(torch.isnan(grouped), grouped, deviations).view(n, width)
    if scale == "group":
        spread = torch.nan_to_num(nanstd(grouped, dim=1), nan=0.0)  # (groups, P); a lone value: no spread
        spread = torch.where(high.squeeze(1) == low.squeeze(1), torch.zeros_like(spread), spread)
        sigma = spread.sum(dim=1).repeat_interleave(group_size).unsqueeze(1)
    elif scale == "batch":
        sigma = torch.nan_to_num(nanstd(places, dim=0), nan=0.0).sum().expand(n, 1)
    else:  # "none"
        sigma = None
    return deviations, sigma


def token_advantages(advantages: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Broadcast (B, K) turn advantages to (B, T) tokens: every token of turn j gets A_ij, other tokens 0."""
    # Column 0 of the padded table is "no turn": tool tokens and padding (index -1) read a 0 from it.
    table = torch.nan_to_num(advantages, nan=0.0)
    table = torch.cat([torch.zeros_like(table[:, :1]), table], dim=1)
    return torch.gather(table, 1, index + 1)
