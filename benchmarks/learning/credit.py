"""What does turn-level credit buy? GTPO against GRPO given the same per-turn rewards, on the chain task (issue 19).

One command reproduces the table (CPU, 2 trainings at a time on one thread each; finished runs are cached in
benchmarks/learning/.cache/credit/, so an interrupted run resumes):

    python benchmarks/learning/credit.py            # 3 starting models x 5 seeds x 5 arms: about 17 minutes
    python benchmarks/learning/credit.py --quick    # 1 starting model x 2 seeds, 12 steps: about 2.5 minutes
    python benchmarks/learning/credit.py --chain_steps 4 --arms gtpo grpo-sum gtpo-g1 gtpo-pooled   # about 16 minutes

The task is benchmarks/learning/chain.py: one tool turn per arithmetic step, each step's output checked against the
true intermediate value by `intermediate_value_turn_reward`, the boxed final value the outcome. The arms start from
the same supervised models and train on the same prompts, in the same order, with the same seeds:

    grpo           TRL's GRPOTrainer, code interpreter as rollout_func; reward: the outcome only
    grpo-sum       the same, reward: outcome + the per-turn rewards summed over the trajectory (the same
                   information as gtpo, handed to every turn alike): the PRIMARY baseline
    gtpo           GTPOTrainer with the turn rewards as turn_reward_funcs; the default estimator and gamma;
                   format penalty and shaping off (nothing grpo-sum does not see)
    gtpo-outcome   GTPOTrainer, gamma 1, no turn rewards, no format penalty, no shaping: must equal grpo (sanity)
    gtpo-shaping   gtpo with shaping on (alpha 0.5, the default)
    gtpo-g1        gtpo at gamma 1 (turn credit without the discount: grpo-sum is in effect gamma 1)
    gtpo-pooled    gtpo with the `pooled` estimator (the paper's formula as read)

The default arms are the first five (the 2-step design); the last two are for the 4-step run:

    python benchmarks/learning/credit.py --chain_steps 4 --arms gtpo grpo-sum gtpo-g1 gtpo-pooled

Written to benchmarks/results/credit[_quick].{md,json,png} (`--name` for another file name). The gtpo arms run
GTPOConfig's default estimator; GTPO_CREDIT_ESTIMATOR=pooled (an environment variable) runs them with another.
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

import script_env  # noqa: F401  first: offline defaults and this checkout's trl_gtpo on sys.path

# isort: split
import chain
from paired_stats import crossed_t, holm, model_means_t, t_interval

HERE = os.path.dirname(os.path.abspath(__file__))

ARMS = ("grpo", "grpo-sum", "gtpo", "gtpo-outcome", "gtpo-shaping", "gtpo-g1", "gtpo-pooled")
DEFAULT_ARMS = ARMS[:5]
PRIMARY = ("gtpo", "grpo-sum")
# Holm runs over the ones whose two arms were run: the first four in the 2-step design, the last three in the 4-step run.
SECONDARY = (("gtpo", "grpo"), ("grpo-sum", "grpo"), ("gtpo-shaping", "gtpo"), ("gtpo-outcome", "grpo"),
             ("gtpo-g1", "grpo-sum"), ("gtpo", "gtpo-g1"), ("gtpo-pooled", "gtpo"))
REWARD_KEY = "rewards/boxed_answer_reward/mean"
CACHE = os.path.join(HERE, ".cache")
RESULTS = os.path.join(os.path.dirname(HERE), "results")
# The turn-advantage estimator of the gtpo arms: GTPOConfig's default ("aligned" since issue 18).
ESTIMATOR = os.environ.get("GTPO_CREDIT_ESTIMATOR", "default")

DESIGN = """\
Design, fixed before the numbers were run (issue 19):

- Primary comparison: held-out success of `gtpo` minus `grpo-sum` (GTPO with the turn rewards against GRPO with the
  same turn rewards summed into its trajectory reward), paired by (starting model, RL seed); reported as the mean
  difference with its 95% Student-t interval and a two-sided paired t-test, whatever it shows.
- Secondary comparisons, Holm-corrected together (family-wise 0.05): gtpo - grpo, grpo-sum - grpo,
  gtpo-shaping - gtpo, gtpo-outcome - grpo (the sanity arm: expected 0).
- 3 supervised starting models (seeds 0-2: own initialization and data) x 5 RL seeds per arm; every arm sees the same
  starting models, prompts, data order and seeds.
- Held-out success: on 64 chains never trained on, the exact probability that the model, sampling at temperature 1
  as in training, writes the right transcript (every step's operand right, the right boxed value, EOS; the tool's
  outputs given), from one forward pass: k = infinity samples along the taught wording, no sampling noise. Greedy
  success on the same chains is reported next to it (it moves little: the taught model's most likely operand is
  already the right one, and RL mostly sharpens the sampling distribution).
- Secondary figures: area under the training curve (mean training success over all steps), paired the same way;
  tool calls per step (calls per trajectory / steps of the chain) in training and on the held-out chains.

Added after the first runs (issue 29), for every run since: the pairs are not independent. Seed s trains every
starting model on the same prompts, so the (model, seed) table is crossed. Each comparison is also reported as a
t-test over the starting-model means (n = models) and as a crossed random-effects test (model and seed random; a
two-way ANOVA, Satterthwaite degrees of freedom: `paired_stats.crossed_t`); the crossed test is the one that matches
the design, and Holm's thresholds are computed on its p values. The paired t-test over all pairs is kept for
comparison with the earlier runs.
"""

DESIGN_4STEPS = """\
The 4-step run (fixed 2026-12-05 22:50 UTC, before its run without the held-out leak; issue 29). A run of the
same name with the leak, and the two primary arms only, was added after the 2-step results were seen; it suggested
`gtpo` > `grpo-sum` at 4 steps. This run tests that on the starting models taught without the leak (new models, the
same RL prompts and seeds: a replication on new models, not a fresh experiment):

- Primary: held-out success of `gtpo` minus `grpo-sum`, the crossed test, two-sided, 0.05.
- Secondary, Holm on their crossed p: `gtpo-g1` - `grpo-sum` (turn credit without the discount), `gtpo` - `gtpo-g1`
  (the discount alone), `gtpo-pooled` - `gtpo` (the exact curves' lower update noise for `pooled` predicts > 0).
- Everything else as the 2-step design below.

"""


def estimator_name() -> str:
    """The estimator the gtpo arms run: ESTIMATOR, or GTPOConfig's default."""
    import dataclasses

    from trl_gtpo import GTPOConfig

    if ESTIMATOR != "default":
        return ESTIMATOR
    return next(f.default for f in dataclasses.fields(GTPOConfig) if f.name == "turn_advantage_estimator")


def settings(quick: bool) -> dict:
    """The sizes of a run. Learning rate 2e-4 (Adam): at 1e-3 and sometimes at 3e-4 every arm first learned and then
    collapsed to 0 within 20 steps (junk tokens, broken fences); at 1e-4 it learned slowly (measured on model 0)."""
    if quick:
        return dict(models=[0], seeds=[0, 1], steps=12, chain_steps=2)
    return dict(models=[0, 1, 2], seeds=[0, 1, 2, 3, 4], steps=30, chain_steps=2)


def taught_model(model_seed: int) -> str:
    return chain.teach_format(os.path.join(CACHE, f"chain_taught_{model_seed}"), seed=model_seed)


def arm_config(arm: str, estimator: str = ESTIMATOR) -> dict:
    """The GTPOConfig fields of a GTPO arm (the GRPO arms use GRPOConfig)."""
    fields = {} if estimator == "default" else {"turn_advantage_estimator": estimator}
    if arm == "gtpo":
        return fields | dict(format_penalty=0.0, shaping_alpha=0.0)
    if arm == "gtpo-shaping":
        return fields | dict(format_penalty=0.0, shaping_alpha=0.5)
    if arm in ("gtpo-outcome", "gtpo-g1"):  # the same settings; gtpo-g1 keeps the turn rewards (`train`)
        return fields | dict(gamma=1.0, format_penalty=0.0, shaping_alpha=0.0)
    if arm == "gtpo-pooled":
        return dict(turn_advantage_estimator="pooled", format_penalty=0.0, shaping_alpha=0.0)
    raise ValueError(f"{arm!r} is not a GTPO arm")


def step_turn_reward(turns, intermediates, **kwargs) -> list[list[float | None]]:
    """Each verified step worth 1, as in the recorded runs (`intermediate_value_turn_reward` pays 1/n per expected
    value so that a problem's steps never outweigh its outcome; this benchmark weighs each step like the outcome)."""
    from trl_gtpo.rewards.turn import intermediate_value_turn_reward

    values = intermediate_value_turn_reward(turns=turns, intermediates=intermediates)
    return [[None if v is None else v * len(e) for v in row] for row, e in zip(values, intermediates, strict=True)]


def summed_turn_reward(completions, turns, intermediates, **kwargs) -> list[float]:
    """The turn rewards of `step_turn_reward`, summed over each trajectory: grpo-sum's second reward."""
    values = step_turn_reward(turns=turns, intermediates=intermediates)
    return [sum(v for v in row if v is not None) for row in values]


def train(arm: str, model_seed: int, seed: int, steps: int, chain_steps: int, out_dir: str, *, batch: int = 16,
          num_generations: int = 8, learning_rate: float = 2e-4, trainer_class=None, estimator: str = ESTIMATOR,
          overrides: dict | None = None) -> dict:
    """Train one arm from starting model `model_seed`; returns the per-step training success and tool calls, and the
    model. `trainer_class` replaces GTPOTrainer (tests pass a subclass with a broken advantage step)."""
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    from trl_gtpo import GTPOConfig, GTPOTrainer
    from trl_gtpo.interpreter.rollout import CodeInterpreterRollout

    torch.set_num_threads(1)
    model_path = taught_model(model_seed)
    rows = chain.problems(batch // num_generations * steps, seed, chain_steps)
    train_set = Dataset.from_list([{k: r[k] for k in ("prompt", "answer", "intermediates")} for r in rows])
    common = dict(
        output_dir=out_dir, per_device_train_batch_size=batch, num_generations=num_generations,
        max_completion_length=28 * chain_steps + 24, max_steps=steps, learning_rate=learning_rate,
        lr_scheduler_type="constant", temperature=1.0, beta=0.0, logging_steps=1, report_to="none", bf16=False,
        use_cpu=True, save_strategy="no", seed=seed, data_seed=seed, disable_tqdm=True,
    ) | (overrides or {})
    interpreter = dict(max_turns=chain_steps + 1, tool_pool_size=1, tool_timeout=5.0)
    if arm.startswith("grpo"):
        rollout = CodeInterpreterRollout(GTPOConfig(**common, **interpreter))
        rewards = [chain.boxed_answer_reward] + ([summed_turn_reward] if arm == "grpo-sum" else [])
        trainer = GRPOTrainer(model=model_path, reward_funcs=rewards, args=GRPOConfig(**common),
                              train_dataset=train_set, rollout_func=rollout, callbacks=[rollout.callback()])
    else:
        args = GTPOConfig(**common, **interpreter, **arm_config(arm, estimator))
        turn_rewards = None if arm == "gtpo-outcome" else step_turn_reward
        trainer = (trainer_class or GTPOTrainer)(model=model_path, reward_funcs=chain.boxed_answer_reward, args=args,
                                                 train_dataset=train_set, turn_reward_funcs=turn_rewards)
    trainer.remove_callback(PrinterCallback)
    began = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - began
    logs = [row for row in trainer.state.log_history if REWARD_KEY in row]
    return {
        "success": [row[REWARD_KEY] for row in logs],
        "tool_calls": [row.get("tools/calls_per_trajectory", math.nan) / chain_steps for row in logs],
        "seconds_per_step": seconds / max(1, len(logs)),
        "model": trainer.model,
        "tokenizer": trainer.processing_class,
    }


def held_out(model, tokenizer, chain_steps: int) -> dict:
    """On the 64 held-out chains: the exact probability of the right transcript at temperature 1 (`success`, the
    primary figure), greedy success, and tool calls per chain step of the greedy runs."""
    from trl_gtpo.evaluation import evaluate
    from trl_gtpo.interpreter.sandbox import SandboxPool

    rows = chain.test_problems(chain_steps)
    problems = [{k: r[k] for k in ("prompt", "answer")} for r in rows]
    with SandboxPool(size=1) as executor:
        report = evaluate(model.eval(), tokenizer, problems, executor, chain.boxed_answer_reward, k=1,
                          max_turns=chain_steps + 1, max_completion_length=28 * chain_steps + 24, temperature=0.0,
                          batch_size=32, progress=False)
    return {"success": statistics.fmean(chain.route_probability(model, tokenizer, rows)),
            "greedy": report["pass@1"], "tool_calls": report["mean_tool_calls"] / chain_steps}


def run_path(chain_steps: int, arm: str, model_seed: int, seed: int, steps: int) -> str:
    return os.path.join(CACHE, "credit", f"{chain_steps}steps_{steps}", estimator_name() if arm.startswith("gtpo") else
                        "", arm, f"{model_seed}_{seed}.json")


def work(jobs: list[tuple], chain_steps: int, steps: int) -> None:
    """One worker: train and score each (arm, model, seed) of `jobs`, caching each result as JSON."""
    import torch

    torch.set_num_threads(1)
    for arm, model_seed, seed in jobs:
        if arm == "teach":
            taught_model(model_seed)
            continue
        path = run_path(chain_steps, arm, model_seed, seed, steps)
        if os.path.exists(path):
            continue
        result = train(arm, model_seed, seed, steps, chain_steps, os.path.join(CACHE, "runs", arm))
        torch.manual_seed(0)
        result["held_out"] = held_out(result.pop("model"), result.pop("tokenizer"), chain_steps)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as file:
            json.dump(result, file)
        print(f"{arm} model {model_seed} seed {seed}: train {statistics.fmean(result['success'][:3]):.2f} -> "
              f"{statistics.fmean(result['success'][-5:]):.2f}, held-out {result['held_out']['success']:.3f}, "
              f"{result['seconds_per_step']:.2f} s/step", flush=True)


def launch(groups: list[list], argv: list[str]) -> None:
    """Run each group of jobs in its own worker process (one thread each), and wait for all."""
    workers = []
    for group in groups:
        if group:
            command = [sys.executable, __file__, *argv, "--worker", json.dumps(group)]
            workers.append(subprocess.Popen(command))
    failed = [w.args for w in workers if w.wait() != 0]
    if failed:
        raise SystemExit(f"{len(failed)} worker(s) failed; finished runs are cached, run the command again")


def summarize(runs: dict, base: dict) -> dict:
    """Per arm: held-out success, area under the training curve, tool-call rates; paired comparisons."""
    arms = {}
    for arm, results in runs.items():
        arms[arm] = {
            "runs": len(results),
            "held_out": t_interval([r["held_out"]["success"] for r in results.values()])[:2],
            "auc": t_interval([statistics.fmean(r["success"]) for r in results.values()])[:2],
            "final_train": t_interval([statistics.fmean(r["success"][-5:]) for r in results.values()])[:2],
            "train_tool_calls": statistics.fmean(statistics.fmean(r["tool_calls"]) for r in results.values()),
            "held_out_greedy": t_interval([r["held_out"]["greedy"] for r in results.values()])[:2],
            "held_out_tool_calls": statistics.fmean(r["held_out"]["tool_calls"] for r in results.values()),
            "seconds_per_step": statistics.fmean(r["seconds_per_step"] for r in results.values()),
        }

    def paired(a, b, key):
        keys = sorted(set(runs.get(a, {})) & set(runs.get(b, {})))
        return [key(runs[a][k]) - key(runs[b][k]) for k in keys]

    comparisons = {}
    for a, b in (PRIMARY, *SECONDARY):
        held = paired(a, b, lambda r: r["held_out"]["success"])
        if len(held) >= 2:
            comparisons[f"{a} - {b}"] = {
                "pairs": len(held),
                "held_out": t_interval(held),
                "auc": t_interval(paired(a, b, lambda r: statistics.fmean(r["success"]))),
                "identical_runs": sum(d == 0 for d in paired(a, b, lambda r: sum(r["success"]))),
            } | crossed_statistics(runs, a, b)
    secondary = {f"{a} - {b}": comparisons[f"{a} - {b}"]["held_out"][2] for a, b in SECONDARY
                 if f"{a} - {b}" in comparisons and not math.isnan(comparisons[f"{a} - {b}"]["held_out"][2])}
    crossed = {name: comparisons[name]["crossed"]["p"] for name in secondary if comparisons[name].get("crossed")}
    return {"arms": arms, "comparisons": comparisons, "holm": holm(secondary), "holm_crossed": holm(crossed),
            "base": base}


def crossed_statistics(runs: dict, a: str, b: str) -> dict:
    """Held-out difference a - b by (starting model, seed): the t-test over the model means (`models`: mean, 95%
    half-width, p, n) and the crossed random-effects test (`crossed`, see `paired_stats.crossed_t`); None where the
    table has fewer than 2 models or seeds or a missing cell."""
    keys = sorted(set(runs.get(a, {})) & set(runs.get(b, {})))
    table = {tuple(int(v) for v in key.split("_")): runs[a][key]["held_out"]["success"] -
             runs[b][key]["held_out"]["success"] for key in keys}
    models = {m for m, _ in table}
    try:
        crossed = crossed_t(table)
    except ValueError:
        crossed = None
    return {"models": model_means_t(table) if len(models) >= 2 else None, "crossed": crossed}


def markdown(summary: dict, label: str, chain_steps: int = 2) -> str:
    base = ", ".join(f"model {m}: {v['success']:.3f} ({v['greedy']:.3f} greedy)" for m, v in summary["base"].items())
    design = DESIGN_4STEPS + DESIGN if chain_steps == 4 else DESIGN
    lines = [design, f"## {label}", "",
             f"Held-out success of the starting models: {base}. Intervals: 95% Student-t over the runs.", "",
             "| arm | runs | held-out success | held-out greedy | area under training curve | final train success "
             "| tool calls / step (train, held-out) | s / step |", "|---|---|---|---|---|---|---|---|"]
    for arm, row in summary["arms"].items():
        (h, hh), (g, gh), (a, ah), (f, fh) = row["held_out"], row["held_out_greedy"], row["auc"], row["final_train"]
        lines.append(f"| {arm} | {row['runs']} | {h:.3f} ± {hh:.3f} | {g:.3f} ± {gh:.3f} | {a:.3f} ± {ah:.3f} | "
                     f"{f:.3f} ± {fh:.3f} | {row['train_tool_calls']:.2f}, {row['held_out_tool_calls']:.2f} | "
                     f"{row['seconds_per_step']:.2f} |")
    return "\n".join(lines + ["", comparison_table(summary)])


def comparison_table(summary: dict) -> str:
    """The paired comparisons: over the pairs, over the starting-model means, and crossed (issue 29)."""
    lines = ["| paired by (model, seed) | pairs | held-out difference (95% interval over the pairs) | p (pairs) | "
              "interval over the model means | p (model means, n) | crossed interval | p (crossed, df) | "
              "Holm threshold (crossed p) | AUC difference (95% interval) | identical runs |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    holm_crossed = summary.get("holm_crossed", {})
    for name, row in summary["comparisons"].items():
        (d, h, p), (ad, ah, _) = row["held_out"], row["auc"]
        if name == " - ".join(PRIMARY):
            rule = "primary (0.05)"
        elif name in holm_crossed:
            _, threshold, rejected = holm_crossed[name]
            rule = f"{threshold:.4f} ({'rejected' if rejected else 'not rejected'})"
        else:
            rule = "-"
        models, crossed = row.get("models"), row.get("crossed")
        by_model = (f"± {models[1]:.3f} | {models[2]:.3g} ({models[3]})" if models else "- | -")
        by_crossing = (f"± {crossed['half']:.3f} | {crossed['p']:.3g} ({crossed['df']:.1f})" if crossed else "- | -")
        lines.append(f"| {name} | {row['pairs']} | {d:+.3f} ± {h:.3f} | {p:.3g} | {by_model} | {by_crossing} | {rule} "
                     f"| {ad:+.3f} ± {ah:.3f} | {row['identical_runs']} |")
    return "\n".join(lines)


def plot(runs: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for arm, results in runs.items():
        curves = [r["success"] for r in results.values()]
        length = min(len(c) for c in curves)
        mean = [statistics.fmean(c[i] for c in curves) for i in range(length)]
        axis.plot(range(1, length + 1), mean, label=f"{arm} ({len(curves)} runs)")
    axis.set(xlabel="training step", ylabel="training success (mean over runs)", title=title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 starting model x 2 seeds, 12 steps: about 2.5 minutes")
    parser.add_argument("--chain_steps", type=int, choices=(2, 4), default=None)
    parser.add_argument("--steps", type=int, default=None, help="RL steps per run")
    parser.add_argument("--models", type=int, nargs="+", default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS), choices=ARMS)
    parser.add_argument("--workers", type=int, default=2, help="trainings at a time (one thread each)")
    parser.add_argument("--name", default=None, help="results file name (default: credit / credit_quick)")
    parser.add_argument("--out", default=RESULTS)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = settings(args.quick)
    chain_steps = args.chain_steps or sizes["chain_steps"]
    steps, models, seeds = args.steps or sizes["steps"], args.models or sizes["models"], args.seeds or sizes["seeds"]
    name = args.name or ("credit_quick" if args.quick else "credit")
    if args.worker is not None:
        work([tuple(job) for job in json.loads(args.worker)], chain_steps, steps)
        return

    began = time.time()
    argv = [a for a in sys.argv[1:]]
    missing = [m for m in models if not os.path.exists(os.path.join(CACHE, f"chain_taught_{m}", "taught.txt"))]
    launch([[["teach", m, 0] for m in missing[i :: args.workers]] for i in range(args.workers)], argv)
    jobs = [(arm, m, s) for m in models for s in seeds for arm in args.arms]
    launch([jobs[i :: args.workers] for i in range(args.workers)], argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    base = {}
    for m in models:
        path = taught_model(m)
        torch.manual_seed(0)
        base[m] = held_out(AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path),
                           chain_steps)
    runs = {arm: {} for arm in args.arms}
    for arm, m, s in jobs:
        with open(run_path(chain_steps, arm, m, s, steps)) as file:
            runs[arm][f"{m}_{s}"] = json.load(file)
    label = (f"{'Quick run (--quick)' if args.quick else 'Full run'}: {chain_steps}-step chains, {len(models)} "
             f"starting model(s) x {len(seeds)} seeds, {steps} RL steps of 16 trajectories (2 prompts x 8), "
             f"estimator {estimator_name()}, {time.time() - began:.0f} s wall")
    summary = summarize(runs, base)
    table = markdown(summary, label, chain_steps)
    print("\n" + table)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"{name}.md"), "w") as file:
        file.write(table + "\n")
    with open(os.path.join(args.out, f"{name}.json"), "w") as file:
        json.dump({"label": label, "chain_steps": chain_steps, "steps": steps, "models": models, "seeds": seeds,
                   "summary": summary, "runs": runs, "wall_seconds": time.time() - began}, file, indent=1)
    plot(runs, os.path.join(args.out, f"{name}.png"), label.split(",")[0])
    print(f"\nWrote {args.out}/{name}.{{md,json,png}} in {time.time() - began:.0f} s")


if __name__ == "__main__":
    main()
