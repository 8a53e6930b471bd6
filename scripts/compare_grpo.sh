#!/usr/bin/env bash
# The main job against GRPO on the same budget: install everything, then train the main job (recipes/cpu_default.yaml,
# = scripts/train_default.sh) with GTPOTrainer and with TRL's GRPOTrainer on the same code interpreter and the same
# verified rewards summed per trajectory, for each seed, and print both arms' held-out pass@1 per split side by side
# with intervals and the paired differences (design and statistics: benchmarks/learning/main_job.py and
# docs/MAIN_JOB.md, "GTPO and GRPO on the main job"). 2 arms x 3 seeds, 2 runs at a time: about 100 min on 2 CPU cores. Runs are cached in
# runs/compare-grpo/<arm>-<seed>.
# Usage: bash scripts/compare_grpo.sh [--seeds 42 43 44] [--jobs 2] [-- <more flags for examples/train_gtpo.py>]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
VENV="${GTPO_VENV:-.venv}"
exec "$VENV/bin/python" benchmarks/learning/main_job.py "$@"
