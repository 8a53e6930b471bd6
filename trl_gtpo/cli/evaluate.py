"""The evaluation command's logic (`examples/evaluate.py`): models on math benchmarks through the code-interpreter
loop GTPO trains with, one table, and per model a JSON summary and per-sample traces."""

import argparse
import json
import os
import re

import torch
from transformers import AutoTokenizer

from ..demo.data import DEFAULT_SYNTHETIC_KINDS, is_known_dataset, load_math_dataset
from ..demo.models import resolve_model_name_or_path
from ..demo.prompts import DEFAULT_SYSTEM_PROMPT, build_prompt
from ..evaluation import (
    eos_token_ids,
    evaluate_with,
    transformers_generate_turn,
    vllm_generate_turn,
)
from ..interpreter.loop import CodeInterpreterLoop
from ..interpreter.sandbox import SandboxPool
from ..reporting import benchmark_table
from ..rewards import math_answer_reward

PAPER_BENCHMARKS = "gsm8k,math500,svamp,asdiv,mawps,gsm_hard"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="pass@1 / avg@k of models on math benchmarks with code execution.")
    parser.add_argument("--model_name_or_path", nargs="+", default=["default"], help="One or more models to compare.")
    parser.add_argument("--benchmarks", "--dataset_name", dest="benchmarks", default=PAPER_BENCHMARKS,
                        help="Comma-separated: packaged names and/or load_dataset names or paths.")
    parser.add_argument("--split", default="test")
    parser.add_argument("--dataset_config", default=None, help="load_dataset's `name` for non-packaged benchmarks.")
    parser.add_argument("--limit", type=int, default=None, help="Problems per benchmark (a seeded subset; None: all).")
    parser.add_argument("--k", type=int, default=1, help="Samples per problem: avg@k and pass@k.")
    parser.add_argument("--temperature", type=float, default=None, help="Default: 0 (greedy) for k=1, else 0.7.")
    parser.add_argument("--max_turns", type=int, default=4)
    parser.add_argument("--max_completion_length", type=int, default=1024)
    parser.add_argument("--batch_size", type=int, default=16, help="transformers: trajectories per generate call.")
    parser.add_argument("--backend", choices=("auto", "vllm", "transformers"), default="auto",
                        help="auto: vLLM when it is installed and a GPU is visible, else transformers.")
    parser.add_argument("--vllm_gpu_memory_utilization", type=float, default=0.85)
    parser.add_argument("--vllm_max_model_len", type=int, default=4096)
    parser.add_argument("--synthetic_difficulty", type=int, default=1,
                        help="Size of the numbers of the synthetic task.")
    parser.add_argument("--synthetic_kinds", nargs="+", default=list(DEFAULT_SYNTHETIC_KINDS),
                        help="Kinds of problem of the synthetic task, taking turns: 'product', 'sum', 'modpow', "
                             "'word', 'word_units_first', 'word_reworded', 'word_two_step' (as in "
                             "examples/train_gtpo.py).")
    parser.add_argument("--few_shot_examples", default="arithmetic",
                        help="Worked examples before each question of a packaged set "
                             "(trl_gtpo.demo.prompts.EXAMPLE_SETS): 'arithmetic', 'word' or 'word_steps' (as in "
                             "examples/train_gtpo.py). The synthetic task is generated from --seed: give the training "
                             "run's --synthetic_seed (the main job's: 0) to evaluate on its held-out problems.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", default="eval_results", help="<output_dir>/<model>/{summary.json, *.jsonl}")
    return parser.parse_args(argv)


def load_benchmark(name: str, args):
    """A packaged data set by name, else `datasets.load_dataset(name)`, as `prompt` / `answer` columns."""
    if is_known_dataset(name):
        return load_math_dataset(name, args.split, limit=args.limit, seed=args.seed,
                                 difficulty=args.synthetic_difficulty, kinds=args.synthetic_kinds,
                                 examples=args.few_shot_examples)
    from datasets import load_dataset

    if os.path.isfile(name):
        extension = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}[os.path.splitext(name)[1]]
        dataset = load_dataset(extension, data_files=name, split="train")
    else:
        dataset = load_dataset(name, name=args.dataset_config, split=args.split)
    if "answer" not in dataset.column_names or not {"prompt", "question"} & set(dataset.column_names):
        raise ValueError(
            f"Benchmark {name!r} has columns {dataset.column_names}: it needs `answer` and `prompt` or `question`. "
            f"Rename its columns (Dataset.rename_column) or use a packaged name."
        )
    if args.limit is not None and args.limit < len(dataset):
        dataset = dataset.shuffle(seed=args.seed).select(range(args.limit))
    if "prompt" not in dataset.column_names:
        dataset = dataset.map(lambda row: {"prompt": build_prompt(row["question"], DEFAULT_SYSTEM_PROMPT)})
    return dataset.map(lambda row: {"answer": _final_answer(str(row["answer"]))})


def _final_answer(answer: str) -> str:
    """GSM8K-style references end with "#### 1,234": keep the number."""
    return answer.split("####")[-1].strip().replace(",", "") if "####" in answer else answer


def use_vllm(backend: str) -> bool:
    if backend != "auto":
        return backend == "vllm"
    import importlib.util

    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


class Model:
    """One model on one backend: its tokenizer, its EOS tokens and a `generate_turn` for given stop strings."""

    def __init__(self, name: str, args, temperature: float):
        from transformers import GenerationConfig

        self.path = resolve_model_name_or_path(name)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.temperature, self.args = temperature, args
        self.vllm = use_vllm(args.backend)
        if self.vllm:
            from vllm import LLM

            self.llm = LLM(model=self.path, gpu_memory_utilization=args.vllm_gpu_memory_utilization,
                           max_model_len=args.vllm_max_model_len, seed=args.seed)
            try:
                config_eos = GenerationConfig.from_pretrained(self.path).eos_token_id
            except OSError:  # no generation_config.json
                config_eos = None
            config_eos = config_eos if isinstance(config_eos, list) else [config_eos]
            self.eos = sorted({t for t in [*config_eos, self.tokenizer.eos_token_id] if t is not None})
        else:
            from transformers import AutoModelForCausalLM

            dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
            self.model = AutoModelForCausalLM.from_pretrained(self.path, dtype=dtype)
            self.model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
            self.eos = eos_token_ids(self.model, self.tokenizer)

    def generate_turn(self, stop_strings: list[str]):
        if self.vllm:
            return vllm_generate_turn(self.llm, stop_strings, temperature=self.temperature, seed=self.args.seed)
        return transformers_generate_turn(self.model, self.tokenizer, stop_strings, temperature=self.temperature,
                                          batch_size=self.args.batch_size)


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    names = [name.strip() for name in args.benchmarks.split(",") if name.strip()]
    benchmarks = {name: load_benchmark(name, args) for name in names}  # fail on a bad name before loading a model
    temperature = args.temperature if args.temperature is not None else (0.0 if args.k == 1 else 0.7)
    rows = {}
    with SandboxPool() as executor:
        for model_name in args.model_name_or_path:
            model = Model(model_name, args, temperature)
            directory = os.path.join(args.output_dir, _slug(model_name))
            os.makedirs(directory, exist_ok=True)
            summary = {}
            for name, dataset in benchmarks.items():
                loop = CodeInterpreterLoop(model.tokenizer, executor, max_turns=args.max_turns,
                                           max_completion_length=args.max_completion_length, eos_token_ids=model.eos)
                report = evaluate_with(
                    loop, model.generate_turn(loop.stop_strings), model.tokenizer, dataset, math_answer_reward,
                    k=args.k, batch_size=len(dataset) * args.k if model.vllm else args.batch_size,
                    progress=f"{model_name} {name}",
                )
                problems = report.pop("problems")
                traces = os.path.join(directory, f"{_slug(name)}.traces.jsonl")
                with open(traces, "w") as file:
                    for problem in problems:
                        file.write(json.dumps(problem, default=str) + "\n")
                summary[name] = {**report, "traces": traces}
                label = name if len(args.model_name_or_path) == 1 else f"{model_name}: {name}"
                rows[label] = report
            backend = "vllm" if model.vllm else "transformers"
            settings = vars(args) | {"temperature": temperature, "backend": backend}
            with open(os.path.join(directory, "summary.json"), "w") as file:
                summary_file = {"model": model_name, "settings": settings, "benchmarks": summary}
                json.dump(summary_file, file, indent=1, default=str)
            print(f"{model_name}: summary and traces written to {directory}/")
            del model
    print(benchmark_table(rows))
    return rows


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"
