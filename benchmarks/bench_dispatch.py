"""Tool calls dispatched as they arrive against the old serialized batches, measured in the same run (issue 30, item 3).

Workload: `--threads` trajectories, each in its own thread as TRL runs tools, make `--calls` calls one after another
through one `SharedExecutor` over one `SandboxPool` of `--pool` workers; each call sleeps a random 5-50 ms in the
sandbox (a tool that waits: I/O, a subprocess), and between calls the trajectory "generates" for a random 0-20 ms.
The same seeded schedule runs under both modes, alternating old, new, old, ...:

- old: the behaviour before the change: the calls that arrive while a batch runs wait, and then run together as the
  next batch (SharedExecutor's batch path; the pool then held one lock over each whole `run`);
- new: each call goes to the pool as it arrives and starts as soon as a worker is free.

Prints the median wall time of a round and the per-call queue wait (time from submission to start) and run time,
and the ratios new / old.

    python benchmarks/bench_dispatch.py --rounds 5
"""

import argparse
import os
import random
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's trl_gtpo

from trl_gtpo.interpreter.environment import SharedExecutor  # noqa: E402
from trl_gtpo.interpreter.executor import CodeCall  # noqa: E402
from trl_gtpo.interpreter.sandbox import SandboxPool  # noqa: E402


class Serialized:
    """The pool as the old SharedExecutor saw it: no `concurrent_runs`, so calls are batched; and one lock over each
    whole `run`, as the old pool held."""

    def __init__(self, pool):
        self.pool, self.lock = pool, threading.Lock()

    def run(self, calls):
        with self.lock:
            return self.pool.run(calls)

    def close_session(self, session_id):
        self.pool.close_session(session_id)

    def close(self):
        pass


def one_round(shared: SharedExecutor, threads: int, calls: int, seed: int, tag: str):
    rng = random.Random(seed)
    plans = [[(rng.uniform(0.005, 0.05), rng.uniform(0.0, 0.02)) for _ in range(calls)] for _ in range(threads)]
    timings = []
    lock = threading.Lock()

    def trajectory(t):
        session = f"{tag}-{seed}-{t}"
        for sleep, think in plans[t]:
            time.sleep(think)
            submitted = time.monotonic()
            result = shared.run_one(CodeCall(session, f"import time\ntime.sleep({sleep:.4f})"))
            finished = time.monotonic()
            assert result.status == "ok", result
            with lock:
                timings.append((result.queue_wait, result.duration, finished - submitted))
        shared.close_session(session)

    workers = [threading.Thread(target=trajectory, args=(t,)) for t in range(threads)]
    start = time.monotonic()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return time.monotonic() - start, timings


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--pool", type=int, default=8, help="sandbox workers (GTPOConfig.tool_pool_size)")
    args = parser.parse_args()

    with SandboxPool(args.pool, timeout=10.0, memory_limit_mb=512, preload=()) as pool:
        modes = {"old": SharedExecutor(executor=Serialized(pool)), "new": SharedExecutor(executor=pool)}
        one_round(modes["new"], args.threads, 2, seed=-1, tag="warm")  # start every worker's spare session
        walls = {"old": [], "new": []}
        calls = {"old": [], "new": []}
        for r in range(args.rounds):
            for mode in ("old", "new"):
                wall, timings = one_round(modes[mode], args.threads, args.calls, seed=r, tag=mode)
                walls[mode].append(wall)
                calls[mode] += timings
    print(f"{args.threads} threads x {args.calls} calls (sleep 5-50 ms each, 0-20 ms between), pool of {args.pool}; "
          f"medians over {args.rounds} rounds per mode")
    figures = {}
    for mode in ("old", "new"):
        wall = statistics.median(walls[mode])
        wait = statistics.median(t[0] for t in calls[mode]) * 1000
        wait_p90 = statistics.quantiles([t[0] for t in calls[mode]], n=10)[-1] * 1000
        run = statistics.median(t[1] for t in calls[mode]) * 1000
        latency = statistics.median(t[2] for t in calls[mode]) * 1000
        figures[mode] = (wall, wait, latency)
        print(f"  {mode}: round {wall:.3f} s; per call: queue wait median {wait:.1f} ms (p90 {wait_p90:.1f}), "
              f"run {run:.1f} ms, submission to result {latency:.1f} ms")
    (old_wall, _, old_latency), (new_wall, _, new_latency) = figures["old"], figures["new"]
    print(f"  ratio new / old: round wall time {new_wall / old_wall:.3f}, call latency {new_latency / old_latency:.3f}")


if __name__ == "__main__":
    main()
