"""GTPO's step-time overhead over GRPO on identical rollouts, measured in one run.

Both trainers get the same `rollout_func` (fixed multi-turn completions with a tool mask, so generation costs the
same and is not what is compared), the same model, data, seed and rewards. Runs alternate GRPO, GTPO, GRPO, ... so
that drift of the machine hits both alike. Prints median seconds per step and the ratio GTPO / GRPO (target <= 1.05).

    python benchmarks/bench_step_overhead.py --rounds 3 --steps 4
"""

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import TrainerCallback  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from trl_gtpo import GTPOConfig, GTPOTrainer  # noqa: E402
from trl_gtpo.testing import make_tiny_model, make_tiny_tokenizer  # noqa: E402


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times, self._start = [], None

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)


def make_rollout(tokenizer, completion_tokens: int, turns: int):
    """Fixed completions: `turns` model turns separated by tool outputs, the same on every call."""
    generator = torch.Generator().manual_seed(0)

    def rollout(prompts, trainer):
        prompt_ids = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
        span = completion_tokens // (2 * turns)
        completions, masks = [], []
        for i in range(len(prompts)):
            ids = torch.randint(3, len(tokenizer), (completion_tokens,), generator=generator).tolist()
            mask = [1 if (t // span) % 2 == 0 else 0 for t in range(completion_tokens)]
            completions.append(ids[:-1] + [tokenizer.eos_token_id])
            masks.append(mask)
        return {"prompt_ids": prompt_ids, "completion_ids": completions, "logprobs": None, "env_mask": masks}

    return rollout


def reward(completions, **kwargs):
    return [float(len(c) % 5) for c in completions]


def run(kind: str, model_dir: str, tokenizer, args) -> list[float]:
    common = dict(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=args.batch,
        num_generations=4,
        max_completion_length=args.tokens,
        max_steps=args.steps,
        report_to="none",
        bf16=False,
        use_cpu=True,
        save_strategy="no",
        logging_steps=1000,
        seed=0,
    )
    dataset = Dataset.from_dict({"prompt": [f"Question {i}: what is {i} * 7?" for i in range(64)]})
    config_class, trainer_class = (GTPOConfig, GTPOTrainer) if kind == "gtpo" else (GRPOConfig, GRPOTrainer)
    timer = StepTimer()
    trainer = trainer_class(
        model=model_dir, reward_funcs=reward, args=config_class(**common), train_dataset=dataset,
        rollout_func=make_rollout(tokenizer, args.tokens, args.turns),  # a fresh generator: identical rollouts
        callbacks=[timer],
    )
    trainer.train()
    return timer.times[1:]  # the first step pays one-off costs (optimizer state, lazy imports)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    args = parser.parse_args()

    tokenizer = make_tiny_tokenizer()
    model_dir = tempfile.mkdtemp()
    make_tiny_model(tokenizer, hidden_size=args.hidden, num_layers=4).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)

    times = {"grpo": [], "gtpo": []}
    for _ in range(args.rounds):
        for kind in ("grpo", "gtpo"):
            times[kind] += run(kind, model_dir, tokenizer, args)
    grpo, gtpo = statistics.median(times["grpo"]), statistics.median(times["gtpo"])
    print(f"identical rollouts: batch {args.batch}, {args.tokens} completion tokens, {args.turns} turns, "
          f"model hidden {args.hidden}; {len(times['grpo'])} timed steps each")
    print(f"GRPO median step: {grpo:.3f} s")
    print(f"GTPO median step: {gtpo:.3f} s")
    print(f"ratio GTPO / GRPO: {gtpo / grpo:.3f}  (target <= 1.05)")


if __name__ == "__main__":
    main()
