"""The accelerate configs really start the processes they claim, and GRPO training runs under them on the CPU.

Trainer under test: TRL's GRPOTrainer, or GTPOTrainer with GTPO_INTEGRATION_TRAINER=gtpo.
Measured on the 2-core CPU machine (warm caches): DDP 2 processes ~30 s, ZeRO-3 2 processes ~30 s
(+~100 s the first time DeepSpeed JIT-builds its shm comm op into ~/.cache/torch_extensions).
"""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _launch_utils import TRAIN_SCRIPT, TRAINER, accelerate_cmd, rank_reports, run, tail  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

ENV = {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}

RANK_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch.distributed as dist
    from accelerate import PartialState
    s = PartialState(cpu=True)  # what TrainingArguments(use_cpu=True) builds on a machine without CUDA
    rank = os.environ.get("RANK", "none")
    with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as f:
        json.dump({"env_rank": rank, "index": s.process_index, "world_size": s.num_processes,
                   "type": str(s.distributed_type), "backend": s.backend, "pid": os.getpid()}, f)
    if dist.is_initialized():
        dist.destroy_process_group()
    """
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from tiny_model import build

    return build(tmp_path_factory.mktemp("integration") / "tiny-model")


def _rank_probe(tmp_path, *launch_args):
    script = tmp_path / "probe.py"
    script.write_text(RANK_SCRIPT)
    out = tmp_path / "ranks"
    out.mkdir()
    log = tmp_path / "launch.log"
    rc, _ = run([*launch_args, str(script), str(out)], log, timeout=180, env=ENV)
    assert rc == 0, tail(log)
    return rank_reports(out)


def test_multi_process_config_starts_two_gloo_ranks(tmp_path):
    reports = _rank_probe(tmp_path, *accelerate_cmd("multi_process.yaml"))
    assert sorted(r["index"] for r in reports) == [0, 1]
    assert {r["world_size"] for r in reports} == {2}
    assert {r["type"] for r in reports} == {"DistributedType.MULTI_CPU"} and {r["backend"] for r in reports} == {"gloo"}
    assert len({r["pid"] for r in reports}) == 2


def test_single_process_config_starts_one_process(tmp_path):
    reports = _rank_probe(tmp_path, *accelerate_cmd("single_process.yaml"))
    assert len(reports) == 1 and reports[0]["world_size"] == 1


def test_cpu_flag_without_config_starts_only_one_process(tmp_path):
    """The pitfall the configs avoid: `accelerate launch --cpu --num_processes 2` runs ONE plain process."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    reports = _rank_probe(tmp_path, *cmd)
    assert len(reports) == 1 and reports[0]["world_size"] == 1 and reports[0]["env_rank"] == "none"


def test_grpo_ddp_two_processes(tmp_path, tiny_dir):
    out = tmp_path / "run"
    log = tmp_path / "train.log"
    cmd = accelerate_cmd("multi_process.yaml", str(TRAIN_SCRIPT), "--trainer", TRAINER, "--output-dir", str(out),
                         "--model-dir", str(tiny_dir), "--max-steps", "2")
    rc, seconds = run(cmd, log, timeout=900, env=ENV)
    assert rc == 0, tail(log)
    reports = rank_reports(out)
    assert [r["rank"] for r in reports] == [0, 1], tail(log)
    for r in reports:
        assert r["world_size"] == 2 and r["torch_dist_world_size"] == 2 and r["torch_dist_backend"] == "gloo"
        assert r["distributed_type"] == "DistributedType.MULTI_CPU"
        assert r["global_step"] == 2
    assert reports[0]["pid"] != reports[1]["pid"]
    print(f"DDP 2 processes: {seconds:.1f} s wall", reports[0]["seconds"])


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed")
def test_grpo_zero3_two_processes_partitioned_with_ref_model(tmp_path, tiny_dir):
    out = tmp_path / "run"
    log = tmp_path / "train.log"
    cmd = accelerate_cmd("zero3.yaml", str(TRAIN_SCRIPT), "--trainer", TRAINER, "--output-dir", str(out),
                         "--model-dir", str(tiny_dir), "--max-steps", "2", "--beta", "0.04")
    rc, seconds = run(cmd, log, timeout=1200, env=ENV)
    assert rc == 0, tail(log)
    reports = rank_reports(out)
    assert [r["rank"] for r in reports] == [0, 1], tail(log)
    for r in reports:
        assert r["world_size"] == 2 and r["torch_dist_world_size"] == 2
        assert r["distributed_type"] == "DistributedType.DEEPSPEED"
        assert r["global_step"] == 2
        assert r["ds3_gather_for_generation"] is True
        assert r["has_ref_model"] and r["beta"] > 0
        for key in ("zero3_before_train", "zero3_after_train", "zero3_ref_model"):
            z3 = r[key]
            assert z3 is not None, key
            # each rank stores half of every parameter
            assert z3["total_local_partition_numel"] * 2 == z3["total_ds_numel"], (key, z3)
            assert z3["example"]["local_partition_numel"] * 2 == z3["example"]["ds_numel"], (key, z3)
        before = r["zero3_before_train"]["example"]
        assert before["data_numel_outside_gather"] == 0 and before["ds_status"].endswith("NOT_AVAILABLE")
        assert any("kl" in h for h in r["log_history"])  # the KL term to the reference model was computed
    print(f"ZeRO-3 2 processes: {seconds:.1f} s wall", reports[0]["seconds"])
