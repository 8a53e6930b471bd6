"""The asynchronous path on one GPU: a vLLM server on the GPU, AsyncGTPOTrainer with weight transfer on (NCCL).

Prepared for a machine with one NVIDIA GPU and vLLM installed (NOT RUN on a GPU yet). Starts `vllm serve` on
127.0.0.1 (the flags TRL's `trl vllm-serve` adds, NCCL weight transfer, a third of the GPU's memory), trains
AsyncGTPOTrainer for a few steps with the sandboxed `python` tool (`PythonEnvironment`), TRL's default
`WeightTransferClient` (weights streamed to the server after every step) and SDPA tree attention (TRL's
FlashAttention-3 kernel comes from the Hub, which an offline machine cannot reach). Prints step times, weight-sync
times, rollouts' turn counts and the sample staleness TRL logs; writes them to --output.

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
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="'default' (packaged SmolLM2-135M), 'tiny', or a path.")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

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
    command = [sys.executable, "-m", "vllm.entrypoints.cli.main", *vllm_serve_cmd(path, port, 2048)[2:],
               "--gpu-memory-utilization", "0.3"]
    server = subprocess.Popen(command, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
                              env={**os.environ, "VLLM_SERVER_DEV_MODE": "1"})
    start = time.perf_counter()
    try:
        while not _healthy(port):
            if server.poll() is not None or time.perf_counter() - start > 300:
                raise SystemExit(f"vLLM server did not start; see {log}")
            time.sleep(2)
        print(f"vLLM server up in {time.perf_counter() - start:.0f} s")
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
        result = {
            "device": torch.cuda.get_device_name(0),
            "step_s": [entry["perf/step_s"] for entry in logs],
            "weight_sync_s": [entry.get("perf/weight_sync_s") for entry in logs],
            "turns_mean": [entry.get("rollout/turns_mean") for entry in logs],
            "staleness_mean": [entry.get("sample/staleness_mean") for entry in logs],
            "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
        }
        print(json.dumps(result, indent=1))
        if len(result["step_s"]) > 1:
            print(f"median step after the first: {statistics.median(result['step_s'][1:]):.2f} s")
        if args.output:
            Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
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
