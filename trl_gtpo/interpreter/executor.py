"""The executor protocol: what the code-interpreter loop needs from whatever runs the model's code.

The loop only ever calls `run` (all code blocks of one turn at once, so an executor can run them in parallel),
`close_session` (a trajectory is done: drop its Python state) and `close` (shutdown). A remote sandbox service plugs in
by implementing these three methods; see `GTPOConfig.tool_executor`.
"""

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class CodeCall:
    """One code block to run in the Python session `session_id` (one session per trajectory)."""

    session_id: str
    code: str


@dataclass(frozen=True)
class ExecutionResult:
    """What came of one `CodeCall`.

    `output` is the text the model sees: stdout, then for an error the last traceback lines as the Python REPL shows
    them, or a one-line message for a timeout or a broken limit; already cut to the configured size.
    `status` is one of "ok", "error" (the code raised), "timeout", "limit" (memory, output, processes), "crash"
    (the worker died).
    """

    output: str
    status: str = "ok"
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@runtime_checkable
class CodeExecutor(Protocol):
    def run(self, calls: list[CodeCall]) -> list[ExecutionResult]:
        """Run the calls (in parallel where possible) and return one result per call, in order. Never raises for a
        failure of the code itself."""
        ...

    def close_session(self, session_id: str) -> None:
        """Forget the Python state of `session_id`."""
        ...

    def close(self) -> None:
        """Stop all workers; no process may outlive this call."""
        ...
