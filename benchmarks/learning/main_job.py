"""The main job, GTPO against GRPO on the same budget, over several seeds (issue 21).

    bash scripts/compare_grpo.sh                      # 2 arms x 3 seeds, 2 runs at a time: about 100 min on 2 cores
    bash scripts/compare_grpo.sh --seeds 42 --jobs 1  # one seed of each arm

Each run is `examples/train_gtpo.py --config recipes/cpu_default.yaml` (the main job, = scripts/train_default.sh)
with `--seed S` and `--trainer gtpo|grpo`; nothing else differs:

    gtpo   GTPOTrainer: the outcome reward, the recipe's turn rewards (`intermediate_value_turn_reward`: each tool
           turn's printed value against the true intermediates; `call_after_final_value_turn_reward`: a call made
           after the final value was printed; `answer_after_intermediate_turn_reward`: an answer given on an
           intermediate value), GTPO's defaults (aligned estimator, gamma 0.9, format
           penalty -0.1, shaping 0.5)
    grpo   TRL's GRPOTrainer with the same `CodeInterpreterRollout` as rollout_func; rewards: the same outcome, the
           same turn rewards summed over the trajectory, the same format penalty summed (the same verified
           information, one advantage per trajectory; shaping is GTPO's own and has no counterpart here)

Same starting model (the packaged SmolLM2-135M-Instruct), same problems (`synthetic_seed` 0), same prompts in the
same order for the same seed, same 20 steps of 16 trajectories (4 prompts x 4, two one-step and two two-step problems
in every step), same held-out problems (64 per split, greedy).

Statistics, fixed before the runs (docs/MAIN_JOB.md, "GTPO and GRPO on the main job"):
- Primary: held-out pass@1 on the two-step split (`word_two_step`, the one whose turns carry separately verified
  values) after training, gtpo - grpo, paired by seed: mean with its 95% Student-t interval and a paired t-test.
- Secondary, Holm-corrected together: the same difference on the trained wordings (`word`) and on the unseen
  wordings (`word_reworded`).
- Descriptive: each arm's pass@1 per split with a Wilson interval over all its seeds' problems together (it ignores
  the seed-to-seed spread, which the t intervals carry), mean training success, tool calls per problem.
With 3 seeds a t interval has 2 degrees of freedom (t = 4.30): only differences large against the seed spread can
show; the table says so rather than calling a small difference a result.

Runs are cached: a run whose output directory has its after-training reports is not run again (delete
`runs/compare-grpo/<arm>-<seed>` to redo it). The base model's evaluation (`eval_before_*`) is done once, in the
first gtpo run, and is the same for every run (greedy, same model).
"""

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

from paired_stats import holm, t_interval  # noqa: E402

RECIPE = os.path.join(ROOT, "recipes", "cpu_default.yaml")
SPLITS = ("word", "word_reworded", "word_two_step")
PRIMARY_SPLIT = "word_two_step"
ARMS = ("gtpo", "grpo")
REWARD_KEY = "rewards/math_answer_reward/mean"


def run_dir(out: str, arm: str, seed: int) -> str:
    return os.path.join(out, f"{arm}-{seed}")


def finished(directory: str) -> bool:
    return all(os.path.exists(os.path.join(directory, f"eval_after_{split}.json")) for split in SPLITS) and \
        os.path.exists(os.path.join(directory, "log_history.json"))


def command(arm: str, seed: int, directory: str, evaluate_before: bool, extra: list[str]) -> list[str]:
    return [sys.executable, os.path.join(ROOT, "examples", "train_gtpo.py"), "--config", RECIPE, "--trainer", arm,
            "--seed", str(seed), "--output_dir", directory, "--eval_before", str(evaluate_before).lower(),
            *extra]


def train(arm: str, seed: int, out: str, evaluate_before: bool, threads: int, extra: list[str]) -> float:
    """One run as its own process (its log in <run>/train.log); returns its wall seconds (0 when cached)."""
    directory = run_dir(out, arm, seed)
    if finished(directory):
        return 0.0
    os.makedirs(directory, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1", "PYTHONPATH": ROOT}
    began = time.perf_counter()
    print(f"[{time.strftime('%H:%M:%S')}] {arm} seed {seed}: training (log: {directory}/train.log)", flush=True)
    with open(os.path.join(directory, "train.log"), "w") as log:
        result = subprocess.run(command(arm, seed, directory, evaluate_before, extra), stdout=log,
                                stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    seconds = time.perf_counter() - began
    if result.returncode != 0:
        raise RuntimeError(f"{arm} seed {seed} failed (exit {result.returncode}): see {directory}/train.log")
    # The largest resident set of any run finished so far (getrusage counts waited-for children only).
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    with open(os.path.join(directory, "wall_seconds.json"), "w") as file:
        json.dump({"wall_seconds": seconds, "peak_rss_gib_of_runs_so_far": peak_gib}, file)
    print(f"[{time.strftime('%H:%M:%S')}] {arm} seed {seed}: done in {seconds / 60:.1f} min", flush=True)
    return seconds


def load_run(out: str, arm: str, seed: int) -> dict:
    directory = run_dir(out, arm, seed)
    reports = {}
    for split in SPLITS:
        with open(os.path.join(directory, f"eval_after_{split}.json")) as file:
            reports[split] = json.load(file)
    with open(os.path.join(directory, "log_history.json")) as file:
        history = json.load(file)
    success = [entry[REWARD_KEY] for entry in history if REWARD_KEY in entry]
    return {"after": reports, "training_success": success}


def firsts(report: dict) -> list[bool]:
    return [bool(problem["correct"][0]) for problem in report["problems"]]


def summarize(runs: dict[str, dict[int, dict]], before: dict | None) -> dict:
    """Per arm and split: mean pass@1 over seeds with its t interval and the pooled Wilson interval; the paired
    differences gtpo - grpo per split, the primary one and the Holm-corrected secondary ones."""
    from trl_gtpo.evaluation import wilson_interval

    arms = {}
    for arm, by_seed in runs.items():
        arms[arm] = {"seeds": sorted(by_seed), "splits": {}}
        for split in SPLITS:
            values = [by_seed[seed]["after"][split]["pass@1"] for seed in sorted(by_seed)]
            pooled = [ok for seed in by_seed for ok in firsts(by_seed[seed]["after"][split])]
            mean, half, _ = t_interval(values)
            arms[arm]["splits"][split] = {
                "per_seed": values, "mean": mean, "t_half_width": half,
                "pooled": sum(pooled) / len(pooled), "pooled_wilson": wilson_interval(sum(pooled), len(pooled)),
                "tool_calls": statistics.fmean(by_seed[s]["after"][split]["tool_calls_per_problem"] for s in by_seed),
            }
        arms[arm]["training_success"] = statistics.fmean(statistics.fmean(r["training_success"]) for r in by_seed.values())
    comparisons = {}
    if set(ARMS) <= set(runs):
        seeds = sorted(set(runs["gtpo"]) & set(runs["grpo"]))
        for split in SPLITS:
            differences = [runs["gtpo"][s]["after"][split]["pass@1"] - runs["grpo"][s]["after"][split]["pass@1"]
                           for s in seeds]
            mean, half, p = t_interval(differences)
            comparisons[split] = {"seeds": seeds, "differences": differences, "mean": mean, "t_half_width": half, "p": p}
    secondary = {split: comparisons[split]["p"] for split in SPLITS if split != PRIMARY_SPLIT and split in comparisons
                 and not math.isnan(comparisons[split]["p"])}
    base = None
    if before:
        base = {split: {"pass@1": report["pass@1"], "wilson": [report["pass@1_low"], report["pass@1_high"]],
                        "tool_calls": report["tool_calls_per_problem"]} for split, report in before.items()}
    return {"arms": arms, "comparisons": comparisons, "holm": holm(secondary) if secondary else {}, "base": base}


def table(summary: dict) -> str:
    """The side-by-side table: the base model, each arm (mean over seeds [t interval]; pooled [Wilson]), the paired
    differences."""
    lines = []
    header = ["split", "base model"] + [f"{arm} after: mean [95% t] | pooled [95% Wilson]" for arm in summary["arms"]]
    rows = [header]
    for split in SPLITS:
        base = summary["base"][split] if summary["base"] else None
        row = [split, "-" if base is None else f"{base['pass@1']:.3f} [{base['wilson'][0]:.3f}, {base['wilson'][1]:.3f}]"]
        for arm in summary["arms"].values():
            s = arm["splits"][split]
            low, high = s["pooled_wilson"]
            t = "n/a" if math.isnan(s["t_half_width"]) else f"{s['mean'] - s['t_half_width']:.3f}, {s['mean'] + s['t_half_width']:.3f}"
            row.append(f"{s['mean']:.3f} [{t}] | {s['pooled']:.3f} [{low:.3f}, {high:.3f}]")
        rows.append(row)
    from trl_gtpo.reporting import text_table

    lines += text_table(rows, left_columns=len(header)).splitlines()
    for arm, data in summary["arms"].items():
        per_seed = ", ".join(f"{split} {' '.join(f'{v:.3f}' for v in data['splits'][split]['per_seed'])}" for split in SPLITS)
        lines.append(f"{arm} (seeds {', '.join(map(str, data['seeds']))}): per seed {per_seed}; mean training success "
                     f"{data['training_success']:.3f}")
    for split, c in summary["comparisons"].items():
        role = "PRIMARY" if split == PRIMARY_SPLIT else "secondary"
        verdict = ""
        if split in summary["holm"]:
            _, threshold, rejected = summary["holm"][split]
            verdict = f", Holm threshold {threshold:.3f}: {'significant' if rejected else 'not significant'}"
        elif split == PRIMARY_SPLIT and not math.isnan(c["p"]):
            verdict = f": {'significant' if c['p'] < 0.05 else 'not significant'} at 0.05"
        half = "n/a" if math.isnan(c["t_half_width"]) else f"{c['t_half_width']:.3f}"
        lines.append(f"gtpo - grpo on {split} ({role}): {c['mean']:+.3f} +- {half} (95% t, paired by seed, n = "
                     f"{len(c['seeds'])}; per seed {' '.join(f'{d:+.3f}' for d in c['differences'])}), p = {c['p']:.3f}{verdict}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44],
                        help="Training seeds (--seed; the problems stay the same). 42 is the main job's own.")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--jobs", type=int, default=2, help="Runs at a time, each with --threads threads.")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each run.")
    parser.add_argument("--out", default=os.path.join(ROOT, "runs", "compare-grpo"))
    parser.add_argument("extra", nargs="*", help="After --: more flags for examples/train_gtpo.py (e.g. --max_steps 2).")
    args = parser.parse_args()

    first = (args.arms[0], args.seeds[0])  # evaluates the base model too, once for all runs
    jobs = [(arm, seed) for seed in args.seeds for arm in args.arms]
    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(train, arm, seed, args.out, (arm, seed) == first, args.threads, args.extra)
                   for arm, seed in jobs]
        for future in futures:
            future.result()
    runs = {arm: {seed: load_run(args.out, arm, seed) for seed in args.seeds} for arm in args.arms}
    before = {}
    for split in SPLITS:
        path = os.path.join(run_dir(args.out, *first), f"eval_before_{split}.json")
        if os.path.exists(path):
            with open(path) as file:
                before[split] = json.load(file)
    summary = summarize(runs, before or None)
    text = table(summary)
    print(f"\nThe main job, GTPO vs GRPO ({len(args.seeds)} seeds each, {time.perf_counter() - began:.0f} s):\n{text}")
    with open(os.path.join(args.out, "summary.json"), "w") as file:
        json.dump(summary, file, indent=1)
    with open(os.path.join(args.out, "summary.txt"), "w") as file:
        file.write(text + "\n")


if __name__ == "__main__":
    main()
