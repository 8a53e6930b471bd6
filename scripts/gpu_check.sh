#!/usr/bin/env bash
# GPU check: a few GTPO steps and the GRPO baseline on one NVIDIA GPU, offline, in under 8 minutes (about 2-4 min
# expected on an A100/H100 with the packaged SmolLM2-135M; NOT RUN on a GPU yet). Prints step times, peak GPU memory
# and the GTPO / GRPO ratios; writes them to ${GPU_CHECK_OUTPUT:-gpu_check.json}.
#   bash scripts/gpu_check.sh             # on the GPU machine, with CUDA PyTorch installed
#   bash scripts/gpu_check.sh --dry-run   # anywhere: tiny model on the CPU, checks the script runs
#   GPU_CHECK_ASYNC=1 bash scripts/gpu_check.sh   # then also the asynchronous path (vLLM server on the GPU, ~7 min:
#                                                 # the rollout benchmark, at most ~3 min, then a few async steps)
# Packages the machine lacks: put their wheels in ./wheels (pip download -d wheels ... elsewhere); they are installed
# from there without an index. Python: $PYTHON, else python3.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRL_EXPERIMENTAL_SILENCE=1
if [ -d wheels ]; then
  "$PY" -m pip install -q --no-index --find-links wheels --no-deps wheels/*.whl
fi
if ! "$PY" -c "import trl_gtpo" 2>/dev/null; then
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # run from the copy of the repository, uninstalled
fi
"$PY" -c "import torch, trl, transformers; print('torch', torch.__version__, '| trl', trl.__version__, '| transformers', transformers.__version__)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 470 "$PY" scripts/gpu_check.py --output "${GPU_CHECK_OUTPUT:-gpu_check.json}" "$@"
if [ "${GPU_CHECK_ASYNC:-0}" = 1 ]; then
  # The asynchronous path: a vLLM server on the GPU; benchmarks/bench_rollout.py's schedules against it (lockstep,
  # async, async without tools, the computed floor; turns of 64-512 tokens), then AsyncGTPOTrainer with weights
  # streamed to it over NCCL after every step and the sandboxed python tool. Needs vLLM installed; NOT RUN on a GPU.
  timeout 600 "$PY" scripts/gpu_check_async.py --output "${GPU_CHECK_ASYNC_OUTPUT:-gpu_check_async.json}"
fi
