"""Training rollouts with and without the cached prompt prefix (GTPOConfig.cache_prompt_prefix), on the packaged
SmolLM2-135M-Instruct, transformers backend, one process.

Each round runs one whole rollout (`CodeInterpreterRollout`: every turn generated, every code block run in the
sandbox) of the same prompts twice, prefix cache on and off, in alternating order, from the same torch seed. Two
workloads, each the rollout of one training step of a job in this repository:

  main_job   recipes/cpu_default.yaml: 4 prompts x 4 trajectories (two one-step and two two-step word problems,
             the worked examples of `word_steps`), up to 3 turns and 128 tokens, temperature 0.5;
  chain      benchmarks/learning/credit_pretrained.py: 1 prompt x 8 trajectories of a 3-step chain (two worked
             examples), up to 4 turns and 160 tokens, temperature 0.3.

Prints the median wall and CPU seconds per rollout, their ratio cached / uncached, and how many trajectories came
out token for token the same (sampling reads the same logits up to float rounding, so a few may part ways; `--greedy`
checks exact equality). torch runs on `--threads` threads, so on a shared machine CPU time stays a fair measure.

`--part scoring` times the loss's forward and backward pass instead (`GTPOTrainer._get_per_token_logps_and_entropies`
on the job's micro-batches of one rollout's trajectories, gradient checkpointing off as in the main job), with the
prompts' shared beginning read once per micro-batch and as TRL reads it, alternating, and prints the largest
difference in log-probabilities between the two.

    python benchmarks/bench_prefix_cache.py --task main_job --rounds 3
    python benchmarks/bench_prefix_cache.py --task chain --part scoring
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "learning"))

WORKLOADS = {
    "main_job": dict(generations=4, turns=3, tokens=128, temperature=0.5, micro_batch=4),
    "chain": dict(generations=8, turns=4, tokens=160, temperature=0.3, micro_batch=4),
}


def workload_prompts(task: str) -> list:
    """The prompts of one training step of `task`, each repeated for its group."""
    if task == "main_job":
        from trl_gtpo.demo.data import synthetic_dataset

        kinds = ["word", "word_two_step", "word_units_first", "word_two_step"]
        rows = synthetic_dataset(4, kinds=kinds, examples="word_steps")
        prompts = [row["prompt"] for row in rows]
    else:
        import word_chain

        prompts = [row["prompt"] for row in word_chain.problems(1, seed=0, split="train", steps=3)]
    generations = WORKLOADS[task]["generations"]
    return [prompt for prompt in prompts for _ in range(generations)]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", choices=sorted(WORKLOADS), default="main_job")
    parser.add_argument("--rounds", type=int, default=3, help="Rounds of one rollout in each mode.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads.")
    parser.add_argument("--greedy", action="store_true", help="Greedy decoding: every token must be the same.")
    parser.add_argument("--part", choices=("rollout", "scoring"), default="rollout")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.part == "scoring":
        return scoring(args)

    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from trl_gtpo import GTPOConfig
    from trl_gtpo.demo.models import resolve_model_name_or_path
    from trl_gtpo.interpreter.rollout import CodeInterpreterRollout

    work = WORKLOADS[args.task]
    prompts = workload_prompts(args.task)
    common = dict(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=len(prompts), num_generations=work["generations"],
        max_completion_length=work["tokens"], temperature=work["temperature"], report_to="none", use_cpu=True,
        bf16=False, generation_kwargs={"do_sample": False} if args.greedy else None,
    )
    rollout = CodeInterpreterRollout(GTPOConfig(**common, max_turns=work["turns"], tool_pool_size=1))
    trainer = GRPOTrainer(
        model=resolve_model_name_or_path("default"), args=GRPOConfig(**common),
        reward_funcs=lambda completions, **kwargs: [0.0] * len(completions), rollout_func=rollout,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
    )
    walls, cpus, outputs = {True: [], False: []}, {True: [], False: []}, {}
    for round_index in range(args.rounds):
        for cached in (True, False) if round_index % 2 == 0 else (False, True):
            rollout.args.cache_prompt_prefix = cached
            torch.manual_seed(round_index)
            start, cpu_start = time.perf_counter(), time.process_time()
            result = rollout(prompts, trainer)
            walls[cached].append(time.perf_counter() - start)
            cpus[cached].append(time.process_time() - cpu_start)
            outputs[round_index, cached] = result["completion_ids"]
    rollout.close()
    same = sum(
        a == b
        for round_index in range(args.rounds)
        for a, b in zip(outputs[round_index, True], outputs[round_index, False], strict=True)
    )
    tokens = statistics.mean(sum(len(ids) for ids in outputs[r, False]) for r in range(args.rounds))
    tokenizer = trainer.processing_class
    text = tokenizer.apply_chat_template(prompts[0], add_generation_prompt=True, tokenize=False)
    prompt_tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    print(f"task {args.task}: {len(prompts)} trajectories, prompt {prompt_tokens} tokens, {tokens:.0f} completion "
          f"tokens per rollout, {args.rounds} rounds, {args.threads} thread(s), greedy {args.greedy}")
    print(f"same tokens, cached and not: {same} of {len(prompts) * args.rounds} trajectories")
    for cached in (False, True):
        print(f"  cache {'on ' if cached else 'off'}: median wall {statistics.median(walls[cached]):.1f} s, "
              f"cpu {statistics.median(cpus[cached]):.1f} s per rollout")
    print(f"ratio cached / uncached: wall {statistics.median(walls[True]) / statistics.median(walls[False]):.3f}, "
          f"cpu {statistics.median(cpus[True]) / statistics.median(cpus[False]):.3f}")


def scoring(args):
    """The loss's forward and backward pass over one rollout's trajectories, in the job's micro-batches."""
    from datasets import Dataset
    from trl import GRPOTrainer

    from trl_gtpo import GTPOConfig, GTPOTrainer
    from trl_gtpo.demo.models import resolve_model_name_or_path

    work = WORKLOADS[args.task]
    prompts = workload_prompts(args.task)
    config = GTPOConfig(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=len(prompts),
        num_generations=work["generations"],
        max_completion_length=work["tokens"],
        temperature=work["temperature"],
        report_to="none",
        use_cpu=True,
        bf16=False,
        max_turns=work["turns"],
        tool_pool_size=1,
        gradient_checkpointing=False,
    )
    trainer = GTPOTrainer(
        model=resolve_model_name_or_path("default"),
        args=config,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
        reward_funcs=lambda completions, **kwargs: [0.0] * len(completions),
    )
    torch.manual_seed(0)
    rollout = trainer.rollout_func(prompts, trainer)
    pad = trainer._tokenizer.pad_token_id
    prompt_width = max(len(ids) for ids in rollout["prompt_ids"])
    width = max(len(ids) for ids in rollout["completion_ids"])
    input_ids = torch.tensor(
        [
            [pad] * (prompt_width - len(p)) + p + c + [pad] * (width - len(c))
            for p, c in zip(rollout["prompt_ids"], rollout["completion_ids"], strict=True)
        ]
    )
    attention_mask = torch.tensor(
        [
            [0] * (prompt_width - len(p)) + [1] * (len(p) + len(c)) + [0] * (width - len(c))
            for p, c in zip(rollout["prompt_ids"], rollout["completion_ids"], strict=True)
        ]
    )
    completion_mask = attention_mask[:, prompt_width:]
    model = trainer.model.train()
    forwards = {
        True: trainer._get_per_token_logps_and_entropies,
        False: GRPOTrainer._get_per_token_logps_and_entropies.__get__(trainer),
    }
    walls, cpus, logps = {True: [], False: []}, {True: [], False: []}, {}
    for round_index in range(args.rounds):
        for cached in (True, False) if round_index % 2 == 0 else (False, True):
            start, cpu_start = time.perf_counter(), time.process_time()
            values = []
            for first in range(0, len(prompts), work["micro_batch"]):
                rows = slice(first, first + work["micro_batch"])
                out, _, _ = forwards[cached](model, input_ids[rows], attention_mask[rows], width, compute_entropy=True)
                (out * completion_mask[rows]).sum().backward()
                values.append(out.detach())
            model.zero_grad()
            walls[cached].append(time.perf_counter() - start)
            cpus[cached].append(time.process_time() - cpu_start)
            logps[cached] = torch.cat(values)
    trainer.rollout_func.close()
    difference = ((logps[True] - logps[False]).abs() * completion_mask).max().item()
    print(
        f"task {args.task}: {len(prompts)} trajectories in micro-batches of {work['micro_batch']}, prompts "
        f"{min(len(p) for p in rollout['prompt_ids'])}-{prompt_width} tokens, completions {width} columns, "
        f"{args.rounds} rounds, {args.threads} thread(s)"
    )
    print(f"largest |log-prob difference|, shared prefix read once and not: {difference:.2e}")
    for cached in (False, True):
        print(
            f"  prefix {'once' if cached else 'per row'}: median wall {statistics.median(walls[cached]):.2f} s, "
            f"cpu {statistics.median(cpus[cached]):.2f} s per step's forward and backward"
        )
    print(
        f"ratio once / per row: wall {statistics.median(walls[True]) / statistics.median(walls[False]):.3f}, "
        f"cpu {statistics.median(cpus[True]) / statistics.median(cpus[False]):.3f}"
    )


if __name__ == "__main__":
    main()
