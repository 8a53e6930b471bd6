"""The regression benchmark: GRPO and GTPO's estimators on an outcome-only two-turn task (issue 10, part 2).

One command, on the CPU, one training at a time on one thread (the machine is shared):

    python benchmarks/learning/run.py            # every method x 5 seeds (budget: 30 minutes)
    python benchmarks/learning/run.py --quick    # fewer steps and seeds (budget: 5 minutes)

The task (benchmarks/learning/task.py): the answer's reward arrives on the last turn and is earned by the first
turn's choice to compute the product with code. It is the only reward, so this benchmark cannot show turn-level
credit (with gamma 1 and no format or shaping terms GTPO is GRPO); benchmarks/learning/credit.py is the one that can. A tiny model is first taught the
format by a short supervised stage (cached in benchmarks/learning/.cache/), writing code only a quarter of the time.
Then, from that same model, every method trains for the same steps on the same prompts with the same seed list:

    grpo                  TRL's GRPOTrainer with CodeInterpreterRollout as rollout_func: one advantage per trajectory
    gtpo-<estimator>      GTPOTrainer (gamma 0.9, format penalty -0.1, shaping 0.5: the defaults) with
                          turn_advantage_estimator = aligned / pooled

Written to benchmarks/results/ (`learning[_quick].{json,png,md}`): the training success rate per step (mean across
seeds, 95% t-interval, smoothed over a few steps), held-out success after training (16 operand pairs never trained
on, `--eval_k` samples each at temperature 1) with its 95% interval across seeds, steps until the smoothed training
success first reaches `--target`, and wall seconds per step.
"""

import argparse
import json
import math
import os
import statistics
import time

import script_env  # noqa: F401  first: offline defaults and this checkout's trl_gtpo on sys.path

# isort: split
import task

HERE = os.path.dirname(os.path.abspath(__file__))

METHODS = ("grpo", "gtpo-aligned", "gtpo-pooled")
REWARD_KEY = "rewards/boxed_answer_reward/mean"
CACHE = os.path.join(HERE, ".cache")
RESULTS = os.path.join(os.path.dirname(HERE), "results")


def settings(quick: bool) -> dict:
    """The sizes of a run. Measured on the 2-core machine, shared with other jobs: 0.4-0.6 s per step; the full run
    (4 methods x 15 seeds x 50 steps) took 28 minutes. 15 seeds, because 5 left every interval overlapping."""
    if quick:
        return dict(steps=20, seeds=[0, 1], eval_k=2)
    return dict(steps=50, seeds=list(range(15)), eval_k=4)


def train(method: str, seed: int, steps: int, out_dir: str, *, batch: int = 16, num_generations: int = 8,
          learning_rate: float = 1e-3, trainer_class=None, overrides: dict | None = None) -> dict:
    """Train one method from the taught model; returns the per-step training success, seconds per step and the
    trained model. `trainer_class` replaces GTPOTrainer (tests pass a subclass with a broken advantage step);
    `overrides` are config fields set for every method (e.g. num_iterations, importance_sampling_level)."""
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from trl_gtpo import GTPOConfig, GTPOTrainer
    from trl_gtpo.interpreter.rollout import CodeInterpreterRollout

    torch.set_num_threads(1)
    model_path = task.teach_format(os.path.join(CACHE, "taught"))
    train_set = Dataset.from_list(
        [{"prompt": p["prompt"], "answer": p["answer"]} for p in task.problems(batch // num_generations * steps, seed)]
    )
    common = dict(
        output_dir=out_dir,
        per_device_train_batch_size=batch,
        num_generations=num_generations,
        max_completion_length=64,
        max_steps=steps,
        learning_rate=learning_rate,
        lr_scheduler_type="constant",
        temperature=1.0,
        beta=0.0,
        logging_steps=1,
        report_to="none",
        bf16=False,
        use_cpu=True,
        save_strategy="no",
        seed=seed,
        data_seed=seed,
        disable_tqdm=True,
    ) | (overrides or {})
    interpreter = dict(max_turns=2, tool_pool_size=1, tool_timeout=5.0)

    class Timer(TrainerCallback):
        def __init__(self):
            self.starts, self.seconds = {}, []

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self.start)

    timer = Timer()
    if method == "grpo":
        rollout = CodeInterpreterRollout(GTPOConfig(**common, **interpreter))
        trainer = GRPOTrainer(model=model_path, reward_funcs=task.boxed_answer_reward, args=GRPOConfig(**common),
                              train_dataset=train_set, rollout_func=rollout, callbacks=[timer, rollout.callback()])
    else:
        estimator = method.removeprefix("gtpo-")
        args = GTPOConfig(**common, **interpreter, turn_advantage_estimator=estimator)
        trainer = (trainer_class or GTPOTrainer)(model=model_path, reward_funcs=task.boxed_answer_reward, args=args,
                                                 train_dataset=train_set, callbacks=[timer])
    trainer.remove_callback(PrinterCallback)  # one line per step per run is too much; the summary follows
    trainer.train()
    success = [row[REWARD_KEY] for row in trainer.state.log_history if REWARD_KEY in row]
    return {"success": success, "seconds_per_step": statistics.median(timer.seconds), "model": trainer.model,
            "tokenizer": trainer.processing_class}


def held_out_success(model, tokenizer, k: int, seed: int) -> float:
    """Mean success over the held-out operand pairs, k samples each at temperature 1 (avg@k)."""
    import torch

    from trl_gtpo.evaluation import evaluate
    from trl_gtpo.interpreter.sandbox import SandboxPool

    torch.manual_seed(10_000 + seed)
    with SandboxPool(size=1) as executor:
        report = evaluate(model.eval(), tokenizer, task.test_problems(), executor, task.boxed_answer_reward, k=k,
                          max_turns=2, max_completion_length=64, temperature=1.0, progress=False)
    return report[f"avg@{k}"]


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing mean over `window` steps: one step's batch of 16 trajectories is too noisy to read alone."""
    return [statistics.fmean(values[max(0, i - window + 1) : i + 1]) for i in range(len(values))]


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% Student-t interval across seeds."""
    from scipy import stats

    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def steps_to(curve: list[float], target: float) -> int | None:
    return next((i + 1 for i, value in enumerate(curve) if value >= target), None)


def summarize(runs: dict, target: float, window: int) -> dict:
    rows = {}
    for method, seeds in runs.items():
        reached = [steps_to(smooth(r["success"], window), target) for r in seeds]
        hits = [s for s in reached if s is not None]
        rows[method] = {
            "seeds": len(seeds),
            "base": seeds[0]["base"],
            "held_out": interval([r["held_out"] for r in seeds]),
            "final_train": interval([statistics.fmean(r["success"][-window:]) for r in seeds]),
            "steps_to_target": (statistics.fmean(hits) if hits else None, len(hits)),
            "seconds_per_step": statistics.fmean(r["seconds_per_step"] for r in seeds),
        }
    return rows


def paired_differences(runs: dict, pairs: list[tuple[str, str]]) -> dict:
    """Held-out success of method a minus method b, seed by seed (same seed: same taught model, prompts and held-out
    samples), with its 95% t interval: what separates two methods that the per-method intervals leave overlapping."""
    from scipy import stats

    differences = {}
    for a, b in pairs:
        if a in runs and b in runs and len(runs[a]) == len(runs[b]) > 1:
            diffs = [x["held_out"] - y["held_out"] for x, y in zip(runs[a], runs[b])]
            half = stats.t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
            differences[f"{a} - {b}"] = (statistics.fmean(diffs), half)
    return differences


def markdown(rows: dict, target: float, label: str, steps: int, differences: dict | None = None) -> str:
    lines = [
        f"{label}: {steps} steps of 16 trajectories (8 per prompt); held-out: 16 unseen operand pairs, avg over "
        f"samples at temperature 1; intervals: 95% t across seeds; steps to target: first step whose trailing "
        f"mean success reaches {target} (mean over the seeds that reached it, and how many did).",
        "",
        "| method | seeds | held-out success (before: {:.2f}) | final train success | steps to {} | s / step |".format(
            next(iter(rows.values()))["base"], target),
        "|---|---|---|---|---|---|",
    ]
    for method, row in rows.items():
        (held, held_ci), (train_, train_ci) = row["held_out"], row["final_train"]
        steps_mean, hits = row["steps_to_target"]
        reach = f"{steps_mean:.1f} ({hits}/{row['seeds']})" if hits else f"not reached (0/{row['seeds']})"
        lines.append(f"| {method} | {row['seeds']} | {held:.3f} ± {held_ci:.3f} | {train_:.3f} ± {train_ci:.3f} | "
                     f"{reach} | {row['seconds_per_step']:.2f} |")
    if differences:
        lines += ["", "| held-out success, paired by seed | difference (95% interval) |", "|---|---|"]
        lines += [f"| {pair} | {mean:+.3f} ± {half:.3f} |" for pair, (mean, half) in differences.items()]
    return "\n".join(lines)


def plot(runs: dict, window: int, target: float, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import stats

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for method, seeds in runs.items():
        curves = [smooth(r["success"], window) for r in seeds]
        length = min(len(c) for c in curves)
        steps = list(range(1, length + 1))
        mean = [statistics.fmean(c[i] for c in curves) for i in range(length)]
        if len(curves) > 1:
            t = stats.t.ppf(0.975, len(curves) - 1)
            half = [t * statistics.stdev(c[i] for c in curves) / math.sqrt(len(curves)) for i in range(length)]
            axis.fill_between(steps, [m - h for m, h in zip(mean, half)], [m + h for m, h in zip(mean, half)], alpha=0.2)
        axis.plot(steps, mean, label=f"{method} ({len(curves)} seeds)")
    axis.axhline(target, color="gray", linestyle=":", label=f"target {target}")
    axis.set(xlabel="training step", ylabel=f"training success (trailing mean of {window} steps)", title=title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def _value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and seeds: about 5 minutes")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--eval_k", type=int, default=None)
    parser.add_argument("--target", type=float, default=0.6)
    parser.add_argument("--window", type=int, default=5)
    parser.add_argument("--out", default=RESULTS)
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="config fields for every method, e.g. num_iterations=2 importance_sampling_level=turn "
                        "(values parsed as JSON when they parse)")
    parser.add_argument("--name", default=None, help="file name of the results (default: learning / learning_quick)")
    args = parser.parse_args()
    overrides = {key: _value(value) for key, value in (item.split("=", 1) for item in args.set)}
    sizes = settings(args.quick)
    steps, seeds = args.steps or sizes["steps"], args.seeds or sizes["seeds"]
    eval_k = args.eval_k or sizes["eval_k"]
    name = args.name or ("learning_quick" if args.quick else "learning")
    os.makedirs(args.out, exist_ok=True)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    began = time.time()
    model_path = task.teach_format(os.path.join(CACHE, "taught"))
    base = held_out_success(AutoModelForCausalLM.from_pretrained(model_path), AutoTokenizer.from_pretrained(model_path),
                            4 * eval_k, 0)
    print(f"taught model: held-out success {base:.3f}")
    runs = {}
    for method in args.methods:
        runs[method] = []
        for seed in seeds:
            result = train(method, seed, steps, os.path.join(CACHE, "runs", method, str(seed)), overrides=overrides)
            result["held_out"] = held_out_success(result.pop("model"), result.pop("tokenizer"), eval_k, seed)
            result["base"] = base
            runs[method].append(result)
            print(f"{method} seed {seed}: train success {statistics.fmean(result['success'][:args.window]):.2f} -> "
                  f"{statistics.fmean(result['success'][-args.window:]):.2f}, held-out {result['held_out']:.3f}, "
                  f"{result['seconds_per_step']:.2f} s/step ({time.time() - began:.0f} s so far)", flush=True)

    label = ("Quick run (--quick)" if args.quick else "Full run") + (f" with {' '.join(args.set)}" if args.set else "")
    rows = summarize(runs, args.target, args.window)
    gtpo = [method for method in runs if method.startswith("gtpo-")]
    pairs = [(method, "grpo") for method in gtpo] + [(a, b) for i, a in enumerate(gtpo) for b in gtpo[i + 1 :]]
    differences = paired_differences(runs, pairs)
    table = markdown(rows, args.target, label, steps, differences)
    print("\n" + table)
    with open(os.path.join(args.out, f"{name}.md"), "w") as file:
        file.write(table + "\n")
    with open(os.path.join(args.out, f"{name}.json"), "w") as file:
        json.dump({"args": vars(args), "steps": steps, "seeds": seeds, "eval_k": eval_k, "base_held_out": base,
                   "summary": rows, "paired_differences": differences, "runs": runs, "wall_seconds": time.time() - began}, file, indent=1)
    plot(runs, args.window, args.target, os.path.join(args.out, f"{name}.png"), f"{label}: success while training")
    print(f"\nWrote {args.out}/{name}.{{md,json,png}} in {time.time() - began:.0f} s")


if __name__ == "__main__":
    main()
