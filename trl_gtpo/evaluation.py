"""pass@1 / avg@k of a model with the same code-interpreter loop it is trained with (no trainer needed)."""

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from transformers import StoppingCriteriaList

from ._trl_compat import stop_padding_start, stop_string_criteria
from .interpreter.loop import CodeInterpreterLoop, Trajectory
from .interpreter.transcript import code_blocks
from .prefix_cache import PrefixCache, can_cache_prefix, generate_from_shared_prefix
from .turn_records import turn_spans


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every token that ends generation: the model's generation config's EOS tokens and the tokenizer's."""
    eos = model.generation_config.eos_token_id
    eos = eos if isinstance(eos, list) else [eos]
    return sorted({token for token in [*eos, tokenizer.eos_token_id] if token is not None})


def transformers_generate_turn(
    model,
    tokenizer,
    stop_strings,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    batch_size: int = 16,
    cache_prefix: bool = True,
):
    """A `generate_turn` on plain `model.generate` (left padding, stop strings), for evaluation outside a trainer.

    With `cache_prefix`, the prompts' shared beginning (the system prompt and worked examples, most of each prompt) is
    run through the model once and its KV cache reused by every row, chunk and turn (`trl_gtpo.prefix_cache`).
    """
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = set(eos_token_ids(model, tokenizer))
    sampling = {"do_sample": False}
    if temperature > 0:
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p}
    prefixes = PrefixCache(model) if cache_prefix and can_cache_prefix(model) else None
    criteria = StoppingCriteriaList([stop_string_criteria(tokenizer, stop_strings)])

    @torch.no_grad()
    def generate_turn(prompt_ids: list[list[int]], max_new_tokens: int):
        outputs = []
        for start in range(0, len(prompt_ids), batch_size):
            chunk = prompt_ids[start : start + batch_size]
            width = max(len(ids) for ids in chunk)
            options = dict(max_new_tokens=max_new_tokens, stopping_criteria=criteria, pad_token_id=pad, **sampling)
            generated = generate_from_shared_prefix(
                model.generate, chunk, width, pad, cache=prefixes, device=model.device, **options
            )
            for history, ids in zip(chunk, generated[:, width:].tolist(), strict=True):
                end = next((k + 1 for k, token in enumerate(ids) if token in eos), len(ids))
                ids = ids[:end]
                outputs.append(ids[: stop_padding_start(ids, tokenizer, eos, stop_strings, history)])
        return outputs, None

    return generate_turn


@dataclass
class SampleResult:
    question: str
    answer: str
    samples: list[dict]  # per sample: completion, turns (code, output, status), predicted, correct
    correct: list[bool]


def evaluate(
    model,
    tokenizer,
    dataset,
    executor,
    reward_func: Callable,
    *,
    k: int = 1,
    max_turns: int = 4,
    max_completion_length: int = 512,
    stop_marker: str = "```output",
    temperature: float = 0.0,
    batch_size: int = 16,
    progress: bool | str = True,
) -> dict:
    """Run every prompt of `dataset` (columns `prompt`, `answer`) k times through the code interpreter and score each
    completion with `reward_func` (a TRL reward function; a reward >= 1 counts as correct). Besides TRL's arguments
    it gets `model_turns` (each completion's model turns, from the tool mask) and `stop_marker`, which
    `math_answer_reward` reads; other reward functions take them in their `**kwargs`.

    Returns a report: `pass@1` (mean correctness of the first sample), `avg@k` (mean over all k samples), `pass@k`,
    mean turns and tool calls, per-sample traces, and `benchmark_fields` (pass@1's 95% interval, tool calls per
    problem, tool error rate).
    """
    loop = CodeInterpreterLoop(
        tokenizer,
        executor,
        max_turns=max_turns,
        max_completion_length=max_completion_length,
        stop_marker=stop_marker,
        eos_token_ids=eos_token_ids(model, tokenizer),
    )
    generate_turn = transformers_generate_turn(
        model, tokenizer, loop.stop_strings, temperature=temperature, batch_size=batch_size
    )
    was_training = model.training
    model.eval()  # after trainer.train() the model is in train mode: dropout on, and no KV cache with checkpointing
    try:
        return evaluate_with(loop, generate_turn, tokenizer, dataset, reward_func, k=k, batch_size=batch_size,
                             progress=progress)
    finally:
        model.train(was_training)


def evaluate_with(
    loop: CodeInterpreterLoop,
    generate_turn,
    tokenizer,
    dataset,
    reward_func: Callable,
    *,
    k: int = 1,
    batch_size: int = 16,
    progress: bool | str = True,
) -> dict:
    """`evaluate` on any backend: `generate_turn` is `transformers_generate_turn`, `vllm_generate_turn` or any
    `GenerateTurn`. Each `loop.run` takes `batch_size // k` problems (vLLM: pass the whole data set's size, so that
    every turn is one batch). `progress`: show a progress bar, labelled with it when it is a string."""
    results = _run(loop, generate_turn, tokenizer, dataset, reward_func, k, batch_size, progress)
    report = _report(results, k)
    return {**report, **benchmark_fields(report)}


def vllm_generate_turn(llm, stop_strings: list[str], *, temperature: float = 0.0, top_p: float = 1.0, seed=None):
    """A `generate_turn` on a `vllm.LLM`: all live trajectories of a turn in one `llm.generate` call, as TRL's
    colocate mode sends them (`{"prompt_token_ids": ...}` prompts, so nothing is re-tokenized)."""
    from vllm import SamplingParams

    def generate_turn(prompt_ids: list[list[int]], max_new_tokens: int):
        params = SamplingParams(
            max_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            stop=list(stop_strings),
            include_stop_str_in_output=True,  # the loop reads the stop string to end the turn
            seed=seed,
        )
        prompts = [{"prompt_token_ids": ids} for ids in prompt_ids]
        outputs = llm.generate(prompts, sampling_params=params, use_tqdm=False)
        return [list(output.outputs[0].token_ids) for output in outputs], None

    return generate_turn


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% (z=1.96) Wilson score interval of a success rate: unlike the normal approximation it stays inside [0, 1]
    and is not empty at 0 or n successes, which small held-out sets hit often."""
    if n == 0:
        return math.nan, math.nan
    p = successes / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, center - half), min(1.0, center + half)


def benchmark_fields(report: dict) -> dict:
    """The benchmark table's columns beside pass@1 and avg@k: pass@1's 95% interval over the problems, tool calls
    (code that ran) per attempt at a problem, and the fraction of those calls that failed."""
    firsts = [problem["correct"][0] for problem in report["problems"]]
    samples = [sample for problem in report["problems"] for sample in problem["samples"]]
    calls = sum(sample["tool_calls"] for sample in samples)
    errors = sum(sample["tool_errors"] for sample in samples)
    low, high = wilson_interval(sum(firsts), len(firsts))
    return {
        "pass@1_low": low,
        "pass@1_high": high,
        "tool_calls_per_problem": calls / max(1, len(samples)),
        "tool_error_rate": errors / calls if calls else math.nan,
    }


def _run(loop, generate_turn, tokenizer, dataset, reward_func, k, batch_size, progress) -> list["SampleResult"]:
    from tqdm.auto import tqdm

    from .rewards import final_answer

    results: list[SampleResult] = []
    rows = list(dataset)
    chunk_size = max(1, batch_size // k)
    bar = tqdm(total=len(rows), desc=progress if isinstance(progress, str) else "evaluating", disable=not progress)
    for start in range(0, len(rows), chunk_size):
        chunk = rows[start : start + chunk_size]
        prompts = [row["prompt"] for row in chunk for _ in range(k)]
        prompt_ids = [_prompt_ids(tokenizer, prompt) for prompt in prompts]
        trajectories = loop.run(prompt_ids, generate_turn)
        texts = [tokenizer.decode(t.completion_ids, skip_special_tokens=True) for t in trajectories]
        model_turns = [_model_turns(t, tokenizer) for t in trajectories]
        answers = [row["answer"] for row in chunk for _ in range(k)]
        completions = [[{"role": "assistant", "content": text}] for text in texts]
        # The model's own turns (from the tool mask) and the stop marker, as a rollout_func's extra fields would pass
        # them: a reward that reads them never takes tool output for the model's words.
        rewards = reward_func(
            completions=completions,
            answer=answers,
            prompts=prompts,
            model_turns=model_turns,
            stop_marker=[loop.stop_marker] * len(texts),
        )
        for i, row in enumerate(chunk):
            samples, correct = [], []
            for j in range(i * k, (i + 1) * k):
                ok = rewards[j] is not None and rewards[j] >= 1.0
                correct.append(ok)
                predicted = final_answer(model_turns[j], stop_marker=loop.stop_marker)
                samples.append(_trace(trajectories[j], texts[j], predicted, ok))
            results.append(SampleResult(_question(row["prompt"]), str(row["answer"]), samples, correct))
        bar.update(len(chunk))
    bar.close()
    return results


def _model_turns(trajectory: Trajectory, tokenizer) -> list[str]:
    """The text of each model turn: the runs of tokens the tool mask marks as the model's (each turn but the last
    is followed by its tool output)."""
    ids = trajectory.completion_ids
    spans = turn_spans(trajectory.tool_mask)
    return [tokenizer.decode(ids[start:end], skip_special_tokens=True) for start, end in spans]


def _prompt_ids(tokenizer, prompt) -> list[int]:
    if isinstance(prompt, str):
        return tokenizer.encode(prompt, add_special_tokens=False)
    text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    return tokenizer.encode(text, add_special_tokens=False)


def _question(prompt) -> str:
    return prompt if isinstance(prompt, str) else prompt[-1]["content"]


def _trace(trajectory: Trajectory, text: str, predicted, correct: bool) -> dict:
    return {
        "completion": text,
        "turns": [asdict(turn) for turn in trajectory.turns],
        "stop_reason": trajectory.stop_reason,
        "predicted": predicted,
        "correct": correct,
        "wrote_code": bool(code_blocks(text)),
        "tool_calls": trajectory.num_tool_calls,
        "tool_errors": trajectory.num_tool_errors,
    }


def _report(results: list[SampleResult], k: int) -> dict:
    n = max(1, len(results))
    samples = [s for r in results for s in r.samples]
    return {
        "num_problems": len(results),
        "k": k,
        "pass@1": sum(r.correct[0] for r in results) / n,
        f"avg@{k}": sum(sum(r.correct) / k for r in results) / n,
        f"pass@{k}": sum(any(r.correct) for r in results) / n,
        "mean_turns": sum(len(s["turns"]) for s in samples) / max(1, len(samples)),
        "frac_wrote_code": sum(s["wrote_code"] for s in samples) / max(1, len(samples)),
        # Code that ran: a turn without code (status None) or a stop marker without code ("no_code") is no tool call.
        "mean_tool_calls": sum(sum(t["status"] not in (None, "no_code") for t in s["turns"]) for s in samples)
        / max(1, len(samples)),
        "problems": [asdict(r) for r in results],
    }


def save_report(report: dict, path: str) -> None:
    with open(path, "w") as file:
        json.dump(report, file, indent=1, default=str)
