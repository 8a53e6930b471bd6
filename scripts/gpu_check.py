"""A few GTPO steps and as many GRPO steps on one GPU: step time, peak GPU memory and their ratio, in one run.

Both trainers run the same code-interpreter loop (GRPO is TRL's GRPOTrainer with trl_gtpo's CodeInterpreterRollout
as its `rollout_func`) on the same model, data, seed and settings, in bf16 with the transformers backend; GRPO runs
first, then GTPO, with the allocator's peak reset in between. The first step of each is a warm-up and is reported
apart. Offline: the packaged SmolLM2-135M-Instruct if its package is installed (converted once, ~1 min), else the
tiny model built in code. `--dry-run`: the tiny model, one timed step each, on the CPU in float32 (checks the script).

    python scripts/gpu_check.py                 # on the GPU machine (or: bash scripts/gpu_check.sh)
    python scripts/gpu_check.py --dry-run       # anywhere
"""

import argparse
import gc
import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from trl_gtpo import GTPOConfig, GTPOTrainer  # noqa: E402
from trl_gtpo.demo.data import synthetic_dataset  # noqa: E402
from trl_gtpo.interpreter.rollout import CodeInterpreterRollout  # noqa: E402
from trl_gtpo.rewards import math_answer_reward  # noqa: E402


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times, self._start = [], None

    def on_step_begin(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._start)


def model_path(choice: str) -> str:
    """The packaged model when asked for and installed, else the tiny model built in code (saved to a temp dir)."""
    if choice == "default":
        from trl_gtpo.demo.models import DefaultModelNotInstalledError, default_model_path

        try:
            return default_model_path()
        except (DefaultModelNotInstalledError, ImportError) as error:
            print(f"packaged model unavailable ({error.__class__.__name__}: {error}); using the tiny model instead")
    elif choice != "tiny":
        return choice
    from trl_gtpo.testing import save_tiny_model

    return save_tiny_model(tempfile.mkdtemp(prefix="gpu_check_tiny_"), hidden_size=64)


def run(kind: str, path: str, args, on_gpu: bool) -> dict:
    common = dict(
        output_dir=tempfile.mkdtemp(prefix=f"gpu_check_{kind}_"),
        per_device_train_batch_size=args.batch,
        num_generations=args.num_generations,
        max_completion_length=args.max_completion_length,
        max_steps=args.steps,
        learning_rate=1e-6,
        beta=0.0,
        loss_type="dapo",
        temperature=1.0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        bf16=on_gpu,
        use_cpu=not on_gpu,
        gradient_checkpointing=False,
    )
    gtpo_args = GTPOConfig(**common, max_turns=args.max_turns, tool_timeout=10.0)
    dataset = synthetic_dataset(args.batch * args.steps, seed=0)
    timer = StepTimer()
    if on_gpu:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    if kind == "gtpo":
        trainer = GTPOTrainer(model=path, reward_funcs=math_answer_reward, args=gtpo_args, train_dataset=dataset,
                              callbacks=[timer])
    else:
        rollout = CodeInterpreterRollout(gtpo_args)  # the same loop, sandbox and settings
        trainer = GRPOTrainer(model=path, reward_funcs=math_answer_reward, args=GRPOConfig(**common),
                              train_dataset=dataset, rollout_func=rollout, callbacks=[timer, rollout.callback()])
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    logs = [entry for entry in trainer.state.log_history if "turns/mean" in entry]
    result = {
        "steps": len(timer.times),
        "warmup_step_s": timer.times[0],
        "median_step_s": statistics.median(timer.times[1:] or timer.times),
        "step_s": timer.times,
        "train_wall_s": wall,
        "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if on_gpu else None,
        "turns_mean": statistics.mean(entry["turns/mean"] for entry in logs) if logs else None,
        "tool_calls_per_trajectory": statistics.mean(e["tools/calls_per_trajectory"] for e in logs) if logs else None,
        "reward_mean": statistics.mean(entry["reward"] for entry in logs) if logs else None,
    }
    del trainer
    gc.collect()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="Tiny model, 2 steps each, CPU float32.")
    parser.add_argument("--model", default="default", help="'default' (packaged SmolLM2-135M), 'tiny', or a path.")
    parser.add_argument("--steps", type=int, default=4, help="Steps per trainer; the first is a warm-up.")
    parser.add_argument("--batch", type=int, default=16, help="Trajectories per step.")
    parser.add_argument("--num_generations", type=int, default=4)
    parser.add_argument("--max_completion_length", type=int, default=256)
    parser.add_argument("--max_turns", type=int, default=3)
    parser.add_argument("--output", default=None, help="Also write the results as JSON here.")
    args = parser.parse_args()
    if args.dry_run:
        args.model, args.steps, args.batch, args.max_completion_length = "tiny", 2, 4, 32
    on_gpu = torch.cuda.is_available() and not args.dry_run
    if not on_gpu and not args.dry_run:
        raise SystemExit(
            "No CUDA device visible to torch: run on a GPU machine, or pass --dry-run to check the script."
        )

    device = torch.cuda.get_device_name(0) if on_gpu else "cpu (dry run)"
    print(f"device: {device} | torch {torch.__version__} | cuda {torch.version.cuda}")
    start = time.perf_counter()
    path = model_path(args.model)
    print(f"model: {path} (ready in {time.perf_counter() - start:.1f} s)")
    results = {kind: run(kind, path, args, on_gpu) for kind in ("grpo", "gtpo")}

    print(f"\n{args.steps} steps each ({args.batch} trajectories, up to {args.max_turns} turns and "
          f"{args.max_completion_length} tokens), {'bf16' if on_gpu else 'float32'}, transformers generation")
    print(f"{'':<6}{'warm-up s':>11}{'median step s':>15}{'peak GPU GiB':>14}"
          f"{'turns':>8}{'tool calls':>12}{'reward':>8}")
    for kind, r in results.items():
        memory = f"{r['peak_gpu_memory_gib']:.2f}" if r["peak_gpu_memory_gib"] is not None else "-"
        print(f"{kind:<6}{r['warmup_step_s']:>11.2f}{r['median_step_s']:>15.2f}{memory:>14}"
              f"{r['turns_mean'] or 0:>8.2f}{r['tool_calls_per_trajectory'] or 0:>12.2f}{r['reward_mean'] or 0:>8.3f}")
    ratio = results["gtpo"]["median_step_s"] / results["grpo"]["median_step_s"]
    print(f"ratio GTPO / GRPO, median step time: {ratio:.3f}")
    if on_gpu:
        print(f"ratio GTPO / GRPO, peak GPU memory: "
              f"{results['gtpo']['peak_gpu_memory_gib'] / results['grpo']['peak_gpu_memory_gib']:.3f}")
    print("(the trajectories differ between the two once the weights do: compare turns and tool calls)")
    print(f"total {time.perf_counter() - start:.0f} s")
    if args.output:
        with open(args.output, "w") as file:
            json.dump({"device": device, "args": vars(args), "results": results}, file, indent=1)


if __name__ == "__main__":
    main()
