"""The training command's parts (`examples/train_gtpo.py`, TRL's `trl/scripts/grpo.py` for GTPO): its arguments,
reward and data loading, the choice of trainer and the CPU fallback. In the package so that tests and benchmarks
import them rather than load a script by path; the script itself only runs them in order."""

import importlib
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config, get_quantization_config

from ..gtpo_config import GTPOConfig


@dataclass
class GTPOScriptArguments(ScriptArguments):
    """Script arguments of the GTPO training script (TRL's ScriptArguments plus data and evaluation settings)."""

    dataset_name: str | None = field(
        default="synthetic",
        metadata={
            "help": "Data set: a packaged one ('synthetic', 'gsm8k', 'math500', 'math', 'svamp', 'asdiv', 'mawps', "
            "'gsm_hard') or, as in TRL, a Hub id or local path for `datasets.load_dataset` (needs `prompt` and "
            "`answer` columns)."
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
            "'tool_success_turn_reward', 'verified_answer_turn_reward', 'intermediate_value_turn_reward', "
            "'call_after_final_value_turn_reward' and 'answer_after_intermediate_turn_reward' (the last three read "
            "an 'intermediates' column) or dotted import paths; "
            "weights in --turn_reward_weights."
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
            "'word_units_first', 'word_reworded', 'word_two_step' (trl_gtpo.demo.data.synthetic_problem)."
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
    from ..rewards import math_answer_reward
    from ..rewards.turn import (
        answer_after_intermediate_turn_reward,
        call_after_final_value_turn_reward,
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
            "call_after_final_value_turn_reward": call_after_final_value_turn_reward,
            "answer_after_intermediate_turn_reward": answer_after_intermediate_turn_reward,
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

    from ..demo.data import is_known_dataset, load_math_dataset

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
    from ..demo.data import load_math_dataset

    return {
        kind: load_math_dataset("synthetic", script_args.dataset_test_split, limit=script_args.eval_size,
                                **_synthetic_options(script_args, training_args, kinds=[kind]))
        for kind in script_args.eval_kinds
    }


def _synthetic_options(script_args: GTPOScriptArguments, training_args: GTPOConfig, **overrides) -> dict:
    from ..demo.prompts import DEFAULT_SYSTEM_PROMPT

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
    from ..evaluation import evaluate, save_report
    from ..interpreter.executor_factory import make_executor
    from ..rewards import math_answer_reward

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
        from ..gtpo_trainer import GTPOTrainer

        return GTPOTrainer(reward_funcs=reward_funcs, turn_reward_funcs=turn_reward_funcs, **common)
    from trl import GRPOTrainer

    from ..interpreter.rollout import CodeInterpreterRollout
    from ..rewards.summed import summed_format_penalty, summed_turn_reward

    weights = training_args.turn_reward_weights or [1.0] * len(turn_reward_funcs)
    reward_funcs += [summed_turn_reward(func, weight) for func, weight in zip(turn_reward_funcs, weights, strict=True)]
    if training_args.format_penalty:
        reward_funcs.append(summed_format_penalty(training_args.format_penalty))
    rollout = CodeInterpreterRollout(training_args)
    return GRPOTrainer(reward_funcs=reward_funcs, rollout_func=rollout, callbacks=[rollout.callback()], **common)


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


def parse_command_line(argv: Sequence[str]) -> tuple["GTPOScriptArguments", GTPOConfig, ModelConfig]:
    """The command line (and its --config file) as the script's three argument objects, with the CPU fallback
    added, and said, on a machine without accelerator."""
    argv = list(argv)
    fallback = cpu_fallback_args(argv, _config_file(argv), _has_accelerator())
    if fallback:
        logging.getLogger("train_gtpo").warning(
            f"No GPU or other accelerator and no --bf16/--fp16/--use_cpu given: training on the CPU in fp32 "
            f"({' '.join(fallback)})."
        )
    return make_parser().parse_args_and_config(argv + fallback)
