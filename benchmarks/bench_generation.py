"""GTPO's per-turn generation against GRPO's plain generation, same tokens, transformers backend, one run.

A tiny random model with a Qwen2.5-sized vocabulary (151,665 tokens, as TRL's test models) and one GRPOTrainer.
Each round times one `_generate_single_turn` of the same prompts three ways, with the same seed, so the same tokens
are sampled (printed, and checked):

  grpo          TRL's plain generation: no stop strings;
  gtpo          `TurnGenerator`, the code-interpreter loop's turn: stop strings through a criterion built once;
  stop_strings  stop strings through `generation_config.stop_strings` (what TurnGenerator did before), where
                transformers rebuilds its stop-string tables on every call.

The first round is a warm-up (it also builds GTPO's criterion once per process, printed apart). Prints the median
wall and CPU seconds per turn and their ratios to GRPO (target for gtpo: <= 1.05). torch runs on `--threads` threads
(default 1), so on a shared machine the process's CPU time stays a fair measure when the wall clock is not.

    python benchmarks/bench_generation.py --rounds 5 --batch 8 --tokens 32
"""

import argparse
import os
import statistics
import tempfile
import time
from contextlib import contextmanager

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from trl_gtpo._trl_compat import TurnGenerator  # noqa: E402
from trl_gtpo.interpreter.loop import CodeInterpreterLoop  # noqa: E402
from trl_gtpo.testing import make_large_vocab_tokenizer, make_tiny_model  # noqa: E402


@contextmanager
def transformers_stop_strings(trainer, stop_strings):
    """Stop strings the way transformers takes them: in the generation config, with the tokenizer passed along."""
    model = trainer.accelerator.unwrap_model(trainer.model_wrapped)
    config, generate = trainer.generation_config, model.generate
    config.stop_strings = stop_strings
    model.generate = lambda *args, **kwargs: generate(*args, tokenizer=trainer._tokenizer, **kwargs)
    try:
        yield
    finally:
        config.stop_strings = None
        del model.generate


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5, help="Timed rounds (after one warm-up round).")
    parser.add_argument("--batch", type=int, default=8, help="Trajectories generated together in one turn.")
    parser.add_argument("--tokens", type=int, default=32, help="New tokens per turn.")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    tokenizer = make_large_vocab_tokenizer()
    model = make_tiny_model(tokenizer, hidden_size=args.hidden)
    trainer = GRPOTrainer(
        model=model,
        processing_class=tokenizer,
        reward_funcs=lambda completions, **kwargs: [0.0] * len(completions),
        args=GRPOConfig(
            output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args.batch, num_generations=args.batch,
            max_completion_length=args.tokens, report_to="none", use_cpu=True, bf16=False,
        ),
        train_dataset=Dataset.from_dict({"prompt": ["unused"] * args.batch}),
    )
    loop = CodeInterpreterLoop(tokenizer, executor=None, max_turns=4, max_completion_length=args.tokens)
    stop_strings = loop.stop_strings
    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": f"What is {i} * 7?"}], add_generation_prompt=True,
                                      tokenize=False)
        for i in range(args.batch)
    ]
    prompt_ids = [tokenizer.encode(prompt, add_special_tokens=False) for prompt in prompts]

    def grpo():
        return trainer._generate_single_turn(prompt_ids, None, {}, num_generations=1)[0]

    def gtpo():
        return TurnGenerator(trainer, stop_strings)(prompt_ids, args.tokens)[0]  # a new one per turn, as the loop

    def stop_strings_in_config():
        with transformers_stop_strings(trainer, stop_strings):
            return grpo()

    modes = {"grpo": grpo, "gtpo": gtpo, "stop_strings": stop_strings_in_config}
    times = {name: [] for name in modes}
    cpu_times = {name: [] for name in modes}
    tokens = {}
    for round_index in range(args.rounds + 1):
        for name, generate_turn in modes.items():
            torch.manual_seed(round_index)
            start, cpu_start = time.perf_counter(), time.process_time()
            completion_ids = generate_turn()
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            if round_index == 0:
                if name == "gtpo":
                    print(f"warm-up turn of gtpo (builds its stop-string criterion once per process): {elapsed:.3f} s")
                continue
            times[name].append(elapsed)
            cpu_times[name].append(cpu)
            tokens.setdefault(round_index, {})[name] = completion_ids
    same = all(len({str(ids) for ids in by_mode.values()}) == 1 for by_mode in tokens.values())
    generated = sum(len(ids) for ids in tokens[1]["grpo"])

    print(f"vocabulary {len(tokenizer)}, batch {args.batch}, {args.tokens} new tokens per turn, hidden {args.hidden}; "
          f"{args.rounds} timed turns each; {generated} tokens per turn; same tokens in every mode: {same}")
    grpo_wall, grpo_cpu = statistics.median(times["grpo"]), statistics.median(cpu_times["grpo"])
    for name in modes:
        wall, cpu = statistics.median(times[name]), statistics.median(cpu_times[name])
        print(f"{name:>13}: median wall {wall:.3f} s, cpu {cpu:.3f} s per turn   "
              f"ratio to grpo: wall {wall / grpo_wall:.3f}, cpu {cpu / grpo_cpu:.3f}")
    print("target: gtpo / grpo <= 1.05")


if __name__ == "__main__":
    main()
