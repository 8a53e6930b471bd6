"""The executor protocol (what the code-interpreter loop needs from whatever runs the model's code) and
`make_executor`, which builds the one a GTPOConfig asks for.

The loop only ever calls `run` (all code blocks of one turn at once, so an executor can run them in parallel),
`close_session` (a trajectory is done: drop its Python state) and `close` (shutdown). A remote sandbox service plugs in
by implementing these three methods; see `GTPOConfig.tool_executor`.
"""

import importlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ..gtpo_config import GTPOConfig


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


def make_executor(args: "GTPOConfig") -> CodeExecutor:
    """Build the executor of `args`: `args.tool_executor(args, **args.tool_executor_kwargs)` if set, else a
    `SandboxPool` sized and limited by the `tool_*` fields (with `tool_executor_kwargs` as extra `SandboxPool`
    arguments, e.g. `{"preload": ["math"]}`)."""
    kwargs = _parse_kwargs(args.tool_executor_kwargs)
    if args.tool_executor is None:
        from ..sandbox import SandboxPool  # the local pool: imported only when used

        try:
            return SandboxPool(
                args.tool_pool_size,
                timeout=args.tool_timeout,
                memory_limit_mb=args.tool_memory_limit_mb,
                max_output_chars=args.max_tool_output_chars,
                persistent_sessions=args.persistent_tool_sessions,
                **kwargs,
            )
        except TypeError as e:
            raise ValueError(
                f"GTPOConfig.tool_executor_kwargs={kwargs!r} does not fit the built-in SandboxPool ({e}): use only "
                "SandboxPool keyword arguments there, or set tool_executor to your own factory."
            ) from None
    factory = _import_factory(args.tool_executor)
    executor = factory(args, **kwargs)
    if not isinstance(executor, CodeExecutor):
        raise ValueError(
            f"GTPOConfig.tool_executor={args.tool_executor!r} returned {type(executor).__name__}, which is not a "
            "CodeExecutor: the factory must return an object with run(calls), close_session(session_id) and close() "
            "(see trl_gtpo.CodeExecutor)."
        )
    return executor


def _parse_kwargs(value) -> dict:
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as e:
            raise ValueError(
                f"GTPOConfig.tool_executor_kwargs={value!r} is not valid JSON ({e}): use a JSON object such as "
                '\'{"endpoint": "http://sandbox:8080"}\' or pass a dict.'
            ) from None
    if not isinstance(value, dict):
        raise ValueError(f"GTPOConfig.tool_executor_kwargs={value!r} is not a dict: use a dict or a JSON object.")
    return value


def _import_factory(path: str):
    module_name, sep, attr = path.replace(":", ".").rpartition(".")
    fix = "use the dotted path of a callable, e.g. 'my_package.sandbox.make_remote_executor'"
    if not sep or not module_name or not attr:
        raise ValueError(f"GTPOConfig.tool_executor={path!r} is not a dotted import path: {fix}.")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(
            f"GTPOConfig.tool_executor={path!r}: module {module_name!r} cannot be imported ({e}): {fix}, with its "
            "package installed or on PYTHONPATH."
        ) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"GTPOConfig.tool_executor={path!r}: {module_name!r} has no callable {attr!r}: {fix}.")
    return factory
