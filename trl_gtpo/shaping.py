"""Self-supervised reward shaping of GTPO (arXiv 2511.14846, section 3.3).

A failed trajectory i of a group whose set P of successful trajectories is not empty gets

    r_shape_i = alpha * mean_{p in P} sim(c_i, c_p)

where c_i is all the code trajectory i wrote and sim is a code similarity in [0, 1] (`trl_gtpo.similarity`). This
module is pure: it takes lists of rewards and code strings and returns lists of floats; it knows nothing of the
trainer. [`group_shaping_rewards`] / [`batch_shaping_rewards`] compute the shaping rewards of one group / of a whole
generation batch made of consecutive groups.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .similarity import Similarity, _as_text, make_similarity

__all__ = ["batch_shaping_rewards", "group_shaping_rewards"]

# --------------------------------------------------------------------------------------------------------------------
# Shaping rewards
# --------------------------------------------------------------------------------------------------------------------

# An outcome counts as a success when it is >= threshold - _SUCCESS_TOLERANCE: weighted sums of rewards in float32
# (e.g. 0.7 * 1 + 0.3 * 1) can land a hair below 1.0.
_SUCCESS_TOLERANCE = 1e-6


def _outcome(value) -> float:
    """A reward as a float; None (TRL's "not applicable") and anything not convertible -> NaN."""
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _has_code(code) -> bool:
    return bool(_as_text(code).strip())


def group_shaping_rewards(
    outcome_rewards: Sequence[float],
    codes: Sequence[str | None],
    *,
    alpha: float = 0.5,
    success_threshold: float | None = None,
    similarity: str | Similarity = "lexical",
    embedding_model: str | None = None,
) -> list[float]:
    """Shaping rewards of ONE group of trajectories (the G completions of one prompt).

    Trajectory i succeeded when its outcome reward is >= `success_threshold` (None means 1.0, the maximum outcome
    reward; a tolerance of 1e-6 absorbs float32 rounding). P is the set of successful trajectories. A failed
    trajectory i gets `alpha * mean_{p in P} sim(codes[i], codes[p])`; every other trajectory gets 0.0:

    - P empty (no success in the group), or i succeeded, or `alpha == 0`: 0.0;
    - i wrote no code (`codes[i]` None, empty or whitespace only): 0.0;
    - i's outcome is NaN or None (unscorable): 0.0, and i does not count as a success either.

    Choice: a successful trajectory that wrote no code still belongs to P; its similarity to any code is 0, so it
    lowers the mean (a group that also solved the prompt without code gives less credit to code-based attempts).

    Args:
        outcome_rewards: outcome reward r_out of each trajectory of the group.
        codes: all code each trajectory wrote (its code blocks concatenated), or None.
        alpha: weight of the shaping reward (>= 0).
        success_threshold: outcome at or above which a trajectory is a success; None means 1.0.
        similarity: "lexical", "embedding" or a callable `sim(codes_a, codes_b) -> array (len(a), len(b))` with
            values in [0, 1] (values outside are clipped, NaN counts as 0).
        embedding_model: local model path of "embedding" (None: the packaged one; loaded once per process).

    Returns:
        One float per trajectory.
    """
    n = len(outcome_rewards)
    if len(codes) != n:
        raise ValueError(f"group_shaping_rewards got {n} outcome rewards but {len(codes)} codes.")
    if alpha < 0 or math.isnan(alpha):
        raise ValueError(f"alpha must be >= 0, got {alpha}.")
    rewards = [0.0] * n
    if n == 0 or alpha == 0:
        return rewards
    threshold = 1.0 if success_threshold is None else float(success_threshold)
    outcomes = [_outcome(r) for r in outcome_rewards]
    success = [not math.isnan(r) and r >= threshold - _SUCCESS_TOLERANCE for r in outcomes]
    successes = [i for i in range(n) if success[i]]
    if not successes:
        return rewards
    failed = [i for i in range(n) if not success[i] and not math.isnan(outcomes[i]) and _has_code(codes[i])]
    if not failed:
        return rewards
    # Successful trajectories without code are in P with similarity 0: they add to the count, not to the sum.
    references = [p for p in successes if _has_code(codes[p])]
    if references:
        sim = make_similarity(similarity, embedding_model)
        matrix = np.asarray(sim([_as_text(codes[i]) for i in failed], [_as_text(codes[p]) for p in references]))
        matrix = matrix.astype(np.float64, copy=False)
        if matrix.shape != (len(failed), len(references)):
            raise ValueError(
                f"The similarity {sim!r} returned shape {matrix.shape}, expected {(len(failed), len(references))}."
            )
        matrix = np.clip(np.nan_to_num(matrix, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
        sums = matrix.sum(axis=1)
    else:
        sums = np.zeros(len(failed))
    for row, i in enumerate(failed):
        rewards[i] = float(alpha * sums[row] / len(successes))
    return rewards


def batch_shaping_rewards(
    outcome_rewards: Sequence[float],
    codes: Sequence[str | None],
    group_size: int,
    *,
    alpha: float = 0.5,
    success_threshold: float | None = None,
    similarity: str | Similarity = "lexical",
    embedding_model: str | None = None,
) -> list[float]:
    """[`group_shaping_rewards`] applied to consecutive groups of `group_size` trajectories.

    This is the layout of TRL's generation batch gathered from all processes: the `num_generations` completions of a
    prompt are consecutive. `outcome_rewards` may be a list, a numpy array or a 1-D torch tensor.

    Raises:
        ValueError: the lengths differ, or are not a multiple of `group_size`.
    """
    if hasattr(outcome_rewards, "tolist"):  # numpy array / torch tensor
        outcome_rewards = outcome_rewards.tolist()
    n = len(outcome_rewards)
    if len(codes) != n:
        raise ValueError(f"batch_shaping_rewards got {n} outcome rewards but {len(codes)} codes.")
    if group_size < 1 or n % group_size:
        raise ValueError(f"The batch size {n} is not a multiple of the group size {group_size}.")
    rewards: list[float] = []
    for start in range(0, n, group_size):
        rewards.extend(
            group_shaping_rewards(
                outcome_rewards[start : start + group_size],
                codes[start : start + group_size],
                alpha=alpha,
                success_threshold=success_threshold,
                similarity=similarity,
                embedding_model=embedding_model,
            )
        )
    return rewards
