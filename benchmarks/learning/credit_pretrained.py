"""Turn-level credit on the packaged pretrained model (issue 29, item 1): the comparison planned in
benchmarks/results/credit_pretrained_design.md, its rules written here before any run.

    python benchmarks/learning/credit_pretrained.py --quick          # gtpo and grpo-sum, replicate 0, 2 steps: the step time
    python benchmarks/learning/credit_pretrained.py --sweep --step_seconds C   # the learning-rate sweep
    python benchmarks/learning/credit_pretrained.py --step_seconds C           # the comparison at the swept rates

The task is benchmarks/learning/word_chain.py (`--chain_steps`, 3 by default: the 4-step task's conversion had no
room on the base model). Every run starts from the packaged SmolLM2-135M-Instruct; replicate r trains on its own
prompt set `word_chain.problems(., seed=r)` with RL seed r, the same for every arm. Finished runs are cached in
benchmarks/learning/.cache/credit_pretrained/, so an interrupted run resumes. The comparison also measures the
starting model itself (`base`), as the trained ones are.
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
import word_chain
from paired_stats import holm, t_interval
from word_chain_base import starting_model

HERE = os.path.dirname(os.path.abspath(__file__))

ARMS = ("grpo-sum", "gtpo", "gtpo-g1", "gtpo-pooled", "gtpo-outcome")
PRIMARY = ("gtpo", "grpo-sum")
SECONDARY = (("gtpo-g1", "grpo-sum"), ("gtpo", "gtpo-g1"), ("gtpo-pooled", "gtpo"), ("grpo-sum", "gtpo-outcome"))
SWEEP_RATES = (5e-6, 2e-5)
SWEEP_SEED = 1000
VALIDATION_SEED = 999
REPLICATES = (0, 1, 2, 3)
QUICK_RATE = 1e-5
GENERATIONS = 8  # one prompt x 8 trajectories per step
TEMPERATURE = 0.3  # the 3-step entry check passed at 0.3, not at 0.5 (credit_pretrained_design.md)
MAX_STEPS, MIN_STEPS = 8, 5
BUDGET_STEP_SECONDS = 58.0  # 8 steps fit 2.5 hours on 2 workers when one step takes at most this
HELD_OUT, VALIDATION, GREEDY = 64, 32, 16
CACHE = os.path.join(HERE, ".cache", "credit_pretrained")
RESULTS = os.path.join(os.path.dirname(HERE), "results")


def rl_steps(step_seconds: float) -> int:
    """RL steps per run from the measured time of one step: 8 if it fits the 2.5-hour budget, fewer in proportion,
    and an error below 5 (then the comparison needs a GPU). Fixed before any run, the same for sweep and comparison."""
    steps = min(MAX_STEPS, math.floor(MAX_STEPS * BUDGET_STEP_SECONDS / step_seconds))
    if steps < MIN_STEPS:
        raise ValueError(f"{step_seconds:.0f} s per step leaves {steps} steps in the budget (at least {MIN_STEPS})")
    return steps


def choose_rate(measures: dict[float, float]) -> float:
    """The sweep's choice for one arm: the rate with the highest validation measure; a tie goes to the lower rate."""
    return max(sorted(measures), key=lambda rate: (measures[rate], -rate))


def prompt_set(seed: int, steps: int, chain_steps: int) -> list[dict]:
    """Replicate `seed`'s prompts: one per RL step, in order."""
    return word_chain.problems(steps, seed, "train", chain_steps)


def validation_set(chain_steps: int) -> list[dict]:
    """The sweep's selection chains: train-split problems that no run trains on (checked), never the test split."""
    rows = word_chain.problems(VALIDATION, VALIDATION_SEED, "train", chain_steps)
    trained = {r["question"] for seed in (SWEEP_SEED, *REPLICATES) for r in prompt_set(seed, MAX_STEPS, chain_steps)}
    if trained & {r["question"] for r in rows}:
        raise ValueError("a validation chain is in a training prompt set")
    return rows


def arm_config(arm: str) -> dict:
    """The GTPOConfig fields of a GTPO arm (format penalty and shaping off: nothing grpo-sum does not see)."""
    off = dict(format_penalty=0.0, shaping_alpha=0.0)
    configs = {"gtpo": off, "gtpo-g1": off | dict(gamma=1.0),
               "gtpo-pooled": off | dict(turn_advantage_estimator="pooled"), "gtpo-outcome": off | dict(gamma=1.0)}
    if arm not in configs:
        raise ValueError(f"{arm!r} is not a GTPO arm")
    return configs[arm]


def _prefix_once_grpo_trainer():
    """TRL's GRPOTrainer whose loss forward passes read the prompts' shared beginning once, as GTPOTrainer's do with
    `cache_prompt_prefix` (`trl_gtpo._trl_compat.scoring`): the same numbers, and the same step cost in every arm."""
    from trl import GRPOTrainer

    from trl_gtpo import _trl_compat

    class PrefixOnceGRPOTrainer(GRPOTrainer):
        def _get_per_token_logps_and_entropies(self, model, *args, **kwargs):
            original = super()._get_per_token_logps_and_entropies
            return _trl_compat.score_from_shared_prefix(self, original, True, model, *args, **kwargs)

    return PrefixOnceGRPOTrainer


def summed_step_reward(completions, turns, steps, intermediates, **kwargs) -> list[float]:
    """grpo-sum's second reward: the per-step rewards of `word_chain.step_turn_reward` summed over the trajectory."""
    values = word_chain.step_turn_reward(turns=turns, steps=steps, intermediates=intermediates)
    return [sum(v for v in row if v is not None) for row in values]


def train(arm: str, seed: int, learning_rate: float, steps: int, chain_steps: int, out_dir: str,
          model: str = "default") -> dict:
    """One run of `arm` from `model` on replicate `seed`'s prompts; returns the trained model, its tokenizer, the
    per-step training outcome and the seconds per step."""
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import GRPOConfig

    from trl_gtpo import GTPOConfig, GTPOTrainer
    from trl_gtpo.demo.models import resolve_model_name_or_path
    from trl_gtpo.interpreter.rollout import CodeInterpreterRollout

    torch.set_num_threads(1)
    rows = prompt_set(seed, steps, chain_steps)
    train_set = Dataset.from_list([{k: r[k] for k in ("prompt", "answer", "steps", "intermediates")} for r in rows])
    common = dict(
        # the 8 trajectories of a step are one generation batch, trained as 2 micro-batches of 4 (the main job's
        # memory: 6.8 GiB, against 9.6 GiB for 8 at once)
        output_dir=out_dir, per_device_train_batch_size=GENERATIONS // 2, gradient_accumulation_steps=2,
        num_generations=GENERATIONS, gradient_checkpointing=False,  # as the main job; the prefix cache needs it off
        max_completion_length=40 * chain_steps + 40, max_steps=steps, learning_rate=learning_rate,
        lr_scheduler_type="constant", temperature=TEMPERATURE, beta=0.0, loss_type="dapo", logging_steps=1,
        report_to="none", bf16=False, use_cpu=True, save_strategy="no", seed=seed, data_seed=seed, disable_tqdm=True,
        shuffle_dataset=False,
    )
    interpreter = dict(max_turns=chain_steps + 1, tool_pool_size=1, tool_timeout=5.0)
    path = resolve_model_name_or_path(model)
    if arm == "grpo-sum":
        rollout = CodeInterpreterRollout(GTPOConfig(**common, **interpreter))
        trainer = _prefix_once_grpo_trainer()(model=path, reward_funcs=[word_chain.boxed_answer_reward, summed_step_reward],
                              args=GRPOConfig(**common), train_dataset=train_set, rollout_func=rollout,
                              callbacks=[rollout.callback()])
    else:
        turn_rewards = None if arm == "gtpo-outcome" else word_chain.step_turn_reward
        trainer = GTPOTrainer(model=path, reward_funcs=word_chain.boxed_answer_reward, train_dataset=train_set,
                              args=GTPOConfig(**common, **interpreter, **arm_config(arm)),
                              turn_reward_funcs=turn_rewards)
    trainer.remove_callback(PrinterCallback)
    began = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - began
    key = "rewards/boxed_answer_reward/mean"
    logs = [row for row in trainer.state.log_history if key in row]
    return {"outcome": [row[key] for row in logs], "seconds_per_step": seconds / max(1, len(logs)),
            "model": trainer.model, "tokenizer": trainer.processing_class}


def measure(model, tokenizer, rows: list[dict], greedy: int) -> dict:
    """The held-out (or validation) measure: the mean teacher-forced probability of each step's right block (and per
    step), and greedy per-step accuracy and outcome on the first `greedy` chains (none if 0)."""
    from word_chain_base import sampled

    probabilities = word_chain.step_probabilities(model.eval(), tokenizer, rows)
    steps = len(rows[0]["steps"])
    per_step = [statistics.fmean(p[j] for p in probabilities) for j in range(steps)]
    result = {"measure": statistics.fmean(per_step), "per_step": per_step}
    if greedy:
        result["greedy"] = {k: v for k, v in sampled(model, tokenizer, rows[:greedy], 0.0, greedy).items()
                            if k in ("steps", "outcome", "calls")}
    return result


def run_path(kind: str, arm: str, seed: int, rate: float, steps: int, chain_steps: int) -> str:
    return os.path.join(CACHE, f"{chain_steps}steps_{steps}", kind, arm, f"{seed}_{rate:g}.json")


def work(jobs: list[list], steps: int, chain_steps: int) -> None:
    """One worker: train and measure each (kind, arm, seed, rate) of `jobs`, caching each result as JSON."""
    for kind, arm, seed, rate in jobs:
        path = run_path(kind, arm, seed, rate, steps, chain_steps)
        if os.path.exists(path):
            continue
        if kind == "base":  # the starting model, measured as the trained ones are: the table's first row
            result, (model, tokenizer) = {}, starting_model()
        else:
            result = train(arm, seed, rate, steps, chain_steps, os.path.join(CACHE, "runs", arm))
            model, tokenizer = result.pop("model"), result.pop("tokenizer")
        rows = validation_set(chain_steps) if kind == "sweep" else word_chain.test_problems(HELD_OUT, chain_steps)
        quick = kind == "quick"
        result["measure"] = measure(model, tokenizer, rows[:16] if quick else rows, 0 if kind == "sweep" else GREEDY)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as file:
            json.dump(result, file)
        pace = f", {result['seconds_per_step']:.0f} s/step" if "seconds_per_step" in result else ""
        print(f"{kind} {arm} seed {seed} lr {rate:g}: measure {result['measure']['measure']:.4f}{pace}", flush=True)


def launch(jobs: list[list], workers: int, argv: list[str]) -> None:
    """Run the jobs in `workers` processes (one thread each) and wait for all."""
    processes = [subprocess.Popen([sys.executable, __file__, *argv, "--worker", json.dumps(jobs[i::workers])])
                 for i in range(workers) if jobs[i::workers]]
    if any(process.wait() != 0 for process in processes):
        raise SystemExit("a worker failed; finished runs are cached, run the command again")


def compare(results: dict) -> dict:
    """Paired by replicate: the primary difference with its t interval and p, the secondary ones Holm-corrected."""
    comparisons = {}
    for a, b in (PRIMARY, *SECONDARY):
        seeds = sorted(set(results.get(a, {})) & set(results.get(b, {})))
        if len(seeds) >= 2:
            differences = [results[a][s]["measure"]["measure"] - results[b][s]["measure"]["measure"] for s in seeds]
            comparisons[f"{a} - {b}"] = {"replicates": len(seeds), "difference": t_interval(differences)}
    secondary = {f"{a} - {b}": comparisons[f"{a} - {b}"]["difference"][2] for a, b in SECONDARY
                 if f"{a} - {b}" in comparisons}
    return {"comparisons": comparisons, "holm": holm(secondary)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--step_seconds", type=float, default=None, help="measured by --quick; sets the RL steps")
    parser.add_argument("--chain_steps", type=int, choices=(3, 4), default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    steps = 2 if args.quick else rl_steps(args.step_seconds) if args.step_seconds else None
    if steps is None:
        raise SystemExit("--step_seconds (from --quick) is required: it fixes the RL steps before any run")
    if args.worker is not None:
        work(json.loads(args.worker), steps, args.chain_steps)
        return
    argv = sys.argv[1:]
    rates_path = os.path.join(RESULTS, f"credit_pretrained_rates_{args.chain_steps}steps.json")
    if args.quick:
        jobs = [["quick", arm, 0, QUICK_RATE] for arm in PRIMARY]
    elif args.sweep:
        jobs = [["sweep", arm, SWEEP_SEED, rate] for arm in ARMS for rate in SWEEP_RATES]
    else:
        with open(rates_path) as file:
            rates = json.load(file)["rates"]
        jobs = [["compare", arm, seed, rates[arm]] for seed in REPLICATES for arm in ARMS] + [["base", "base", 0, 0.0]]
    launch(jobs, args.workers, argv)
    results = {}
    for kind, arm, seed, rate in jobs:
        with open(run_path(kind, arm, seed, rate, steps, args.chain_steps)) as file:
            results.setdefault(arm, {})[seed if kind != "sweep" else rate] = json.load(file)
    if args.sweep:
        rates = {arm: choose_rate({rate: r["measure"]["measure"] for rate, r in runs.items()})
                 for arm, runs in results.items()}
        report = {"steps": steps, "rates": rates, "sweep": results}
        path = rates_path
    else:
        base = results.pop("base", {}).get(0)
        report = ({"steps": steps, "runs": results} | ({} if args.quick else compare(results))
                  | ({"base": base} if base else {}))
        path = os.path.join(RESULTS, f"credit_pretrained{'_quick' if args.quick else ''}_{args.chain_steps}steps.json")
    os.makedirs(RESULTS, exist_ok=True)
    with open(path, "w") as file:
        json.dump(report, file, indent=1)
    print(json.dumps({k: v for k, v in report.items() if k not in ("runs", "sweep")}, indent=1))
    print(f"Wrote {path}")


if __name__ == "__main__":
    main()
