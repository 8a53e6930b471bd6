"""Benchmark of the local code sandbox: SandboxPool against a fresh `python -c` subprocess per call.

Measures, in the same run and on the same machine:
  1. per-call latency (median, p99) of a small snippet, one call at a time: through a persistent pool session, through
     a fresh pool session per call (`persistent_sessions=False`), and through a fresh `python -c` subprocess;
  2. wall time of one turn of N trajectories (N calls in one `run`): the first turn (every session is new) and a later
     turn (warm sessions), against the same N snippets through fresh subprocesses, as many at once as pool workers;
  3. the same under 1 and 2 training ranks on this node (each rank a process with its own pool, the two running at
     once), with the default pool size (the rank's share of the cores) and with one worker per core in every rank
     (what each rank started before the default followed LOCAL_WORLD_SIZE), as ratios against the 1-rank run.

    python benchmarks/bench_sandbox.py                       # defaults: 200 calls, 64 trajectories
    python benchmarks/bench_sandbox.py --sympy               # also a snippet that uses sympy (preloaded by the pool)
"""

import argparse
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import time

from trl_gtpo.interpreter.executor import CodeCall
from trl_gtpo.interpreter.sandbox import SandboxPool
from trl_gtpo.interpreter.sandbox.pool import DEFAULT_PRELOAD

SMALL = "x = sum(i * i for i in range(1000))\nprint(x)"
SYMPY = "import sympy\nx = sympy.symbols('x')\nprint(sympy.solve(x**2 - 5*x + 6, x))"


def quantiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered), p99


def time_calls(fn, n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t0)
    return out


def subprocess_call(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    return done.stdout


def expect(output: str, code: str, expected: str) -> None:
    if output.strip() != expected:
        raise SystemExit(f"unexpected output for {code!r}: {output!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200, help="sequential calls for the latency rows")
    parser.add_argument("--subprocess-calls", type=int, default=50, help="sequential calls through `python -c`")
    parser.add_argument("--trajectories", type=int, default=64, help="calls in one turn")
    parser.add_argument("--pool-size", type=int, default=None, help="workers (default: one per core, at most 8)")
    parser.add_argument("--sympy", action="store_true", help="also time a snippet that imports sympy")
    parser.add_argument("--as-rank", action="store_true", help=argparse.SUPPRESS)  # one rank of section 3
    args = parser.parse_args()
    if args.as_rank:
        return rank_main(args)

    t0 = time.perf_counter()
    pool = SandboxPool(args.pool_size, preload=DEFAULT_PRELOAD)
    start = time.perf_counter() - t0
    fresh_pool = SandboxPool(args.pool_size, preload=DEFAULT_PRELOAD, persistent_sessions=False)
    print(f"pool: {pool.size} workers, started in {start:.2f} s (preload: {', '.join(DEFAULT_PRELOAD)})")
    print("isolation: " + "; ".join(pool.isolation_layers))
    expected = subprocess_call(SMALL).strip()

    rows = []
    try:
        # 1. per-call latency, one call at a time
        for _ in range(5):  # warm-up: the first call of a session binds it
            expect(pool.run([CodeCall("latency", SMALL)])[0].output, SMALL, expected)
        warm = time_calls(lambda i: pool.run([CodeCall("latency", SMALL)]), args.calls)
        fresh = time_calls(lambda i: fresh_pool.run([CodeCall(f"f{i}", SMALL)]), args.calls)
        proc = time_calls(lambda i: subprocess_call(SMALL), args.subprocess_calls)
        base = statistics.median(proc)
        print(f"\n1. latency of one small call ({SMALL!r}), sequential")
        print(f"{'path':<38}{'calls':>7}{'median ms':>12}{'p99 ms':>10}{'speed-up':>10}")
        for name, samples in (
            ("pool, persistent session", warm),
            ("pool, fresh session per call", fresh),
            ("fresh `python -c` subprocess", proc),
        ):
            med, p99 = quantiles(samples)
            print(f"{name:<38}{len(samples):>7}{med * 1e3:>12.2f}{p99 * 1e3:>10.2f}{base / med:>9.1f}x")
            rows.append((name, med))

        # 2. one turn of N trajectories
        snippets = [("small", SMALL)] + ([("sympy", SYMPY)] if args.sympy else [])
        print(f"\n2. one turn of {args.trajectories} trajectories (one call each, in one run), {pool.size} at a time")
        print(f"{'snippet':<8}{'path':<40}{'wall s':>9}{'speed-up':>10}")
        for label, code in snippets:
            sessions = [f"{label}-{i}" for i in range(args.trajectories)]
            t0 = time.perf_counter()
            first = pool.run([CodeCall(s, code) for s in sessions])
            t_first = time.perf_counter() - t0
            t0 = time.perf_counter()
            later = pool.run([CodeCall(s, code) for s in sessions])
            t_later = time.perf_counter() - t0
            bad = [r for r in first + later if r.status != "ok"]
            if bad:
                raise SystemExit(f"pool calls failed: {bad[:2]}")
            with concurrent.futures.ThreadPoolExecutor(pool.size) as ex:
                t0 = time.perf_counter()
                outs = list(ex.map(subprocess_call, [code] * args.trajectories))
                t_proc = time.perf_counter() - t0
            if len(set(outs)) != 1 or outs[0].strip() != first[0].output.strip():
                raise SystemExit(f"subprocess and pool disagree: {outs[0]!r} vs {first[0].output!r}")
            for name, t in (
                ("pool, first turn (new sessions)", t_first),
                ("pool, later turn (warm sessions)", t_later),
                ("fresh `python -c` subprocesses", t_proc),
            ):
                print(f"{label:<8}{name:<40}{t:>9.3f}{t_proc / t:>9.1f}x")
            for s in sessions:
                pool.close_session(s)
    finally:
        pool.close()
        fresh_pool.close()
    ratio = rows[2][1] / rows[0][1]
    print(f"\nper-call median speed-up of the pool over `python -c`: {ratio:.0f}x (target >= 10x)")
    ranks_section(args)


def rank_main(args) -> None:
    """One training rank: start a pool, wait for the others, time warm calls and one turn, print the numbers."""
    pool = SandboxPool(args.pool_size, preload=DEFAULT_PRELOAD)
    try:
        for _ in range(5):
            pool.run([CodeCall("latency", SMALL)])
        print(json.dumps({"ready": True}), flush=True)
        sys.stdin.readline()  # go: every rank starts measuring at once
        warm = time_calls(lambda i: pool.run([CodeCall("latency", SMALL)]), args.calls)
        sessions = [f"turn-{i}" for i in range(args.trajectories)]
        t0 = time.perf_counter()
        pool.run([CodeCall(s, SMALL) for s in sessions])
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        later = pool.run([CodeCall(s, SMALL) for s in sessions])
        t_later = time.perf_counter() - t0
        if any(r.status != "ok" for r in later):
            raise SystemExit(f"pool calls failed: {later[:2]}")
        print(json.dumps({"size": pool.size, "warm": quantiles(warm), "first": first, "later": t_later}), flush=True)
    finally:
        pool.close()


def run_ranks(n: int, args, pool_size: int | None) -> list[dict]:
    """Start `n` ranks (processes, LOCAL_WORLD_SIZE=n), let them measure at the same time, return their numbers."""
    cmd = [sys.executable, os.path.abspath(__file__), "--as-rank", "--calls", str(args.calls)]
    cmd += ["--trajectories", str(args.trajectories)] + (["--pool-size", str(pool_size)] if pool_size else [])
    env = dict(os.environ, LOCAL_WORLD_SIZE=str(n))
    procs = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env) for _ in range(n)]
    try:
        for p in procs:
            if not json.loads(p.stdout.readline() or "{}").get("ready"):
                raise SystemExit(f"a rank failed to start its pool (exit code {p.wait()})")
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        return [json.loads(p.stdout.readline()) for p in procs]
    finally:
        for p in procs:
            p.stdin.close()
            p.wait()


def ranks_section(args) -> None:
    cores = len(os.sched_getaffinity(0))
    print(f"\n3. {args.calls} warm calls then one turn of {args.trajectories} trajectories per rank, ranks at once")
    print(f"{'ranks':<7}{'pool size per rank':<36}{'median ms':>10}{'p99 ms':>9}{'turn s':>9}{'vs 1 rank':>14}")
    base = None
    for n, size, label in (
        (1, None, "default"),
        (2, None, "default (cores / ranks)"),
        (2, cores, "one per core (old default)"),
    ):
        results = run_ranks(n, args, size)
        med = statistics.mean(r["warm"][0] for r in results)
        p99 = max(r["warm"][1] for r in results)
        turn = max(r["later"] for r in results)
        base = base or (med, turn)
        sizes = "+".join(str(r["size"]) for r in results)
        ratio = f"{med / base[0]:.2f}x/{turn / base[1]:.2f}x"
        print(f"{n:<7}{label + ' = ' + sizes:<36}{med * 1e3:>10.2f}{p99 * 1e3:>9.2f}{turn:>9.3f}{ratio:>14}")
    print("(median: mean over ranks; p99 and turn: the slowest rank; ratios: median / warm turn against 1 rank)")


if __name__ == "__main__":
    main()
