"""Drop rate by turn count of AsyncGTPOTrainer's staleness stamps (issue 30): TRL's own rollout loop
(`_generate_loop`, `_score_loop` of `GTPORolloutLoop`) against a scripted server whose turns take a fixed time, and a
trainer that drops samples by TRL's `RolloutQueueDataset` rule (see `simulate_staleness` in
tests/unit/test_async_alignment.py). CPU only, no vLLM.

    python benchmarks/bench_async_staleness.py [--groups 200]
"""

import argparse
import logging
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import pytest  # noqa: E402
from test_async_alignment import simulate_staleness  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--groups", type=int, default=200)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    patch = pytest.MonkeyPatch()
    print("| max_staleness | stamp | 1 turn | 2 turns | 4 turns | 8 turns | all |")
    print("|---|---|---|---|---|---|---|")
    for max_staleness in (1, 2):
        for stamp in ("first_request", "last_request"):
            counts = simulate_staleness(patch, stamp, groups=args.groups, max_staleness=max_staleness)
            cells = [f"{d / n:.0%} ({d}/{n})" for d, n in counts.values()]
            dropped, total = sum(d for d, _ in counts.values()), sum(n for _, n in counts.values())
            print(f"| {max_staleness} | {stamp} | " + " | ".join(cells) + f" | {dropped / total:.0%} |", flush=True)
    patch.undo()


if __name__ == "__main__":
    main()
