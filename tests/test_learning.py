"""GTPO must learn the benchmark task: the test that catches a sign error or a misaligned advantage mask, which every
unit test of the advantage math misses (they check numbers, not that the numbers push the policy the right way).

A reduced benchmarks/learning/run.py: one fixed seed, GTPOTrainer with the "trajectory" estimator (the best in the
benchmark; the default "pooled" fell on 1 seed of 5 there), from the same
taught model (cached in benchmarks/learning/.cache/; taught here first on a clean clone, ~1 minute). The task pays
only when turn 1 writes code and turn 2 copies its output, so success rises only if the turn-level advantages reach
the right tokens with the right sign.

Margin, from the full benchmark (benchmarks/results/learning.json, 5 seeds): the taught model succeeds 0.25-0.30 of
the time (held-out 0.28; first training step 0.25 averaged over seeds). With "trajectory", the mean success of steps
31-40 was 0.60-0.77 over the 5 seeds (seed 0: 0.61), and the step-to-step noise of that 10-step mean (160
trajectories) is about 0.04 (binomial) plus prompt-to-prompt spread; across seeds its sd was 0.077. Requiring >= 0.45,
i.e. 0.15 above the taught model and 2 seed-sd below the seed-0 value, passes for a working advantage step and
fails for a flipped one (checked by hand: with every advantage negated the same run ends at 0.01).
"""

import importlib.util
import pathlib
import statistics

import pytest

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("learning_run", ROOT / "benchmarks" / "learning" / "run.py")
learning_run = importlib.util.module_from_spec(spec)
spec.loader.exec_module(learning_run)

SEED = 0
STEPS = 40
TAUGHT_SUCCESS = 0.30  # the taught model, before RL (upper end of what the benchmark measured)
MARGIN = 0.15


def late_success(tmp_path, trainer_class=None) -> float:
    """Mean training success over the last 10 of STEPS steps of one GTPO run (trajectory estimator, seed 0)."""
    result = learning_run.train("gtpo-trajectory", SEED, STEPS, str(tmp_path / "out"), trainer_class=trainer_class)
    success = result["success"]
    assert len(success) == STEPS
    return statistics.fmean(success[-10:])


def test_gtpo_success_rises_far_outside_seed_noise(tmp_path):
    late = late_success(tmp_path)
    assert late >= TAUGHT_SUCCESS + MARGIN, f"success {late:.2f} after {STEPS} steps: GTPO did not learn the task"
