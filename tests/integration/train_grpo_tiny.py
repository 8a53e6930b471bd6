"""Train a tiny random Llama for a few steps with TRL's GRPOTrainer (or GTPOTrainer), and record what ran.

Meant to be launched by `accelerate launch` (see docs/LAUNCH.md), e.g. on CPU:

    accelerate launch --config_file accelerate_configs/multi_process.yaml \
        tests/integration/train_grpo_tiny.py --output-dir /tmp/run-ddp
    accelerate launch --config_file accelerate_configs/zero3.yaml \
        tests/integration/train_grpo_tiny.py --output-dir /tmp/run-z3 --beta 0.04

Each rank writes ``<output-dir>/rank<RANK>.json`` (rank, world size, accelerate's distributed type, steps done,
losses, timings and, under ZeRO-3, how the parameters are partitioned). tests/integration/test_launch.py reads them.

Swapping the trainer is one flag: ``--trainer gtpo`` imports ``trl_gtpo.GTPOTrainer, GTPOConfig`` instead of TRL's
``GRPOTrainer, GRPOConfig``; everything else stays the same.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tiny_model.py beside this file

PROMPTS = [
    "What is 2 + 3?",
    "Compute 7 * 6 with Python.",
    "Solve 3x + 4 = 10.",
    "What is the square root of 16?",
    "Print the first 5 squares.",
    "What is 10 - 4?",
    "Is 17 prime?",
    "Sum the numbers from 1 to 10.",
]


def load_trainer_classes(name: str):
    if name == "gtpo":
        from trl_gtpo import GTPOConfig, GTPOTrainer

        return GTPOTrainer, GTPOConfig
    from trl import GRPOConfig, GRPOTrainer

    return GRPOTrainer, GRPOConfig


def length_reward(completions, **kwargs):
    """Dummy reward with some spread, so that the advantages are not all zero."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [-abs(len(t) - 24) / 24.0 for t in texts]


def patch_vllm_cpu_colocate_weight_sync() -> None:
    """Make TRL 1.16's colocate weight sync work on vLLM's CPU backend: trl_gtpo._trl_compat.patch_colocate_weight_sync_for_cpu says what and why."""
    from trl_gtpo._trl_compat import patch_colocate_weight_sync_for_cpu

    patch_colocate_weight_sync_for_cpu()


def patch_vllm_server_skip_weight_sync() -> None:
    """Test-only: use a vLLM server for generation without weight sync (for CPU, where sync cannot work).

    TRL 1.16 syncs weights to a server over vLLM's NCCL weight-transfer engine; `VLLMClient.init_communicator` raises
    `NotImplementedError: Weight synchronization runs on vLLM's NCCL weight-transfer engine, which needs a CUDA
    device, got 'cpu'`. With this patch the trainer skips the communicator and only resets the server's prefix cache
    where it would push weights, so the server keeps generating with the initial weights (training is then
    off-policy; the importance-sampling correction still runs). Only for exercising the generation path.
    """
    from trl.generation.vllm_client import VLLMClient
    from trl.generation.vllm_generation import VLLMGeneration

    VLLMClient.init_communicator = lambda self, device=0: None

    def sync_weights(self):
        if self.mode == "server" and self.accelerator.is_main_process:
            self.vllm_client.reset_prefix_cache()

    VLLMGeneration.sync_weights = sync_weights


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trainer", choices=["grpo", "gtpo"], default="grpo")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--model-dir", default=None, help="tiny model dir; built (once per machine) if missing")
    p.add_argument("--max-steps", type=int, default=2)
    p.add_argument("--per-device-train-batch-size", type=int, default=2)
    p.add_argument("--num-generations", type=int, default=2)
    p.add_argument("--max-completion-length", type=int, default=16)
    p.add_argument("--beta", type=float, default=0.0)
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--no-ds3-gather-for-generation", dest="ds3_gather_for_generation", action="store_false")
    p.add_argument("--use-vllm", action="store_true")
    p.add_argument("--vllm-mode", choices=["colocate", "server"], default="colocate")
    p.add_argument("--vllm-server-base-url", default=None)
    p.add_argument("--vllm-gpu-memory-utilization", type=float, default=None)
    p.add_argument("--vllm-max-model-length", type=int, default=256)
    p.add_argument("--no-vllm-cpu-sync-patch", dest="vllm_cpu_sync_patch", action="store_false",
                   help="do not patch TRL's colocate weight sync for vLLM's CPU backend (to see the failure; "
                   "only meaningful with --trainer grpo once GTPOTrainer applies trl_gtpo._trl_compat's patch itself)")
    p.add_argument("--vllm-server-skip-weight-sync", action="store_true",
                   help="server mode on CPU: generate with the server's initial weights (no NCCL weight sync)")
    p.add_argument("--stop", action="append", default=None, help="stop string for vLLM (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def zero3_report(model) -> dict | None:
    """How ZeRO-3 holds the parameters of ``model`` on this rank (None if not partitioned by DeepSpeed)."""
    module = getattr(model, "module", model)  # a DeepSpeedEngine wraps the model
    params = list(module.named_parameters())
    if not params or not hasattr(params[0][1], "ds_numel"):
        return None
    full = sum(p.ds_numel for _, p in params)
    local = sum(p.ds_tensor.numel() for _, p in params)
    name, p = next((n, p) for n, p in params if n.endswith("mlp.gate_proj.weight"))
    return {
        "total_ds_numel": int(full),
        "total_local_partition_numel": int(local),
        "example": {
            "name": name,
            "ds_shape": list(p.ds_shape),
            "ds_numel": int(p.ds_numel),
            "local_partition_numel": int(p.ds_tensor.numel()),
            "data_numel_outside_gather": int(p.data.numel()),
            "ds_status": str(p.ds_status),
            # ZeRO-3 keeps params below stage3_param_persistence_threshold (default 1e5 elements) gathered after
            # their first use: on a tiny model every param is 'persistent', so ds_status reads AVAILABLE after
            # training; ds_tensor (the stored shard) is still 1/world_size of the param.
            "ds_persist": bool(getattr(p, "ds_persist", False)),
        },
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    t0 = time.monotonic()
    import torch
    from datasets import Dataset

    from tiny_model import build_once

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = build_once(args.model_dir or out / "tiny-model")

    Trainer, Config = load_trainer_classes(args.trainer)

    on_gpu = torch.cuda.is_available()
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    extra = {}
    if args.use_vllm:
        extra.update(use_vllm=True, vllm_mode=args.vllm_mode, vllm_max_model_length=args.vllm_max_model_length)
        if args.vllm_server_base_url:
            extra["vllm_server_base_url"] = args.vllm_server_base_url
        if args.vllm_gpu_memory_utilization is not None:
            extra["vllm_gpu_memory_utilization"] = args.vllm_gpu_memory_utilization
        if args.stop:
            extra["generation_kwargs"] = {"stop": args.stop}
        if args.vllm_mode == "server" and args.vllm_server_skip_weight_sync:
            patch_vllm_server_skip_weight_sync()
        if args.vllm_mode == "colocate" and not on_gpu and args.vllm_cpu_sync_patch:
            patch_vllm_cpu_colocate_weight_sync()
    config = Config(
        output_dir=str(out / "trainer"),
        max_steps=args.max_steps,
        per_device_train_batch_size=args.per_device_train_batch_size,
        num_generations=args.num_generations,
        max_completion_length=args.max_completion_length,
        beta=args.beta,
        ds3_gather_for_generation=args.ds3_gather_for_generation,
        learning_rate=args.learning_rate,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        bf16=False,
        # DDP on CPU needs use_cpu=True (accelerate then picks MULTI_CPU/gloo); DeepSpeed must keep it False so that
        # accelerate hands the process group to deepspeed.init_distributed (which falls back to gloo on CPU).
        use_cpu=not on_gpu and not deepspeed,
        # Under DeepSpeed on CPU, accelerate only counts the processes if it is told the backend: without this it
        # reports num_processes=1 while DeepSpeed sees 2, and DeepSpeed's batch-size check fails with
        # "train_batch_size is not equal to micro_batch_per_gpu * gradient_acc_step * world_size 2 != 2 * 1 * 2".
        ddp_backend="gloo" if (deepspeed and not on_gpu) else None,
        seed=args.seed,
        disable_tqdm=True,
        dataloader_num_workers=0,
        **extra,
    )
    dataset = Dataset.from_dict({"prompt": [[{"role": "user", "content": p}] for p in PROMPTS]})

    t_init = time.monotonic()
    trainer = Trainer(
        model=str(model_dir), reward_funcs=length_reward, args=config, train_dataset=dataset,
    )
    init_s = time.monotonic() - t_init
    z3_before = zero3_report(trainer.model)

    t_train = time.monotonic()
    result = trainer.train()
    train_s = time.monotonic() - t_train

    state = trainer.accelerator.state
    rank = trainer.accelerator.process_index
    report = {
        "trainer": type(trainer).__name__,
        "rank": rank,
        "world_size": trainer.accelerator.num_processes,
        "torch_dist_world_size": torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1,
        "torch_dist_backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
        "distributed_type": str(state.distributed_type),
        "pid": os.getpid(),
        "device": str(trainer.accelerator.device),
        "global_step": trainer.state.global_step,
        "train_loss": result.training_loss,
        "log_history": trainer.state.log_history,
        "use_vllm": args.use_vllm,
        "vllm_mode": args.vllm_mode if args.use_vllm else None,
        "beta": args.beta,
        "has_ref_model": getattr(trainer, "ref_model", None) is not None,
        "ds3_gather_for_generation": config.ds3_gather_for_generation,
        "zero3_before_train": z3_before,
        "zero3_after_train": zero3_report(trainer.model_wrapped),
        "zero3_ref_model": zero3_report(trainer.ref_model) if getattr(trainer, "ref_model", None) is not None else None,
        "seconds": {"trainer_init": round(init_s, 2), "train": round(train_s, 2),
                    "total": round(time.monotonic() - t0, 2)},
    }
    (out / f"rank{rank}.json").write_text(json.dumps(report, indent=1, default=str))
    print(f"[train_grpo_tiny] rank {rank}/{report['world_size']} {report['distributed_type']} "
          f"steps={report['global_step']} loss={report['train_loss']:.4f} times={report['seconds']}", flush=True)

    # A colocated vLLM engine tears down its own distributed groups at exit; shut it down first, or its exit hook
    # fails with "ValueError: Invalid process group specified" once we have destroyed the default group.
    llm = getattr(getattr(trainer, "vllm_generation", None), "llm", None)
    if llm is not None:
        llm.llm_engine.engine_core.shutdown()
    # Tear the process group down ourselves: without it a ZeRO-3 (gloo) run can abort at interpreter exit.
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
