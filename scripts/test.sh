#!/usr/bin/env bash
# Install everything (scripts/setup_env.sh) and run the whole test suite, on the CPU.
# Usage: bash scripts/test.sh [extra pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
VENV="${GTPO_VENV:-.venv}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
"$VENV/bin/python" -m pytest -p no:cacheprovider -q -rs "$@"
