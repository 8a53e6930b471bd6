"""GTPO must learn the regression benchmark's task, and the same run with its advantages negated must not: the
end-to-end check of the sign and the token alignment of the advantage step, which unit tests of the advantage math
miss (they check numbers, not that the numbers push the policy the right way).

A reduced benchmarks/learning/run.py: seed 0, GTPOTrainer with the default estimator ("aligned"), 40 steps from
the taught model (cached in benchmarks/learning/.cache/; taught here first on a clean clone, about a minute). The
figure: mean training success over the last 10 steps.

Calibration (`python benchmarks/learning/calibrate.py --seeds 15`, 2026-12-05, the bounded "aligned" estimator whose
scale is the sum of the places' stds): over seeds 0-14 the working run's figure had mean 0.491, sd 0.131, min 0.263,
max 0.731 (seed 0: 0.412); the negated control's had mean 0.004, sd 0.007, max 0.025. (Before the bound, 2026-12-03:
working 0.502, sd 0.136, min 0.294, max 0.756, seed 0 0.556; negated 0.001, sd 0.003, max 0.006.) THRESHOLD = 0.08
is 3.1 working-sd below the working mean and 11 negated-sd above the negated mean, so a redraw of the numbers (an
upgrade, another seed) leaves both tests passing, while a sign error in the advantage step fails both (the working
run then collapses, and the control, negated twice, learns). The threshold is below the taught model's own success
(about 0.28): seed to seed, 40 steps do not lift this figure 3 sd above the start, so the first test checks "learns,
or at least does not collapse", and the pair tells a working advantage step from a negated one. (The old threshold,
0.45 from a 5-seed sd of 0.077, failed seed 0 itself once the code had moved on: 0.250 with the former "trajectory"
estimator, whose 15 seeds had mean 0.527, sd 0.127.)

What these do not catch, and what does: GTPO silently falling back to GRPO, two turns' advantages swapped, or gamma
applied backwards all still learn this task (its only reward is the outcome); tests/benchmarks/test_credit_curves.py checks
credit placement exactly and tests/trainer/test_trainer.py that the outcome-only case is GRPO's advantage, token by token.
"""

import pytest

from benchmarks.learning import calibrate

pytestmark = pytest.mark.slow

SEED = 0
THRESHOLD = 0.08


def test_gtpo_learns_the_task(tmp_path):
    late = calibrate.late_success(SEED, str(tmp_path / "out"))
    assert late >= THRESHOLD, f"late success {late:.3f}: GTPO collapsed (calibrated working runs: 0.263-0.731)"


def test_negated_advantages_do_not_learn(tmp_path):
    late = calibrate.late_success(SEED, str(tmp_path / "out"), trainer_class=calibrate.negated_trainer())
    assert late < THRESHOLD, f"late success {late:.3f} with negated advantages: the control learned"
