# Evaluate a model with the code-interpreter loop GTPO trains with: pass@1 and avg@k, a summary table and a JSON
# report with per-sample traces (turns, code, outputs, answer, correct).
#
#   python examples/evaluate.py --model_name_or_path default --dataset_name gsm8k --split test --limit 100 --k 4
#   python examples/evaluate.py --model_name_or_path runs/gtpo --dataset_name synthetic --limit 64

import argparse
import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_gtpo.demo.data import DATASET_NAMES, load_math_dataset
from trl_gtpo.evaluation import evaluate, save_report, summary_table
from trl_gtpo.demo.models import resolve_model_name_or_path
from trl_gtpo.rewards import math_answer_reward
from trl_gtpo.interpreter.sandbox import SandboxPool


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model_name_or_path", nargs="+", default=["default"], help="One or more models to compare.")
    parser.add_argument("--dataset_name", default="synthetic", choices=DATASET_NAMES)
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=64, help="Number of problems (a seeded random subset).")
    parser.add_argument("--k", type=int, default=1, help="Samples per problem: avg@k and pass@k.")
    parser.add_argument("--temperature", type=float, default=None, help="Default: 0 (greedy) for k=1, else 0.7.")
    parser.add_argument("--max_turns", type=int, default=4)
    parser.add_argument("--max_completion_length", type=int, default=384)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--synthetic_difficulty", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="eval_report.json", help="JSON report (one file per model: name_<i>).")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    dataset = load_math_dataset(
        args.dataset_name, args.split, limit=args.limit, seed=args.seed, difficulty=args.synthetic_difficulty
    )
    temperature = args.temperature if args.temperature is not None else (0.0 if args.k == 1 else 0.7)
    reports = {}
    with SandboxPool() as executor:
        for i, name in enumerate(args.model_name_or_path):
            path = resolve_model_name_or_path(name)
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path)
            model.eval()
            report = evaluate(
                model,
                tokenizer,
                dataset,
                executor,
                math_answer_reward,
                k=args.k,
                max_turns=args.max_turns,
                max_completion_length=args.max_completion_length,
                temperature=temperature,
                batch_size=args.batch_size,
            )
            output = args.output if len(args.model_name_or_path) == 1 else _numbered(args.output, i)
            save_report(report, output)
            reports[name] = report
            print(f"{name}: report written to {output}")
    print(summary_table(reports))


def _numbered(path: str, i: int) -> str:
    root, extension = os.path.splitext(path)
    return f"{root}_{i}{extension}"


if __name__ == "__main__":
    main()
