"""GTPO across 2 processes (DDP over gloo on the CPU): the turn advantages of a group split across ranks equal those
of a 1-process run on the same scripted rollouts."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "tests", "integration", "gtpo_scripted_run.py")


def read_ranks(out_dir):
    files = sorted(f for f in os.listdir(out_dir) if f.startswith("rank"))
    return [json.load(open(os.path.join(out_dir, f))) for f in files]


def test_two_process_advantages_equal_one_process_ones(tiny_model_path, tmp_path):
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    single = tmp_path / "single"
    subprocess.run([sys.executable, SCRIPT, tiny_model_path, str(single), "4"], check=True, env=env, cwd=REPO, timeout=600)
    double = tmp_path / "double"
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    result = subprocess.run(
        [accelerate, "launch", "--config_file", "accelerate_configs/multi_process.yaml", "--num_processes", "2",
         "--main_process_port", "29517", SCRIPT, tiny_model_path, str(double), "2"],
        env=env, cwd=REPO, timeout=900, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-4000:]

    (one,) = read_ranks(single)
    two = read_ranks(double)
    assert [r["rank"] for r in two] == [0, 1] and all(r["world_size"] == 2 for r in two)  # 2 processes really ran
    assert sorted(two[0]["turn_advantages"]) == ["A", "B"] and sorted(two[1]["turn_advantages"]) == ["C", "D"]
    merged = {**two[0]["turn_advantages"], **two[1]["turn_advantages"]}
    assert merged.keys() == one["turn_advantages"].keys()
    for tag, values in one["turn_advantages"].items():
        assert merged[tag] == pytest.approx(values, abs=1e-5), tag
    assert len(set(round(v, 4) for values in merged.values() for v in values)) > 3  # a real, varied signal


FAILURE_SCRIPT = os.path.join(REPO, "tests", "integration", "executor_failure_run.py")


def test_an_executor_failing_on_one_rank_stops_every_rank_with_the_cause(tiny_model_path, tmp_path):
    """Issue 30, item 6: the executor raises on rank 1 only. Both ranks must stop with an ExecutorError naming rank
    1's cause (before, rank 0 went on into its next collective and waited there for rank 1, until the launcher killed
    it without a word of why, or the backend's 30-minute timeout). A hang fails through the subprocess timeout."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    out = tmp_path / "failure"
    result = subprocess.run(
        [accelerate, "launch", "--config_file", "accelerate_configs/multi_process.yaml", "--num_processes", "2",
         "--main_process_port", "29518", FAILURE_SCRIPT, tiny_model_path, str(out)],
        env=env, cwd=REPO, timeout=600, capture_output=True, text=True,
    )
    assert result.returncode != 0
    reports = {name: (out / name).read_text() for name in ("rank0.txt", "rank1.txt") if (out / name).exists()}
    assert sorted(reports) == ["rank0.txt", "rank1.txt"], (reports, result.stderr[-4000:])
    for name, report in reports.items():
        assert report.startswith("ExecutorError: The code executor failed on process 1 of 2"), (name, report)
        assert "sandbox service down on rank 1" in report, (name, report)
    assert "sandbox service down on rank 1" in result.stderr
