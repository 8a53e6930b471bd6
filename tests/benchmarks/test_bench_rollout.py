"""benchmarks/bench_rollout.py's arithmetic, without a server: the workloads it draws, the computed floor it divides
by and the critical paths that bound async / lockstep, checked against values worked out by hand."""

import types

import pytest

from benchmarks import bench_rollout as bench


def test_workload_draws_turn_lengths_in_range_with_every_turn_count():
    work = bench.workload(8, seed=0, vocab=1000, min_tokens=64, max_tokens=512, max_turns=3)
    assert [len(t["turns"]) for t in work] == [1, 2, 3, 1, 2, 3, 1, 2]
    assert all(64 <= n <= 512 for t in work for n in t["turns"])
    assert all(len(t["prompt"]) == 16 and all(3 <= i < 1000 for i in t["prompt"]) for t in work)


def test_workload_lengths_do_not_depend_on_the_vocabulary_or_on_later_trajectories():
    """So the GPU check's 16 trajectories start with the CPU run's 8, whatever the model."""
    small = bench.workload(8, 0, 1000, 64, 512, 3, round_index=2)
    large = bench.workload(16, 0, 49152, 64, 512, 3, round_index=2)
    assert [t["turns"] for t in large[:8]] == [t["turns"] for t in small]


def test_each_round_draws_anew_unless_the_workload_is_fixed(tiny_model_path):
    args = types.SimpleNamespace(trajectories=4, seed=0, min_tokens=64, max_tokens=512, max_turns=3, rounds=3,
                                 fixed_workload=False, tool_tokens=8, probe_tokens=64)
    _, drawn = bench.build(args, tiny_model_path)
    assert len(drawn) == 3 and len({str(w) for w in drawn}) == 3
    _, fixed = bench.build(types.SimpleNamespace(**{**vars(args), "fixed_workload": True}), tiny_model_path)
    assert fixed == [drawn[0]] * 3
    # the server's context holds the longest trajectory (prompt, turns, tool tokens) of every round
    longest = max(16 + sum(t["turns"]) + 8 * (len(t["turns"]) - 1) for w in drawn for t in w)
    assert bench.model_len(drawn, args) >= longest and bench.model_len(drawn, args) % 256 == 0


def test_floor_sums_step_costs_as_the_batch_empties():
    # Trajectories of 10, 30 and 60 tokens started together: 10 steps with 3 live, 20 with 2, 30 with 1.
    step = {1: 0.010, 2: 0.012, 4: 0.020}  # t(3) interpolated: 0.016
    bounds = bench.floors([30, 10, 60], step)
    assert bounds["floor"] == pytest.approx(10 * 0.016 + 20 * 0.012 + 30 * 0.010)
    assert bounds["longest_alone"] == pytest.approx(60 * 0.010)
    assert bounds["full_batch_throughput"] == pytest.approx(100 * 0.016 / 3)
    assert bounds["floor"] >= max(bounds["longest_alone"], bounds["full_batch_throughput"])


def test_critical_paths_of_lockstep_and_async():
    work = [{"turns": [100, 10]}, {"turns": [10, 100]}, {"turns": [50]}]
    paths = bench.critical_paths(work)
    assert paths["lockstep"] == 200  # each turn waits for its 100-token answer
    assert paths["async"] == 110  # the longest trajectory
    assert paths["async / lockstep"] == pytest.approx(0.55)


def test_probe_sizes_cover_the_batch_sizes_the_floor_interpolates():
    assert bench.probe_sizes(1) == [1]
    assert bench.probe_sizes(6) == [1, 2, 4, 6]
    assert bench.probe_sizes(8) == [1, 2, 4, 8]


def test_spread_reports_quartiles_from_four_values():
    assert bench.spread([3.0, 1.0]) == {"median": 2.0, "min": 1.0, "max": 3.0}
    summary = bench.spread([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (summary["q1"], summary["median"], summary["q3"]) == (2.0, 3.0, 4.0)
