# Train a model with GTPO: multi-turn code-interpreter reasoning with turn-level advantages.
#
#   accelerate launch examples/train_gtpo.py                      # the packaged default model and synthetic task
#   accelerate launch --config_file accelerate_configs/zero3.yaml examples/train_gtpo.py \
#       --model_name_or_path Qwen/Qwen2.5-Math-1.5B-Instruct --dataset_name gsm8k --gamma 0.9 --max_turns 4 ...
#
# Arguments are TRL's (TrlParser over script arguments, GTPOConfig and ModelConfig), as in TRL's trl/scripts/grpo.py,
# plus GTPO's fields (see `python examples/train_gtpo.py --help`). On a machine with no GPU (or other accelerator) and
# no --bf16/--fp16/--use_cpu given, it trains on the CPU in fp32 and says so.

import json
import os
import sys

from trl import ModelConfig

from trl_gtpo import GTPOConfig
from trl_gtpo.cli.train import (  # noqa: F401  (make_parser: for benchmarks/profile_step.py)
    GTPOScriptArguments,
    build_trainer,
    evaluate_model,
    load_eval_splits,
    load_splits,
    make_parser,
    parse_command_line,
)
from trl_gtpo.reporting import change_verdict, pooled_report, save_success_curve, split_table, success_curve


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
            print(change_verdict(reports["before"]["held-out"], reports["after"]["held-out"]))

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


if __name__ == "__main__":
    main(*parse_command_line(sys.argv[1:]))
