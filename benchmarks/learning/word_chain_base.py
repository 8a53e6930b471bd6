"""The packaged pretrained model on the word chain, before any training: does every step have room to improve?

    python benchmarks/learning/word_chain_base.py            # 32 held-out chains, greedy and temperature 0.5
    python benchmarks/learning/word_chain_base.py --steps 3  # the 3-step variant (no unit conversion)

Per step: the fraction of chains whose step is right by `word_chain.step_checks` (against the previous printed
value), in the code-interpreter loop of training, with the prompt's shared prefix cached; the outcome (boxed final
value); and the teacher-forced probability of each step's right code block (the planned held-out measure). Writes
benchmarks/results/credit_pretrained_base_<steps>steps.json (credit_pretrained_base.json records the first versions).
"""

import argparse
import json
import os
import statistics
import time

import script_env  # noqa: F401  first: offline defaults and this checkout's trl_gtpo on sys.path

# isort: split
import word_chain

HERE = os.path.dirname(os.path.abspath(__file__))


def sampled(model, tokenizer, rows, temperature: float, batch_size: int, max_completion_length: int = 200,
            seed: int = 0) -> dict:
    """Per-step accuracy, outcome and calls per chain of one pass over `rows` at `temperature` (0: greedy)."""
    import torch

    from trl_gtpo.evaluation import eos_token_ids, transformers_generate_turn
    from trl_gtpo.interpreter.loop import CodeInterpreterLoop
    from trl_gtpo.interpreter.rollout import turn_records
    from trl_gtpo.interpreter.sandbox import SandboxPool

    torch.manual_seed(seed)
    prompts = [tokenizer.encode(tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False),
                                add_special_tokens=False) for r in rows]
    with SandboxPool(size=1) as executor:
        loop = CodeInterpreterLoop(tokenizer, executor, max_turns=len(rows[0]["steps"]) + 1,
                                   max_completion_length=max_completion_length,
                                   eos_token_ids=eos_token_ids(model, tokenizer))
        generate = transformers_generate_turn(model, tokenizer, loop.stop_strings, temperature=temperature,
                                              batch_size=batch_size)
        trajectories = loop.run(prompts, generate)
    steps = len(rows[0]["steps"])
    right = [[False] * steps for _ in rows]
    texts, calls = [], []
    for k, (trajectory, example) in enumerate(zip(trajectories, rows)):
        turns = turn_records(trajectory, tokenizer.decode)
        for _, step, ok in word_chain.step_checks(turns, example["steps"], example["intermediates"]):
            if step < steps:
                right[k][step] = ok
        texts.append(tokenizer.decode(trajectory.completion_ids, skip_special_tokens=True))
        calls.append(sum(turn.ran for turn in turns))
    outcome = word_chain.boxed_answer_reward(texts, [r["answer"] for r in rows])
    return {"steps": [statistics.fmean(r[j] for r in right) for j in range(steps)],
            "outcome": statistics.fmean(outcome), "calls": statistics.fmean(calls),
            "transcripts": texts, "seconds": loop.seconds}


def starting_model(model: str = "default"):
    """The packaged starting model (or `model`) and its tokenizer, untrained, on one thread."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_gtpo.demo.models import resolve_model_name_or_path

    torch.set_num_threads(1)
    path = resolve_model_name_or_path(model)
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--steps", type=int, default=word_chain.STEPS, choices=(3, 4))
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 0.5])
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_completion_length", type=int, default=200)
    parser.add_argument("--no_teacher_forced", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    model, tokenizer = starting_model()
    model.eval()
    rows = word_chain.test_problems(args.n, args.steps)
    report = {"n": args.n, "steps": args.steps, "model": "SmolLM2-135M-Instruct (packaged)"}
    if not args.no_teacher_forced:
        began = time.perf_counter()
        probabilities = word_chain.step_probabilities(model, tokenizer, rows)
        report["teacher_forced"] = [statistics.fmean(p[j] for p in probabilities) for j in range(args.steps + 1)]
        report["teacher_forced_seconds"] = time.perf_counter() - began
        print(f"teacher-forced P(step right), each step and the answer: "
              f"{[round(v, 3) for v in report['teacher_forced']]} ({report['teacher_forced_seconds']:.0f} s)", flush=True)
    for temperature in args.temperatures:
        began = time.perf_counter()
        result = sampled(model, tokenizer, rows, temperature, args.batch_size, args.max_completion_length)
        result["wall_seconds"] = time.perf_counter() - began
        report[f"temperature {temperature}"] = result
        print(f"temperature {temperature}: steps {[round(v, 3) for v in result['steps']]}, outcome "
              f"{result['outcome']:.3f}, calls {result['calls']:.2f} ({result['wall_seconds']:.0f} s)", flush=True)
        print("\n---\n".join(result["transcripts"][:3]), flush=True)
    out = args.out or os.path.join(os.path.dirname(HERE), "results", f"credit_pretrained_base_{args.steps}steps.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as file:
        json.dump(report, file, indent=1)


if __name__ == "__main__":
    main()
