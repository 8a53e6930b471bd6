"""The credit benchmark's runs with the held-out leak, re-analysed as the crossed design they are (issue 29); no training.

    python benchmarks/learning/reanalyse_credit.py    # reads benchmarks/results/credit{,_4steps}_with_leak.json

Prints, per comparison, the paired t-test over all (model, seed) pairs as first reported, the t-test over the
starting-model means and the crossed random-effects test (`paired_stats.crossed_t`); the prose around the numbers
is benchmarks/results/credit_reanalysis.md.
"""

import json
import os

import credit

RUNS = {"2-step chains (primary, fixed design)": "credit_with_leak.json",
        "4-step chains (exploratory: added after the 2-step results were seen)": "credit_4steps_with_leak.json"}


def reanalyse(path: str) -> str:
    """The comparison table of one saved run, with the crossed statistics."""
    with open(path) as file:
        saved = json.load(file)
    summary = credit.summarize(saved["runs"], saved["summary"]["base"])
    return credit.comparison_table(summary)


def main():
    for label, name in RUNS.items():
        print(f"## {label}\n\n{reanalyse(os.path.join(credit.RESULTS, name))}\n")


if __name__ == "__main__":
    main()
