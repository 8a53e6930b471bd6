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
    duration: float = 0.0  # seconds the call ran (0: the executor does not say)
    queue_wait: float = 0.0  # seconds the call waited for a free worker before it ran (0: none, or not reported)

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


_METHODS = ("run", "close_session", "close")


def check_executor(executor, what: str) -> None:
    """Raise a TypeError naming the methods of the `CodeExecutor` protocol that `executor` lacks (`what` says where it
    came from, e.g. "GTPOTrainer(executor=...)")."""
    missing = [name for name in _METHODS if not callable(getattr(executor, name, None))]
    if missing:
        raise TypeError(
            f"{what} got a {type(executor).__name__}, which is not a CodeExecutor: it has no "
            f"{', '.join(name + '()' for name in missing)}. An executor needs run(calls) -> list[ExecutionResult], "
            "close_session(session_id) and close() (see trl_gtpo.CodeExecutor)."
        )


def check_results(results, calls: list[CodeCall], executor_name: str) -> list[ExecutionResult]:
    """`results` of `executor.run(calls)`, checked: a list of one `ExecutionResult` per call. A wrong answer is a bug
    of the executor, so it is raised (naming its class), never shown to the model."""
    fix = "run(calls) must return a list of one trl_gtpo.ExecutionResult per call, in order"
    if not isinstance(results, (list, tuple)):
        raise TypeError(f"{executor_name}.run() returned a {type(results).__name__}: {fix}.")
    if len(results) != len(calls):
        raise ValueError(f"{executor_name}.run() returned {len(results)} results for {len(calls)} calls: {fix}.")
    wrong = next((r for r in results if not isinstance(r, ExecutionResult)), None)
    if wrong is not None:
        raise TypeError(
            f"{executor_name}.run() returned a {type(wrong).__name__} ({wrong!r:.80}) among its results: {fix}."
        )
    return list(results)
