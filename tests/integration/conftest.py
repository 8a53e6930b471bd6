"""Session fixtures of the vLLM integration tests (created only when a test asks for them).

`tool_model_dir`: the tiny model overfit to answer "What is 6 * 7?" with a ```python block (tests/conftest.py's
`tool_using_model_path`), saved with save_pretrained. `vllm_server`: ONE vLLM server on a free 127.0.0.1 port serving
that model, shared by test_vllm_gtpo.py and test_vllm_server_generation.py (a start costs 30-70 s here), always
killed at the end of the session.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def tool_model_dir(tmp_path_factory):
    from gtpo_vllm_run import build_tool_using_model

    return build_tool_using_model(tmp_path_factory.mktemp("tool-model") / "model")


@pytest.fixture(scope="session")
def vllm_server(tool_model_dir, tmp_path_factory):
    from _launch_utils import vllm_server as start_server

    log = tmp_path_factory.mktemp("vllm-server-log") / "server.log"
    try:
        with start_server(tool_model_dir, log) as server:
            yield server
    except RuntimeError as error:  # did not start: fail the tests that need it, with the server's log
        pytest.fail(str(error))
