"""The turn-level pieces of the loss, as plain tensor functions: no trainer, no model.

A turn is a maximal run of model tokens of the loss mask (`completion_mask * tool_mask`, what TRL's `_compute_loss`
calls `mask`): tool output and padding separate turns and belong to none. Shapes: B sequences, T completion tokens.

- [`turn_means`]: every token of a turn gets the mean of a per-token value over that turn.
- [`turn_level_old_logps`]: the old log-probs that make TRL's token-level ratio the turn's GSPO ratio
  (`importance_sampling_level="turn"`).
- [`turn_off_policy_mask`]: the off-policy mask of DeepSeek-V3.2 (TRL's `off_policy_mask_threshold`), per turn.
"""

import torch

from .turn_records import turn_index


def turn_means(values: torch.Tensor, mask: torch.Tensor, kept: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T): each token of a turn of `mask` gets the mean of `values` over the turn's tokens; other tokens 0.

    Differentiable in `values` (a scatter-add and a gather), so the mean carries the gradient of every token it
    averages. Values outside the mask (NaN included) never enter a mean. With `kept` (B, T), the mean runs over the
    turn's kept tokens only (the turns are still those of `mask`), so the others give it no value and no gradient;
    a turn with no kept token gets 0.
    """
    index, num_turns = turn_index(mask)
    width = int(num_turns.max().item()) + 1 if num_turns.numel() else 1
    inside = index >= 0
    counted = inside if kept is None else inside & kept.bool()
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    summed = torch.where(counted, values, zero)
    slots = index + 1  # slot 0 collects everything outside the turns, and is dropped
    sums = torch.zeros(values.shape[0], width, dtype=values.dtype, device=values.device).scatter_add(1, slots, summed)
    counts = torch.zeros_like(sums).scatter_add(1, slots, counted.to(values.dtype))
    means = sums / counts.clamp(min=1.0)
    return torch.where(inside, torch.gather(means, 1, slots), zero)


def turn_level_old_logps(
    per_token_logps: torch.Tensor,
    old_per_token_logps: torch.Tensor,
    mask: torch.Tensor,
    kept: torch.Tensor | None = None,
) -> torch.Tensor:
    """Old log-probs under which a token-level ratio is the turn-level (GSPO) one: `log pi - old~ = m_ij`.

    m_ij = (1/|turn j|) sum_{t in turn j} (log pi_theta(y_t) - log pi_old(y_t)) is the log of the geometric-mean
    ratio of the turn, GSPO's sequence ratio taken over one turn. With `old~ = log pi - m`, TRL's token-level
    `log_ratio = per_token_logps - old_per_token_logps` is m_ij on every token of turn j, in value *and* gradient
    (log pi cancels; `old~` carries the gradient of `log pi - m`, on purpose). The current log-probs are left as
    they are, so everything else TRL computes from them (the KL term, CISPO's and VESPO's `log pi` factor) is
    exact. Outside the turns `old~ = log pi`: a ratio of 1 where the loss is masked anyway.

    `kept` (B, T) is the set of tokens the loss trains (TRL's entropy mask, `top_entropy_quantile < 1`): the turn's
    ratio is then the geometric mean over its kept tokens, so a token the mask drops gets no gradient through its
    turn's ratio either, as it gets none at token level.
    """
    return per_token_logps - turn_means(per_token_logps - old_per_token_logps, mask, kept)


def turn_off_policy_mask(
    advantages: torch.Tensor,
    per_token_logps: torch.Tensor,
    sampling_per_token_logps: torch.Tensor,
    mask: torch.Tensor,
    off_policy_threshold: float,
) -> torch.Tensor:
    """(B, T) keep (1) / drop (0): TRL's off-policy sequence mask (`GRPOTrainer.get_off_policy_mask`), per turn.

    TRL drops a sequence whose advantage is negative and whose mean drift `mean_t (log pi_sampling - log pi_theta)`
    over its tokens exceeds the threshold. GTPO gives each turn its own advantage, so a turn is dropped when *its*
    advantage is negative and the drift over *its own* tokens exceeds the threshold; a turn that was sampled close
    to the current policy is kept even when another turn of the trajectory drifted. With one turn per sequence this
    is TRL's mask. Tokens vLLM could not score (NaN) give no evidence of drift (0), as in TRL.
    """
    drift = torch.nan_to_num(sampling_per_token_logps - per_token_logps.detach(), nan=0.0)
    turn_drift = turn_means(drift, mask)
    keep = (advantages >= 0) | (turn_drift <= off_policy_threshold)
    return keep.to(dtype=mask.dtype)
