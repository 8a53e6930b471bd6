"""Helpers for the integration tests: run a command with a hard time limit and always kill its process group."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CONFIGS = REPO / "accelerate_configs"
TRAIN_SCRIPT = HERE / "train_grpo_tiny.py"

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
