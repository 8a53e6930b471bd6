# Train a model with GTPO: multi-turn code-interpreter reasoning with turn-level advantages.
#
#   accelerate launch examples/train_gtpo.py                      # the packaged default model and synthetic task
#   accelerate launch --config_file accelerate_configs/zero3.yaml examples/train_gtpo.py \
#       --model_name_or_path Qwen/Qwen2.5-Math-1.5B-Instruct --dataset_name gsm8k --gamma 0.9 --max_turns 4 ...
#
# Arguments are TRL's (TrlParser over script arguments, GTPOConfig and ModelConfig), as in TRL's trl/scripts/grpo.py,
# plus GTPO's fields (see `python examples/train_gtpo.py --help`). On a machine with no GPU (or other accelerator) and
# no --bf16/--fp16/--use_cpu given, it trains on the CPU in fp32 and says so.

import importlib
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config, get_quantization_config

from trl_gtpo import GTPOConfig


@dataclass
class GTPOScriptArguments(ScriptArguments):
    """Script arguments of the GTPO training script (TRL's ScriptArguments plus data and evaluation settings)."""

    dataset_name: str | None = field(
        default="synthetic",
        metadata={
            "help": "Data set: a packaged one ('synthetic', 'gsm8k', 'math500', 'math', 'svamp', 'asdiv', 'mawps', 'gsm_hard') "
            "or, as in TRL, a Hub id or local path for `datasets.load_dataset` (needs `prompt` and `answer` columns)."
        },
    )
    reward_funcs: list[str] = field(
        default_factory=lambda: ["math_answer_reward"],
        metadata={"help": "Reward functions: 'math_answer_reward' or dotted import paths ('my_lib.rewards.f')."},
    )
    turn_reward_funcs: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Turn reward functions (one value per model turn, see trl_gtpo.rewards.turn): "
            "'tool_success_turn_reward', 'verified_answer_turn_reward', 'intermediate_value_turn_reward' (reads an "
            "'intermediates' column) or dotted import paths; weights in "
            "--turn_reward_weights."
        },
    )
    train_size: int | None = field(
        default=None, metadata={"help": "Train on this many examples of the train split (None: all of it)."}
    )
    eval_size: int = field(
        default=0,
        metadata={"help": "Evaluate pass@1 on this many held-out examples before and after training (0: skip)."},
    )
    eval_k: int = field(default=1, metadata={"help": "Samples per held-out problem (avg@k) in that evaluation."})
    synthetic_difficulty: int = field(default=1, metadata={"help": "Size of the numbers of the synthetic task."})
    synthetic_kinds: list[str] = field(
        default_factory=lambda: ["product", "sum", "modpow"],
        metadata={
            "help": "Kinds of problem of the synthetic task, taking turns: 'product', 'sum', 'modpow', 'word', "
            "'word_reworded', 'word_two_step' (trl_gtpo.demo.data.synthetic_problem)."
        },
    )
    synthetic_seed: int | None = field(
        default=None,
        metadata={
            "help": "Seed of the synthetic problems (None: --seed). Fix it to compare runs of several --seed values "
            "on the same problems."
        },
    )
    eval_kinds: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Synthetic task only: evaluate each of these kinds as its own held-out split of --eval_size "
            "problems (e.g. 'word word_reworded word_two_step': the trained wordings, unseen wordings, two steps); "
            "empty: one split of --synthetic_kinds."
        },
    )
    eval_before: bool = field(
        default=True, metadata={"help": "Evaluate before training too (the before/after table needs it)."}
    )
    trainer: str = field(
        default="gtpo",
        metadata={
            "help": "'gtpo': GTPOTrainer. 'grpo': TRL's GRPOTrainer with the same code interpreter "
            "(CodeInterpreterRollout as rollout_func), the same outcome rewards, each --turn_reward_funcs summed "
            "over the trajectory (with its --turn_reward_weights) and GTPO's --format_penalty summed likewise: the "
            "same information, one advantage per trajectory. GTPO's shaping has no GRPO counterpart."
        },
    )
    system_prompt: str | None = field(
        default=None, metadata={"help": "System prompt of packaged data sets (None: trl_gtpo.demo.prompts' default)."}
    )
    few_shot: bool = field(default=True, metadata={"help": "Put the worked tool-use examples before each question."})
    few_shot_examples: str = field(
        default="arithmetic",
        metadata={
            "help": "Set of worked examples (trl_gtpo.demo.prompts.EXAMPLE_SETS): 'arithmetic', 'word' or "
            "'word_steps' (a one-step and a two-step word problem)."
        },
    )
    num_few_shot: int | None = field(
        default=None, metadata={"help": "How many of the worked examples to put before each question (None: all)."}
    )


def load_reward_funcs(names: list[str], option: str = "--reward_funcs") -> list:
    """Reward functions (or turn reward functions) by built-in name or dotted import path, as TRL's grpo.py does."""
    from trl_gtpo.rewards import math_answer_reward
    from trl_gtpo.rewards.turn import (
        intermediate_value_turn_reward,
        tool_success_turn_reward,
        verified_answer_turn_reward,
    )

    registry = {
        "--reward_funcs": {"math_answer_reward": math_answer_reward},
        "--turn_reward_funcs": {
            "tool_success_turn_reward": tool_success_turn_reward,
            "verified_answer_turn_reward": verified_answer_turn_reward,
            "intermediate_value_turn_reward": intermediate_value_turn_reward,
        },
    }[option]
    funcs = []
    for name in names:
        if name in registry:
            funcs.append(registry[name])
        elif "." in name:
            module, attribute = name.rsplit(".", 1)
            sys.path.insert(0, os.getcwd())
            funcs.append(getattr(importlib.import_module(module), attribute))
        else:
            known = ", ".join(repr(known) for known in registry)
            raise ValueError(f"{option} {name!r} is unknown: use {known} or a dotted import path.")
    return funcs


def load_splits(script_args: GTPOScriptArguments, training_args: GTPOConfig):
    from datasets import load_dataset

    from trl_gtpo.demo.data import is_known_dataset, load_math_dataset

    name = script_args.dataset_name
    if is_known_dataset(name):
        options = _synthetic_options(script_args, training_args)
        train = load_math_dataset(name, script_args.dataset_train_split, limit=script_args.train_size, **options)
        test = None
        if script_args.eval_size or training_args.eval_strategy != "no":
            size = script_args.eval_size or None
            test = load_math_dataset(name, script_args.dataset_test_split, limit=size, **options)
        return train, test
    dataset = load_dataset(name, name=script_args.dataset_config)
    train = dataset[script_args.dataset_train_split]
    if script_args.train_size:
        train = train.select(range(min(script_args.train_size, len(train))))
    test = None
    if script_args.dataset_test_split in dataset:
        test = dataset[script_args.dataset_test_split]
        if script_args.eval_size:
            test = test.select(range(min(script_args.eval_size, len(test))))
    return train, test


def load_eval_splits(script_args: GTPOScriptArguments, training_args: GTPOConfig, test) -> dict:
    """The held-out splits to evaluate, by name: one per --eval_kinds kind of the synthetic task (--eval_size
    problems each, from its test split), else {"held-out": the test split}; {} without --eval_size."""
    if not script_args.eval_size:
        return {}
    if not script_args.eval_kinds:
        return {} if test is None else {"held-out": test}
    if script_args.dataset_name != "synthetic":
        raise ValueError(
            f"--eval_kinds {' '.join(script_args.eval_kinds)} names kinds of the synthetic task, but --dataset_name "
            f"is {script_args.dataset_name!r}: drop --eval_kinds or use --dataset_name synthetic."
        )
    from trl_gtpo.demo.data import load_math_dataset

    return {
        kind: load_math_dataset("synthetic", script_args.dataset_test_split, limit=script_args.eval_size,
                                **_synthetic_options(script_args, training_args, kinds=[kind]))
        for kind in script_args.eval_kinds
    }


def _synthetic_options(script_args: GTPOScriptArguments, training_args: GTPOConfig, **overrides) -> dict:
    from trl_gtpo.demo.prompts import DEFAULT_SYSTEM_PROMPT

    seed = training_args.seed if script_args.synthetic_seed is None else script_args.synthetic_seed
    return dict(
        system_prompt=script_args.system_prompt or DEFAULT_SYSTEM_PROMPT,
        few_shot=script_args.few_shot,
        seed=seed,
        difficulty=script_args.synthetic_difficulty,
        kinds=script_args.synthetic_kinds,
        num_examples=script_args.num_few_shot,
        examples=script_args.few_shot_examples,
    ) | overrides


def evaluate_model(model, tokenizer, dataset, training_args, script_args, label: str) -> dict:
    from trl_gtpo.evaluation import evaluate, save_report
    from trl_gtpo.rewards import math_answer_reward
    from trl_gtpo.interpreter.executor_factory import make_executor

    executor = make_executor(training_args)
    try:
        report = evaluate(
            model,
            tokenizer,
            dataset,
            executor,
            math_answer_reward,
            k=script_args.eval_k,
            max_turns=training_args.max_turns,
            max_completion_length=training_args.max_completion_length,
            stop_marker=training_args.turn_stop_marker,
            temperature=0.0 if script_args.eval_k == 1 else 0.7,
        )
    finally:
        executor.close()
    os.makedirs(training_args.output_dir, exist_ok=True)
    save_report(report, os.path.join(training_args.output_dir, f"eval_{label}.json"))
    return report


def before_after_table(before: dict, after: dict) -> str:
    """The held-out evaluation before and after training, problem by problem paired: pass@1 with its 95% Wilson
    interval, the change, how many problems training fixed and broke, tool calls and tool errors, and whether the
    change is clear of the base model's interval (the after pass@1 outside the before interval)."""
    n = before["num_problems"]
    first = lambda report: [problem["correct"][0] for problem in report["problems"]]  # noqa: E731
    fixed = sum(not b and a for b, a in zip(first(before), first(after), strict=True))
    broken = sum(b and not a for b, a in zip(first(before), first(after), strict=True))

    def interval(report):
        return f"{report['pass@1']:.3f} [{report['pass@1_low']:.3f}, {report['pass@1_high']:.3f}]"

    rows = [
        ("", "before", "after"),
        ("pass@1 [95% interval]", interval(before), interval(after)),
        ("problems solved", f"{round(before['pass@1'] * n)}/{n}", f"{round(after['pass@1'] * n)}/{n}"),
        ("tool calls per problem", f"{before['tool_calls_per_problem']:.2f}", f"{after['tool_calls_per_problem']:.2f}"),
        ("tool error rate", f"{before['tool_error_rate']:.3f}", f"{after['tool_error_rate']:.3f}"),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    change = after["pass@1"] - before["pass@1"]
    outside = not before["pass@1_low"] <= after["pass@1"] <= before["pass@1_high"]
    lines.append(
        f"change {change:+.3f} ({fixed} problems fixed, {broken} broken): after is "
        + ("outside" if outside else "inside")
        + " the before 95% interval"
    )
    return "\n".join(lines)


def pooled_report(reports: dict[str, dict]) -> dict:
    """The splits' reports as one (their problems together): pass@1, its interval, tool calls over all of them."""
    from trl_gtpo.evaluation import benchmark_fields

    problems = [problem for report in reports.values() for problem in report["problems"]]
    report = {"num_problems": len(problems), "pass@1": sum(p["correct"][0] for p in problems) / max(1, len(problems)),
              "problems": problems}
    return {**report, **benchmark_fields(report)}


def split_table(before: dict[str, dict] | None, after: dict[str, dict]) -> str:
    """One row per held-out split (and one for all of them when there are several): pass@1 with its 95% Wilson
    interval before and after training, the change, problems fixed and broken (paired), tool calls per problem.
    `before` None (not evaluated): those columns read "-"."""
    rows = [("split", "n", "before [95% interval]", "after [95% interval]", "change", "fixed/broken", "tool calls")]
    names = list(after) + (["all"] if len(after) > 1 else [])
    for name in names:
        a = pooled_report(after) if name == "all" else after[name]
        b = None if before is None else pooled_report(before) if name == "all" else before[name]
        cells = [name, str(a["num_problems"])]
        interval = lambda r: f"{r['pass@1']:.3f} [{r['pass@1_low']:.3f}, {r['pass@1_high']:.3f}]"  # noqa: E731
        if b is None:
            cells += ["-", interval(a), "-", "-", f"- -> {a['tool_calls_per_problem']:.2f}"]
        else:
            firsts = lambda r: [p["correct"][0] for p in r["problems"]]  # noqa: E731
            fixed = sum(not x and y for x, y in zip(firsts(b), firsts(a), strict=True))
            broken = sum(x and not y for x, y in zip(firsts(b), firsts(a), strict=True))
            cells += [interval(b), interval(a), f"{a['pass@1'] - b['pass@1']:+.3f}", f"{fixed}/{broken}",
                      f"{b['tool_calls_per_problem']:.2f} -> {a['tool_calls_per_problem']:.2f}"]
        rows.append(tuple(cells))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def success_curve(log_history: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of `key` in a Trainer's `state.log_history`, one point per logged training step."""
    points = [(entry["step"], entry[key]) for entry in log_history if key in entry and "step" in entry]
    return [step for step, _ in points], [value for _, value in points]


def save_success_curve(
    log_history: list[dict], reward_name: str, path: str, reports: dict | None = None, splits: dict | None = None
) -> str | None:
    """A PNG of the training success rate per step (the mean of the reward `reward_name` over the step's
    trajectories, sampled at the training temperature) with the held-out pass@1 before and after training and their
    95% intervals (`reports`: label -> report); with `splits` (label -> {split: report}), a second panel shows each
    split's pass@1 before and after with its interval. None (nothing written) when no step was logged or matplotlib
    is missing."""
    steps, values = success_curve(log_history, f"rewards/{reward_name}/mean")
    if not steps:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    if splits:
        figure, (axis, bars) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [3, 2]})
        _split_bars(bars, splits)
    else:
        figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(steps, values, marker="o", label=f"training success (mean {reward_name} per step)")
    for (label, report), color in zip((reports or {}).items(), ("tab:gray", "tab:green")):
        axis.axhline(report["pass@1"], color=color, linestyle="--", label=f"held-out pass@1 {label}")
        axis.axhspan(report["pass@1_low"], report["pass@1_high"], color=color, alpha=0.15)
    from matplotlib.ticker import MaxNLocator

    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel("training step")
    axis.set_ylabel("success rate")
    axis.set_ylim(-0.02, 1.02)
    axis.grid(alpha=0.3)
    axis.legend(loc="best", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _split_bars(axis, splits: dict[str, dict[str, dict]]) -> None:
    """Held-out pass@1 per split, one bar per label (before / after), 95% Wilson intervals as error bars."""
    names = list(next(iter(splits.values())))
    width = 0.8 / len(splits)
    for k, ((label, reports), color) in enumerate(zip(splits.items(), ("tab:gray", "tab:green", "tab:blue"))):
        xs = [i + (k - (len(splits) - 1) / 2) * width for i in range(len(names))]
        values = [reports[name]["pass@1"] for name in names]
        errors = [[v - reports[n]["pass@1_low"] for v, n in zip(values, names)],
                  [reports[n]["pass@1_high"] - v for v, n in zip(values, names)]]
        axis.bar(xs, values, width, yerr=errors, capsize=3, color=color, label=label)
    axis.set_xticks(range(len(names)), names, fontsize=8)
    axis.set_ylim(0, 1.02)
    axis.set_ylabel("held-out pass@1 (greedy)")
    axis.grid(alpha=0.3, axis="y")
    axis.legend(fontsize=8)


def build_trainer(script_args: GTPOScriptArguments, training_args: GTPOConfig, model_args: ModelConfig, model_path,
                  train_dataset, eval_dataset):
    """GTPOTrainer, or with --trainer grpo TRL's GRPOTrainer on the same code interpreter and the same information
    (outcome rewards, each turn reward function and the format penalty summed over the trajectory)."""
    if script_args.trainer not in ("gtpo", "grpo"):
        raise ValueError(f"--trainer {script_args.trainer!r} is unknown: use 'gtpo' (GTPOTrainer) or 'grpo' "
                         "(TRL's GRPOTrainer on the same code interpreter).")
    reward_funcs = load_reward_funcs(script_args.reward_funcs)
    turn_reward_funcs = load_reward_funcs(script_args.turn_reward_funcs, "--turn_reward_funcs")
    common = dict(
        model=model_path,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset if training_args.eval_strategy != "no" else None,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
    )
    if script_args.trainer == "gtpo":
        from trl_gtpo import GTPOTrainer

        return GTPOTrainer(reward_funcs=reward_funcs, turn_reward_funcs=turn_reward_funcs, **common)
    if script_args.trainer != "grpo":
        raise ValueError(f"--trainer {script_args.trainer!r} is unknown: use 'gtpo' (GTPOTrainer) or 'grpo' "
                         "(TRL's GRPOTrainer on the same code interpreter).")
    from trl import GRPOTrainer

    from trl_gtpo.interpreter.rollout import CodeInterpreterRollout
    from trl_gtpo.rewards.summed import summed_format_penalty, summed_turn_reward

    weights = training_args.turn_reward_weights or [1.0] * len(turn_reward_funcs)
    reward_funcs += [summed_turn_reward(func, weight) for func, weight in zip(turn_reward_funcs, weights, strict=True)]
    if training_args.format_penalty:
        reward_funcs.append(summed_format_penalty(training_args.format_penalty))
    rollout = CodeInterpreterRollout(training_args)
    return GRPOTrainer(reward_funcs=reward_funcs, rollout_func=rollout, callbacks=[rollout.callback()], **common)


def main(script_args: GTPOScriptArguments, training_args: GTPOConfig, model_args: ModelConfig):
    import transformers
    from packaging.version import Version

    from trl_gtpo.demo.models import resolve_model_name_or_path

    model_path = resolve_model_name_or_path(model_args.model_name_or_path)
    training_args.model_init_kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": training_args.trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
        **(training_args.model_init_kwargs or {}),
    }
    train_dataset, test_dataset = load_splits(script_args, training_args)
    eval_splits = load_eval_splits(script_args, training_args, test_dataset)
    trainer = build_trainer(script_args, training_args, model_args, model_path, train_dataset, test_dataset)

    reports: dict[str, dict[str, dict]] = {}  # "before" / "after" -> split -> report
    # The before/after evaluation generates on one process; with several (DDP, ZeRO-3, FSDP) the others would wait in
    # collectives, so there it is left to examples/evaluate.py on the saved model.
    evaluate_here = bool(eval_splits)
    if evaluate_here and trainer.accelerator.num_processes > 1:
        trainer.accelerator.print("Held-out evaluation skipped with several processes: run examples/evaluate.py.")
        evaluate_here = False

    def evaluate_splits(label: str) -> dict[str, dict]:
        model = trainer.accelerator.unwrap_model(trainer.model)
        return {
            name: evaluate_model(model, trainer.processing_class, dataset, training_args, script_args,
                                 label if name == "held-out" else f"{label}_{name}")
            for name, dataset in eval_splits.items()
        }

    if evaluate_here and script_args.eval_before:
        reports["before"] = evaluate_splits("before")

    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"Model saved to {training_args.output_dir}.")

    if evaluate_here:
        reports["after"] = evaluate_splits("after")
        sizes = ", ".join(f"{name} {len(dataset)}" for name, dataset in eval_splits.items())
        print(f"\nHeld-out pass@1 before / after training ({script_args.trainer}, greedy; problems: {sizes}):")
        print(split_table(reports.get("before"), reports["after"]))
        if list(eval_splits) == ["held-out"] and "before" in reports:
            print(before_after_table(reports["before"]["held-out"], reports["after"]["held-out"]))

    if trainer.accelerator.is_main_process:
        with open(os.path.join(training_args.output_dir, "log_history.json"), "w") as file:
            json.dump(trainer.state.log_history, file, indent=1)  # the logged metrics per step, for later analysis
    if trainer.accelerator.is_main_process and script_args.reward_funcs:
        reward_name = trainer.reward_func_names[0]
        overall = {label: pooled_report(by_split) for label, by_split in reports.items()}
        plot = save_success_curve(
            trainer.state.log_history, reward_name, os.path.join(training_args.output_dir, "training_success.png"),
            overall, splits=reports if len(eval_splits) > 1 else None,
        )
        if plot:
            steps, values = success_curve(trainer.state.log_history, f"rewards/{reward_name}/mean")
            print(f"Training success per step ({reward_name}): {' '.join(f'{v:.2f}' for v in values)}")
            print(f"Training success curve saved to {plot}.")

    if Version(transformers.__version__) >= Version("5.18.0"):
        trainer.end()  # finish the trackers and destroy the process group (a ZeRO-3 run aborts at exit otherwise)
    else:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def make_parser():
    return TrlParser((GTPOScriptArguments, GTPOConfig, ModelConfig))


PRECISION_FIELDS = ("bf16", "fp16", "use_cpu")


def cpu_fallback_args(argv: Sequence[str], config: Mapping | None, has_accelerator: bool) -> list[str]:
    """Arguments that make a machine without accelerator train on the CPU in fp32, or [] where they are not needed.

    TRL's config defaults to bf16, which TrainingArguments refuses without a GPU ("Your setup doesn't support
    bf16/gpu"), so the example's own default command would fail on a laptop. Any of --bf16, --fp16 or --use_cpu given
    on the command line (`argv`) or in the --config file (its `config` mapping) is the user's choice and wins.
    """
    if has_accelerator:
        return []
    given = {arg[2:].split("=", 1)[0] for arg in argv if arg.startswith("--")} | set(config or {})
    if given & set(PRECISION_FIELDS):
        return []
    return ["--use_cpu", "true", "--bf16", "false"]


def _config_file(argv: Sequence[str]) -> Mapping | None:
    """The --config YAML file's mapping, read as TrlParser reads it (`--config PATH`); None without one."""
    if "--config" not in argv or argv.index("--config") + 1 >= len(argv):
        return None
    import yaml

    with open(argv[argv.index("--config") + 1]) as file:
        config = yaml.safe_load(file)
    return config if isinstance(config, Mapping) else None


def _has_accelerator() -> bool:
    import torch
    from transformers.utils import is_torch_xla_available

    return torch.accelerator.is_available() or is_torch_xla_available()


if __name__ == "__main__":
    argv = sys.argv[1:]
    fallback = cpu_fallback_args(argv, _config_file(argv), _has_accelerator())
    if fallback:
        logging.getLogger("train_gtpo").warning(
            f"No GPU or other accelerator and no --bf16/--fp16/--use_cpu given: training on the CPU in fp32 "
            f"({' '.join(fallback)})."
        )
    script_args, training_args, model_args = make_parser().parse_args_and_config(argv + fallback)
    main(script_args, training_args, model_args)
