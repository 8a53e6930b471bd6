"""Calibrate the learning tests (tests/benchmarks/test_learning.py): the figure each test asserts on, over many seeds, for a
working advantage step and for its negated control (issue 19: thresholds at least 3 seed-sd from both).

    python benchmarks/learning/calibrate.py --seeds 15          # about 15 minutes on one core

Prints each seed's figure and the mean and sd of each group, and the thresholds 3 sd inside each.
"""

import argparse
import os
import statistics

import run

STEPS = 40  # the test's run: 40 steps of the multiply task, GTPO with the default ("aligned") estimator
LATE = 10  # its figure: mean training success over the last LATE steps


def negated_trainer():
    """GTPOTrainer whose turn-level advantages are negated: the control that must not learn."""
    from trl_gtpo import GTPOTrainer

    class NegatedGTPOTrainer(GTPOTrainer):
        def _turn_level_advantages(self, step, output):
            return -super()._turn_level_advantages(step, output)

    return NegatedGTPOTrainer


def late_success(seed: int, out_dir: str, trainer_class=None) -> float:
    """The test's figure: mean training success over the last LATE of STEPS steps of one GTPO run."""
    result = run.train("gtpo-aligned", seed, STEPS, out_dir, trainer_class=trainer_class)
    assert len(result["success"]) == STEPS
    return statistics.fmean(result["success"][-LATE:])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=15)
    parser.add_argument("--out", default=os.path.join(run.CACHE, "calibrate"))
    args = parser.parse_args()
    figures = {"working": [], "negated": []}
    for seed in range(args.seeds):
        for name, trainer_class in (("working", None), ("negated", negated_trainer())):
            figures[name].append(late_success(seed, os.path.join(args.out, name), trainer_class))
            print(f"seed {seed} {name}: {figures[name][-1]:.3f}", flush=True)
    for name, values in figures.items():
        mean, sd = statistics.fmean(values), statistics.stdev(values)
        print(f"{name}: mean {mean:.3f}, sd {sd:.3f}, min {min(values):.3f}, max {max(values):.3f}; "
              f"mean - 3 sd {mean - 3 * sd:.3f}, mean + 3 sd {mean + 3 * sd:.3f}")


if __name__ == "__main__":
    main()
