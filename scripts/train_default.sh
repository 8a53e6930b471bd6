#!/usr/bin/env bash
# The main job: install everything, then train the packaged default model (SmolLM2-135M-Instruct) with GTPO on the
# synthetic word problems ("Each box holds 779 pens. How many pens are in 982 boxes?") on this CPU, save it, evaluate
# it greedily on 128 held-out problems before and after training (pass@1 with 95% intervals), and save the training
# success curve as runs/gtpo-default/training_success.png.
# Sized for 2 shared CPU cores: 20 steps of 8 trajectories (1 prompt x 8), about 38 s each (13 min of training, 20 min in
# all), peak memory 7.8 GiB; held-out pass@1 went from 0.430 to 1.000 (README, "What the main job does on this CPU").
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
  --output_dir runs/gtpo-default \
  --dataset_name synthetic --synthetic_kinds word word_two_step word_two_step --synthetic_seed 0 \
  --few_shot_examples word_steps \
  --train_size 1024 --eval_size 64 --eval_kinds word word_reworded word_two_step \
  --turn_reward_funcs intermediate_value_turn_reward \
  --max_steps 20 --per_device_train_batch_size 4 --gradient_accumulation_steps 2 --num_generations 8 \
  --max_completion_length 128 --max_turns 3 --temperature 0.5 \
  --learning_rate 1e-5 --beta 0.0 --loss_type dapo --gradient_checkpointing false \
  --use_cpu true --bf16 false --logging_steps 1 --save_strategy "no" --report_to none \
  --log_completions true --num_completions_to_print 2 \
  "$@"
