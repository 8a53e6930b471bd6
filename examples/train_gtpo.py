# Train a model with GTPO: multi-turn code-interpreter reasoning with turn-level advantages.
#
#   accelerate launch examples/train_gtpo.py                      # the packaged default model and synthetic task
#   accelerate launch --config_file accelerate_configs/zero3.yaml examples/train_gtpo.py \
#       --model_name_or_path Qwen/Qwen2.5-Math-1.5B-Instruct --dataset_name gsm8k --gamma 0.9 --max_turns 4 ...
#
# Arguments are TRL's (TrlParser over script arguments, GTPOConfig and ModelConfig), as in TRL's trl/scripts/grpo.py,
# plus GTPO's fields (see `python examples/train_gtpo.py --help`).

import importlib
import os
import sys
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
    train_size: int | None = field(
        default=None, metadata={"help": "Train on this many examples of the train split (None: all of it)."}
    )
    eval_size: int = field(
        default=0,
        metadata={"help": "Evaluate pass@1 on this many held-out examples before and after training (0: skip)."},
    )
    eval_k: int = field(default=1, metadata={"help": "Samples per held-out problem (avg@k) in that evaluation."})
    synthetic_difficulty: int = field(default=1, metadata={"help": "Size of the numbers of the synthetic task."})
    system_prompt: str | None = field(
        default=None, metadata={"help": "System prompt of packaged data sets (None: trl_gtpo.prompts' default)."}
    )
    few_shot: bool = field(default=True, metadata={"help": "Put the worked tool-use example before each question."})


def load_reward_funcs(names: list[str]) -> list:
    from trl_gtpo.rewards import math_answer_reward

    registry = {"math_answer_reward": math_answer_reward}
    funcs = []
    for name in names:
        if name in registry:
            funcs.append(registry[name])
        elif "." in name:
            module, attribute = name.rsplit(".", 1)
            sys.path.insert(0, os.getcwd())
            funcs.append(getattr(importlib.import_module(module), attribute))
        else:
            raise ValueError(f"--reward_funcs {name!r} is unknown: use 'math_answer_reward' or a dotted import path.")
    return funcs


def load_splits(script_args: GTPOScriptArguments, training_args: GTPOConfig):
    from datasets import load_dataset

    from trl_gtpo.demo.data import is_known_dataset, load_math_dataset
    from trl_gtpo.demo.prompts import DEFAULT_SYSTEM_PROMPT

    name = script_args.dataset_name
    if is_known_dataset(name):
        options = dict(
            system_prompt=script_args.system_prompt or DEFAULT_SYSTEM_PROMPT,
            few_shot=script_args.few_shot,
            seed=training_args.seed,
            difficulty=script_args.synthetic_difficulty,
        )
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


def evaluate_model(model, tokenizer, dataset, training_args, script_args, label: str) -> dict:
    from trl_gtpo.evaluation import evaluate, save_report
    from trl_gtpo.rewards import math_answer_reward
    from trl_gtpo.interpreter.executor import make_executor

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


def main(script_args: GTPOScriptArguments, training_args: GTPOConfig, model_args: ModelConfig):
    import transformers
    from packaging.version import Version

    from trl_gtpo import GTPOTrainer
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
    trainer = GTPOTrainer(
        model=model_path,
        reward_funcs=load_reward_funcs(script_args.reward_funcs),
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=test_dataset if training_args.eval_strategy != "no" else None,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
    )

    reports = {}
    # The before/after evaluation generates on one process; with several (DDP, ZeRO-3, FSDP) the others would wait in
    # collectives, so there it is left to examples/evaluate.py on the saved model.
    evaluate_here = bool(script_args.eval_size) and test_dataset is not None
    if evaluate_here and trainer.accelerator.num_processes > 1:
        trainer.accelerator.print("Held-out evaluation skipped with several processes: run examples/evaluate.py.")
        evaluate_here = False
    if evaluate_here:
        model = trainer.accelerator.unwrap_model(trainer.model)
        reports["before"] = evaluate_model(model, trainer.processing_class, test_dataset, training_args, script_args, "before")

    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"Model saved to {training_args.output_dir}.")

    if evaluate_here:
        model = trainer.accelerator.unwrap_model(trainer.model)
        reports["after"] = evaluate_model(model, trainer.processing_class, test_dataset, training_args, script_args, "after")
        from trl_gtpo.evaluation import summary_table

        print(f"\nHeld-out evaluation ({script_args.dataset_name}/{script_args.dataset_test_split}, {len(test_dataset)} problems):")
        print(summary_table(reports))

    if Version(transformers.__version__) >= Version("5.18.0"):
        trainer.end()  # finish the trackers and destroy the process group (a ZeRO-3 run aborts at exit otherwise)
    else:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def make_parser():
    return TrlParser((GTPOScriptArguments, GTPOConfig, ModelConfig))


if __name__ == "__main__":
    script_args, training_args, model_args = make_parser().parse_args_and_config()
    main(script_args, training_args, model_args)
