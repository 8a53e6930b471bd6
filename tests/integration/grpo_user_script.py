"""A plain TRL GRPO script, as a user writes it. tests/trainer/test_trainer.py runs it with GRPO renamed to GTPO."""

import sys

from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

model_path, output_dir = sys.argv[1], sys.argv[2]

dataset = Dataset.from_dict(
    {
        "prompt": [[{"role": "user", "content": "What is 6 * 7?"}]] * 4,
        "answer": ["42"] * 4,
    }
)


def correct(completions, answer, **kwargs):
    return [1.0 if ref in completion[0]["content"] else 0.0 for completion, ref in zip(completions, answer)]


training_args = GRPOConfig(
    output_dir=output_dir,
    per_device_train_batch_size=4,
    num_generations=4,
    max_completion_length=48,
    max_steps=1,
    report_to="none",
    bf16=False,
    use_cpu=True,
    save_strategy="no",
)
trainer = GRPOTrainer(model=model_path, reward_funcs=correct, args=training_args, train_dataset=dataset)
trainer.train()
print("TRAINED", type(trainer).__name__, trainer.state.global_step)
