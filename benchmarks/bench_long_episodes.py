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
"""

import argparse
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
    before = _status_mb("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as file:
            file.write("5")  # resets VmHWM to the current resident size
        resettable = True
    except OSError:
        resettable = False
    trainer.train()
    peak = _status_mb("VmHWM")
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
        "train_peak_mb": peak - before if resettable else float("nan"),
        "turns": max((int(key.split("_")[1].split("/")[0]) for key in columns), default=None),
    }


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
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model_dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--tokens", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.turns = args.turns[0]
        print("RESULT " + json.dumps(child(args.child, args.model_dir, args)), flush=True)
        return

    from trl_gtpo.testing import make_tiny_model, make_tiny_tokenizer

    tokenizer = make_tiny_tokenizer()
    model_dir = tempfile.mkdtemp()
    make_tiny_model(tokenizer, hidden_size=args.hidden, num_layers=args.layers).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    report = {"settings": {k: v for k, v in vars(args).items() if k not in ("child", "model_dir", "tokens", "out")}}
    for turns in args.turns:
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
