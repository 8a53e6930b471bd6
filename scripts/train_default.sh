#!/usr/bin/env bash
# The main job: install everything, then train the packaged default model (SmolLM2-135M-Instruct) with GTPO on the
# synthetic word problems on this CPU: one-step products in four sentence forms ("Each box holds 779 pens. How many
# pens are in 982 boxes?") and two-step products ("Each box holds 48 pens. Each crate holds 73 boxes. How many pens
# are in 97 crates?"), each tool turn's printed value checked against the true intermediate by a turn reward. It
# evaluates the model greedily before and after training on three held-out splits of 64 problems (the trained forms,
# four unseen forms, two-step), prints pass@1 per split with 95% intervals, and saves the training curve and the
# per-split bars as runs/gtpo-default/training_success.png.
# Its settings are recipes/cpu_default.yaml (sized for 2 shared CPU cores); its measured time, memory and results are
# in docs/MAIN_JOB.md.
# Extra arguments are passed to examples/train_gtpo.py (TRL-style flags, e.g. --max_steps 10 --gamma 1.0).
# Usage: bash scripts/train_default.sh [--flag value ...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
VENV="${GTPO_VENV:-.venv}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
# accelerate launch would pin torch to 1 thread; one process may use every core.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}"
exec "$VENV/bin/accelerate" launch --config_file accelerate_configs/single_process.yaml examples/train_gtpo.py \
  --config recipes/cpu_default.yaml "$@"
