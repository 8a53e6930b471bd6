"""GTPO against GRPO on long episodes (32 and 48 turns), identical rollouts: step time and peak memory, as ratios
measured in the same run (issue 30, item 1; target <= 1.05).

Both trainers get the same `rollout_func` (`bench_step_overhead.make_rollout`: fixed completions whose tool mask
alternates model and tool spans, `--turns` model turns each), the same model, data, seed and reward, so generation
costs the same and only the step differs: GTPO's turn bookkeeping (turns read off the mask, the (B, K) table, its
broadcast to tokens, per-turn logging) against GRPO's one advantage per row. Each training run is its own process,
started in turn GRPO, GTPO, GRPO, ... so that drift of the machine hits both alike. Per process: the median step time
(the first step, which pays one-off costs, is dropped), the peak resident memory of the whole process (the kernel's
VmHWM) and the peak during training above the memory held before it (VmHWM reset through /proc/self/clear_refs).

    python benchmarks/bench_long_episodes.py --turns 32 48 --rounds 3 --steps 4

`--async`: AsyncGTPOTrainer against TRL's AsyncGRPOTrainer on identical pre-scored samples from a stub rollout
worker (`async_child`): the same tokens, masks and sampling log-probs, GTPO's samples carrying per-token turn
advantages (the table of `advantages.turn_advantages` on the group's turn rewards, spread over each turn's tokens as
its rollout worker does), GRPO's one scalar advantage per sample as TRL's worker makes it. Generation and scoring
happen in the rollout process, off the trainer's step, so what differs in the step is GTPO's per-token advantage
write into TRL's packed batch (`TurnAdvantageCollate`), timed alone as well. Printed as GTPO / GRPO ratios only.

    python benchmarks/bench_long_episodes.py --async --turns 32 48 --rounds 3 --steps 4
"""

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's trl_gtpo


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as file:
        for line in file:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def train_measuring_memory(trainer) -> tuple[float, float]:
    """`trainer.train()`; returns the process's peak resident MiB and the part of it above the resident size before
    training (NaN where the kernel cannot reset the peak)."""
    before = _status_mb("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as file:
            file.write("5")  # resets VmHWM to the current resident size
        resettable = True
    except OSError:
        resettable = False
    trainer.train()
    peak = _status_mb("VmHWM")
    return peak, peak - before if resettable else float("nan")


def child(kind: str, model_dir: str, args) -> dict:
    from bench_step_overhead import StepTimer, make_rollout, reward
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from trl_gtpo import GTPOConfig, GTPOTrainer
    from trl_gtpo.testing import make_tiny_tokenizer

    tokenizer = make_tiny_tokenizer()
    common = dict(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args.batch, num_generations=4,
        max_completion_length=args.tokens, max_steps=args.steps, report_to="none", bf16=False, use_cpu=True,
        save_strategy="no", logging_steps=1, seed=0,
    )
    dataset = Dataset.from_dict({"prompt": [f"Question {i}: what is {i} * 7?" for i in range(64)]})
    config_class, trainer_class = (GTPOConfig, GTPOTrainer) if kind == "gtpo" else (GRPOConfig, GRPOTrainer)
    timer = StepTimer()
    trainer = trainer_class(
        model=model_dir, reward_funcs=reward, args=config_class(**common), train_dataset=dataset,
        rollout_func=make_rollout(tokenizer, args.tokens, args.turns), callbacks=[timer],
    )
    peak, train_peak = train_measuring_memory(trainer)
    # The scoring part of a step alone (generation is the fixed rollout): `_generate_and_score_completions`, where
    # GTPO's turn bookkeeping runs, timed on one batch of the dataset, 10 times.
    trainer.model.train()
    rows = [dict(dataset[i // 4]) for i in range(args.batch)]
    scoring = []
    for _ in range(10):
        start = time.perf_counter()
        trainer._generate_and_score_completions(rows)
        scoring.append(time.perf_counter() - start)
    # GTPO logs advantages/turn_<j>/mean for each turn column of its table: how many turns it read off the mask
    columns = [key for entry in trainer.state.log_history for key in entry if key.startswith("advantages/turn_")]
    return {
        "times": timer.times[1:],
        "scoring_s": statistics.median(scoring),
        "peak_mb": peak,
        "train_peak_mb": train_peak,
        "turns": max((int(key.split("_")[1].split("/")[0]) for key in columns), default=None),
    }


GROUP = 4  # num_generations of the asynchronous runs


def prescored_samples(kind: str, vocab: int, eos: int, turns: int, span: int, groups: int, first_group: int = 0):
    """`groups` groups of GROUP samples as a rollout worker queues them, the same tokens for both kinds (seeded by
    group): a 24-token prompt shared by the group, then `turns` model spans of `span` tokens with a tool span of
    `span` tokens between each two (mask 0, log-probs 0). Each turn's call succeeds or fails (a tool-success turn
    reward) and each trajectory has a 0/1 outcome. `async_gtpo`: per-token advantages, the group's turn-advantage
    table (GTPO's default estimator and scale) on each turn's tokens; `async_grpo`: TRL's worker's one advantage per
    sample, (r - mean) / (std + 1e-8) of the summed reward over the group."""
    import numpy as np
    import torch
    from trl.experimental.async_grpo.async_rollout_worker import RolloutSample

    from trl_gtpo.advantages import AdvantageSettings, TurnBatch, turn_advantages
    from trl_gtpo.async_turns import token_advantages_by_row

    samples = []
    for group in range(first_group, first_group + groups):
        rng = np.random.default_rng(group)
        prompt = rng.integers(3, vocab, 24).tolist()
        ids, masks, logprobs = [], [], []
        for _ in range(GROUP):
            completion = rng.integers(3, vocab, (2 * turns - 1) * span).tolist()
            completion[-1] = eos
            mask = [0] * len(prompt) + [1 - (t // span) % 2 for t in range(len(completion))]
            ids.append(prompt + completion)
            masks.append(mask)
            logprobs.append(np.where(np.array(mask) == 1, -rng.random(len(mask)), 0.0).astype(np.float32))
        outcome = torch.tensor(rng.integers(0, 2, GROUP), dtype=torch.float32)
        success = torch.tensor(rng.integers(0, 2, (GROUP, turns)), dtype=torch.float32)
        success[:, -1] = 0.0  # the answer turn makes no call
        if kind == "async_gtpo":
            batch = TurnBatch(outcome, torch.full((GROUP,), turns), GROUP, turn_terms=success)
            table = turn_advantages(batch, AdvantageSettings()).advantages
            advantages = [np.asarray(rows[0], dtype=np.float32) for rows in token_advantages_by_row(
                table, [[mask] for mask in masks])]
        else:
            rewards = outcome.numpy().astype(float) + success.sum(dim=1).numpy()  # TRL sums its reward columns
            advantages = (rewards - rewards.mean()) / (rewards.std() + 1e-8)
        for i in range(GROUP):
            samples.append(RolloutSample(
                [], [], np.array(ids[i], dtype=np.int64), np.array(masks[i], dtype=np.int64), logprobs[i],
                advantages[i] if kind == "async_gtpo" else float(advantages[i]), 0, group, {},
            ))
    return samples


def async_child(kind: str, model_dir: str, args) -> dict:
    """One training run of AsyncGTPOTrainer (`async_gtpo`) or TRL's AsyncGRPOTrainer (`async_grpo`) from a stub
    worker: the wall time between step ends (the step, its batch's packing and collation, TRL's end-of-step work), the
    process's peak memory, and the collation of one batch alone (TRL's packer, plus GTPO's per-token advantages)."""
    from bench_step_overhead import StepTimer
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl.experimental.async_grpo import AsyncGRPOConfig, AsyncGRPOTrainer

    from trl_gtpo import AsyncGTPOConfig, AsyncGTPOTrainer
    from trl_gtpo._trl_compat.async_grpo import cpu_safe_init, use_sdpa_tree_attention
    from trl_gtpo.testing import NoWeightTransfer, QueuedRolloutWorker

    class StepEnds(TrainerCallback):
        def __init__(self):
            self.ends = []

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    span = args.tokens_per_turn // 2
    groups = args.batch // GROUP
    make = functools.partial(prescored_samples, kind, len(tokenizer), tokenizer.eos_token_id, args.turns, span)
    samples = make(groups * (args.steps + 1))  # the dataloader fetches one batch ahead
    common = dict(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args.batch, num_generations=GROUP, token_budget=0,
        max_steps=args.steps, max_staleness=args.steps + 1, report_to="none", bf16=False, use_cpu=True,
        save_strategy="no", logging_steps=1, seed=0,
    )
    timer, ends = StepTimer(), StepEnds()
    kwargs = dict(
        reward_funcs=[], train_dataset=Dataset.from_dict({"prompt": [[{"role": "user", "content": "hi"}]]}),
        rollout_worker=QueuedRolloutWorker(samples), weight_transfer=NoWeightTransfer(), callbacks=[timer, ends],
    )
    if kind == "async_gtpo":
        trainer = AsyncGTPOTrainer(model_dir, args=AsyncGTPOConfig(**common), **kwargs)
    else:
        with cpu_safe_init():  # TRL's MFU lookup asks CUDA for its device name
            trainer = AsyncGRPOTrainer(model_dir, args=AsyncGRPOConfig(**common), **kwargs)
        use_sdpa_tree_attention()  # the same CPU tree attention as AsyncGTPOTrainer's
    peak, train_peak = train_measuring_memory(trainer)
    # Collation alone: one batch of fresh samples, planned by TRL's FixedCountBatcher, then collated 10 times by the
    # trainer's collate function (TRL's packer; for GTPO wrapped by TurnAdvantageCollate).
    worker = trainer.rollout_worker
    while not worker.rollout_buffer.empty():
        worker.rollout_buffer.get_nowait()
    for sample in make(groups, first_group=10_000):
        worker.rollout_buffer.put(sample)
    loader = trainer.get_train_dataloader()
    loader = getattr(loader, "base_dataloader", loader)
    rows = next(iter(loader.dataset))
    collation = []
    for _ in range(10):
        start = time.perf_counter()
        batch = loader.collate_fn([rows])
        collation.append(time.perf_counter() - start)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {
        "times": [b - a for a, b in zip(ends.ends[:-1], ends.ends[1:])],  # the first step, with one-off costs, out
        "step_only": timer.times[1:],
        "collate_s": statistics.median(collation),
        "peak_mb": peak,
        "train_peak_mb": train_peak,
        "loss_finite": bool(losses) and all(loss == loss and abs(loss) != float("inf") for loss in losses),
        "trained_tokens": int((batch["token_index"] >= 0).sum()),
    }


def async_main(args, model_dir: str, report: dict) -> None:
    """The `--async` comparison: one process per run, AsyncGRPO, AsyncGTPO, AsyncGRPO, ... for each turn count."""
    for turns in args.turns:
        runs = {"async_grpo": [], "async_gtpo": []}
        for _ in range(args.rounds):
            for kind in runs:
                command = [
                    sys.executable, os.path.abspath(__file__), "--async", "--child", kind, "--model_dir", model_dir,
                    "--turns", str(turns), "--steps", str(args.steps), "--batch", str(args.batch),
                    "--tokens_per_turn", str(args.tokens_per_turn),
                ]
                done = subprocess.run(command, capture_output=True, text=True, check=False)
                line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
                if done.returncode != 0 or line is None:
                    sys.exit(f"{kind} run failed:\n{done.stderr[-3000:]}")
                result = json.loads(line[len("RESULT "):])
                if not result["loss_finite"]:
                    sys.exit(f"{kind} run logged a loss that is not finite")
                runs[kind].append(result)
        figures = {
            kind: {
                "step_s": statistics.median(t for r in results for t in r["times"]),
                "step_only_s": statistics.median(t for r in results for t in r["step_only"]),
                "peak_mb": statistics.median(r["peak_mb"] for r in results),
                "train_peak_mb": statistics.median(r["train_peak_mb"] for r in results),
                "collate_s": statistics.median(r["collate_s"] for r in results),
            }
            for kind, results in runs.items()
        }
        gtpo, grpo = figures["async_gtpo"], figures["async_grpo"]
        ratios = {key: gtpo[key] / grpo[key] for key in gtpo}
        # the spread: each round's GTPO process against the GRPO process run just before it
        paired = {
            key: [statistics.median(a[key]) / statistics.median(b[key]) if key == "times" else a[key] / b[key]
                  for a, b in zip(runs["async_gtpo"], runs["async_grpo"])]
            for key in ("times", "peak_mb")
        }
        extra = (gtpo["collate_s"] - grpo["collate_s"]) / grpo["step_s"]
        tokens = runs["async_gtpo"][0]["trained_tokens"]
        report[f"async_turns_{turns}"] = {
            "sample_tokens": 24 + (2 * turns - 1) * (args.tokens_per_turn // 2), "trained_tokens_per_batch": tokens,
            **figures, "ratio_gtpo_over_grpo": ratios, "gtpo_collation_extra_over_grpo_step": extra,
            "paired_round_ratios": {"step_s": paired["times"], "peak_mb": paired["peak_mb"]},
        }
        print(f"{turns} turns ({24 + (2 * turns - 1) * (args.tokens_per_turn // 2)} tokens a sample, batch "
              f"{args.batch}, {tokens} trained tokens a batch); medians over {args.rounds} processes each, ratios "
              "AsyncGTPO / AsyncGRPO:")
        print(f"  step (step end to step end, first step out) {ratios['step_s']:.3f}, step alone "
              f"{ratios['step_only_s']:.3f}, peak RSS {ratios['peak_mb']:.3f}, training peak "
              f"{ratios['train_peak_mb']:.3f}  (target <= 1.05)")
        print(f"  round by round (each GTPO process / the GRPO process before it): step "
              f"{min(paired['times']):.3f}-{max(paired['times']):.3f}, peak RSS "
              f"{min(paired['peak_mb']):.3f}-{max(paired['peak_mb']):.3f}")
        print(f"  collation of one batch {ratios['collate_s']:.3f}: GTPO's per-token advantages add "
              f"{extra:.2%} of AsyncGRPO's step", flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens_per_turn", type=int, default=32, help="model tokens + tool tokens of one turn")
    parser.add_argument("--turns", type=int, nargs="+", default=[32, 48])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--out", default=None, help="also write the figures to this JSON file")
    parser.add_argument("--async", dest="async_mode", action="store_true",
                        help="AsyncGTPOTrainer against TRL's AsyncGRPOTrainer on pre-scored samples (stub worker)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model_dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--tokens", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.turns = args.turns[0]
        run = async_child if args.async_mode else child
        print("RESULT " + json.dumps(run(args.child, args.model_dir, args)), flush=True)
        return

    from trl_gtpo.testing import make_tiny_model, make_tiny_tokenizer

    tokenizer = make_tiny_tokenizer()
    model_dir = tempfile.mkdtemp()
    make_tiny_model(tokenizer, hidden_size=args.hidden, num_layers=args.layers).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    report = {"settings": {k: v for k, v in vars(args).items() if k not in ("child", "model_dir", "tokens", "out")}}
    if args.async_mode:
        async_main(args, model_dir, report)
    for turns in [] if args.async_mode else args.turns:
        tokens = turns * args.tokens_per_turn
        runs = {"grpo": [], "gtpo": []}
        for _ in range(args.rounds):
            for kind in ("grpo", "gtpo"):
                command = [
                    sys.executable, os.path.abspath(__file__), "--child", kind, "--model_dir", model_dir,
                    "--turns", str(turns), "--tokens", str(tokens), "--steps", str(args.steps),
                    "--batch", str(args.batch),
                ]
                done = subprocess.run(command, capture_output=True, text=True, check=False)
                line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
                if done.returncode != 0 or line is None:
                    sys.exit(f"{kind} run failed:\n{done.stderr[-3000:]}")
                runs[kind].append(json.loads(line[len("RESULT "):]))
        figures = {}
        for kind, results in runs.items():
            figures[kind] = {
                "step_s": statistics.median(t for r in results for t in r["times"]),
                "peak_mb": statistics.median(r["peak_mb"] for r in results),
                "train_peak_mb": statistics.median(r["train_peak_mb"] for r in results),
                "scoring_s": statistics.median(r["scoring_s"] for r in results),
            }
        gtpo_turns = runs["gtpo"][0]["turns"]
        ratios = {key: figures["gtpo"][key] / figures["grpo"][key] for key in figures["gtpo"]}
        report[f"turns_{turns}"] = {"completion_tokens": tokens, "gtpo_turns_read": gtpo_turns, **figures,
                                    "ratio_gtpo_over_grpo": ratios}
        print(f"{turns} turns ({tokens} completion tokens, batch {args.batch}, hidden {args.hidden}; GTPO read "
              f"{gtpo_turns} turns); medians over {args.rounds} processes each:")
        for kind in ("grpo", "gtpo"):
            f = figures[kind]
            print(f"  {kind.upper()}: step {f['step_s']:.3f} s, peak RSS {f['peak_mb']:.0f} MiB, "
                  f"training peak above the loaded state {f['train_peak_mb']:.1f} MiB")
        extra = figures["gtpo"]["scoring_s"] - figures["grpo"]["scoring_s"]
        report[f"turns_{turns}"]["gtpo_scoring_extra_s"] = extra
        print(f"  ratio GTPO / GRPO: step {ratios['step_s']:.3f}, peak RSS {ratios['peak_mb']:.3f}, "
              f"training peak {ratios['train_peak_mb']:.3f}  (target <= 1.05)")
        print(f"  scoring alone (_generate_and_score_completions): GRPO {figures['grpo']['scoring_s'] * 1000:.1f} ms, "
              f"GTPO {figures['gtpo']['scoring_s'] * 1000:.1f} ms: GTPO's turn bookkeeping adds {extra * 1000:.1f} ms, "
              f"{extra / figures['grpo']['step_s']:.2%} of GRPO's step", flush=True)
    if args.out:
        with open(args.out, "w") as file:
            json.dump(report, file, indent=1)


if __name__ == "__main__":
    main()
