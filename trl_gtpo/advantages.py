"""Turn-level advantages (GTPO.md parts 1-2) as plain tensor functions: no trainer, no model.

Shapes: B trajectories, T completion tokens, K turns (the widest trajectory of the batch; shorter ones are padded
with NaN, which every function here treats as "no such turn").
"""

import torch
from trl.trainer.utils import nanstd


def turn_index(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Number each token by its turn: a turn is a maximal run of model tokens (mask == 1).

    Returns `(index, num_turns)`: `index` (B, T) holds the turn of each model token and -1 for tool-output and
    padding tokens; `num_turns` (B,) counts the turns of each trajectory.
    """
    mask = mask.bool()
    starts = mask.clone()
    starts[:, 1:] &= ~mask[:, :-1]
    # A float cumsum is several times faster than an integer one on CPU, and exact for these small counts.
    index = torch.cumsum(starts.float(), dim=1).mul_(mask).sub_(1).long()
    return index, starts.sum(dim=1)


def turn_rewards(
    num_turns: torch.Tensor,
    outcome: torch.Tensor,
    width: int,
    format_rewards: torch.Tensor | None = None,
    shaping: torch.Tensor | None = None,
) -> torch.Tensor:
    """r_ij = r_fmt_ij + [j == K_i] (r_out_i + r_shape_i), NaN past the last turn.

    A trajectory with an unscorable outcome (NaN) gets NaN on every turn, so it is left out of the statistics and
    its advantage becomes 0, as in GRPO. `format_rewards` (B, >= width) may be wider or narrower than `width`.
    """
    batch = num_turns.shape[0]
    turns = torch.arange(width, device=num_turns.device).expand(batch, width)
    rewards = torch.zeros(batch, width, dtype=torch.float32, device=num_turns.device)
    if format_rewards is not None:
        k = min(width, format_rewards.shape[1])
        rewards[:, :k] = format_rewards[:, :k].to(rewards)
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
    """A_ij = (R_ij - mean(S)) / (std(S) + 1e-4), NaN where R_ij is NaN.

    `returns` holds the whole generation batch (every process), groups of `group_size` consecutive trajectories.
    `scope` picks S for the mean ("group": the turns of the trajectory's group; "batch": every turn). `scale` follows
    TRL's `scale_rewards`: "group" divides by the std of the same set as the mean, "batch" by the std of the whole
    batch, "none" not at all. With one turn per trajectory this is exactly GRPO's advantage.
    """
    n, width = returns.shape
    if scope == "group":
        if n % group_size:
            raise ValueError(f"{n} trajectories cannot be split into groups of {group_size}.")
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


def token_advantages(advantages: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Broadcast (B, K) turn advantages to (B, T) tokens: every token of turn j gets A_ij, other tokens 0."""
    # Column 0 of the padded table is "no turn": tool tokens and padding (index -1) read a 0 from it.
    table = torch.nan_to_num(advantages, nan=0.0)
    table = torch.cat([torch.zeros_like(table[:, :1]), table], dim=1)
    return torch.gather(table, 1, index + 1)
