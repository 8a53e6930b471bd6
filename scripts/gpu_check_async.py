"""The asynchronous path on one GPU: the rollout benchmark and AsyncGTPOTrainer with weight transfer on (NCCL), against
one vLLM server on the GPU.

Prepared for a machine with one NVIDIA GPU and vLLM installed (NOT RUN on a GPU yet). Starts `vllm serve` on
127.0.0.1 (the flags TRL's `trl vllm-serve` adds, NCCL weight transfer, a third of the GPU's memory), then:

1. the rollout benchmark (`benchmarks/bench_rollout.py`'s `run_bench`, the same workload generator, schedules, floor
   and ratios as the CPU run, on the same model): lockstep, async and async without tools, in random order each
   round, with turns of 64-512 tokens. GPU defaults: 16 trajectories (the CPU run's 8 and 8 more of the same seed: a
   GPU decode step costs about the same for 8 or 16 sequences), 5 rounds, no new round after 120 s, so the check
   stays within its time; --rollout-rounds 0 skips it;
2. AsyncGTPOTrainer for a few steps with the sandboxed `python` tool (`PythonEnvironment`), TRL's default
   `WeightTransferClient` (weights streamed to the server after every step) and SDPA tree attention (TRL's
   FlashAttention-3 kernel comes from the Hub, which an offline machine cannot reach).

Prints the benchmark's ratios, step times, weight-sync times, rollouts' turn counts and the sample staleness TRL logs;
writes them to --output (after the benchmark already, so a later failure keeps its numbers).

    python scripts/gpu_check_async.py --output gpu_check_async.json   # or: GPU_CHECK_ASYNC=1 bash scripts/gpu_check.sh
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "integration"))

from benchmarks import bench_rollout  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="'default' (packaged SmolLM2-135M), 'tiny', or a path.")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--output", default=None)
    bench_rollout.add_arguments(parser, prefix="rollout-", model=False, trajectories=16, rounds=5, time_limit=120)
    args = parser.parse_args()
    rollout_args = types.SimpleNamespace(model=args.model, **{name.removeprefix("rollout_"): value
                                                              for name, value in vars(args).items()
                                                              if name.startswith("rollout_")})

    import torch

    from trl_gtpo import PythonEnvironment
    from trl_gtpo.async_gtpo import AsyncGTPOConfig, AsyncGTPOTrainer
    from trl_gtpo.demo.data import synthetic_dataset
    from trl_gtpo.rewards import math_answer_reward

    from _launch_utils import free_port, kill_group, vllm_serve_cmd

    if not torch.cuda.is_available():
        raise SystemExit("No CUDA device: the async check needs the GPU (weight transfer is NCCL).")
    sys.path.insert(0, str(REPO / "scripts"))
    from gpu_check import model_path

    path = model_path(args.model)
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="gpu_check_async_")) / "server.log"
    # Room for the benchmark's longest trajectory and its batch as well as the training's rollouts.
    max_model_len = max(2048, bench_rollout.model_len(bench_rollout.build(rollout_args, path)[1], rollout_args))
    max_num_seqs = max(8, rollout_args.trajectories)
    command = [sys.executable, "-m", "vllm.entrypoints.cli.main",
               *vllm_serve_cmd(path, port, max_model_len, max_num_seqs)[2:], "--gpu-memory-utilization", "0.3"]
    result = {"device": torch.cuda.get_device_name(0)}

    def write():
        if args.output:
            Path(args.output).write_text(json.dumps(result, indent=1) + "\n")

    server = subprocess.Popen(command, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
                              env={**os.environ, "VLLM_SERVER_DEV_MODE": "1"})
    start = time.perf_counter()
    try:
        while not _healthy(port):
            if server.poll() is not None or time.perf_counter() - start > 300:
                raise SystemExit(f"vLLM server did not start; see {log}")
            time.sleep(2)
        startup = time.perf_counter() - start
        print(f"vLLM server up in {startup:.0f} s")
        if rollout_args.rounds > 0:
            info = {"base_url": f"http://127.0.0.1:{port}", "startup_s": startup, "max_model_len": max_model_len,
                    "max_num_seqs": max_num_seqs, "launcher": "scripts/gpu_check_async.py (vllm serve on the GPU)"}
            result["rollout_bench"] = bench_rollout.run_bench(info["base_url"], path, rollout_args, info)
            bench_rollout.report(result["rollout_bench"])
            write()
        dataset = synthetic_dataset(64, seed=0, system_prompt=None, few_shot=False)  # no fence format: JSON tool
        config = AsyncGTPOConfig(
            output_dir=tempfile.mkdtemp(prefix="gpu_check_async_out_"), max_steps=args.steps,
            per_device_train_batch_size=8, num_generations=4, max_completion_length=256, max_tool_calling_iterations=3,
            vllm_server_base_url=f"http://127.0.0.1:{port}", token_budget=0, tree_attention="sdpa", dtype="bfloat16",
            learning_rate=1e-6, logging_steps=1, report_to="none", save_strategy="no",
        )
        trainer = AsyncGTPOTrainer(
            path, reward_funcs=math_answer_reward, args=config,
            train_dataset=dataset,
            environment_factory=PythonEnvironment.factory(),
        )
        trainer.train()
        logs = [entry for entry in trainer.state.log_history if "perf/step_s" in entry]
        result.update({
            "step_s": [entry["perf/step_s"] for entry in logs],
            "weight_sync_s": [entry.get("perf/weight_sync_s") for entry in logs],
            "turns_mean": [entry.get("rollout/turns_mean") for entry in logs],
            "staleness_mean": [entry.get("sample/staleness_mean") for entry in logs],
            "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
        })
        print(json.dumps({k: v for k, v in result.items() if k != "rollout_bench"}, indent=1))
        if len(result["step_s"]) > 1:
            print(f"median step after the first: {statistics.median(result['step_s'][1:]):.2f} s")
        write()
    finally:
        kill_group(server, grace=20)


def _healthy(port) -> bool:
    import requests

    try:
        return requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


if __name__ == "__main__":
    main()
