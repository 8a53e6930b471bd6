"""The code interpreter as a TRL environment: a `python(code)` tool over JSON function calling.

Chat models with native tool calls are trained on JSON function calls, and TRL's `environment_factory` (of
`GRPOTrainer`, `GTPOTrainer` and `AsyncGRPOTrainer`) offers every public method of an environment as such a tool.
`PythonEnvironment` is that front end of GTPO's code interpreter, beside the markdown-fence one (`loop.py`): it runs
the code through the same `CodeExecutor` (the hardened `SandboxPool` by default), keeps one persistent Python session
per environment instance (TRL gives every trajectory its own instance and calls `reset` before each episode), and logs
what each call did (`ToolRun`), from which `records_from_environment` builds the same `TurnRecord`s the fence
interpreter gives: the format rule, shaping and turn rewards read them alike (arXiv 2511.14846, section 3.1).
"""

import json
import logging
import threading
import uuid
import warnings
from collections.abc import Callable, Sequence
import time
from dataclasses import dataclass, field, replace

from ..turn_records import TurnRecord, records_from_mask
from .executor import CodeCall, CodeExecutor, ExecutionResult

logger = logging.getLogger(__name__)

TOOL_NAME = "python"


@dataclass(frozen=True)
class ToolRun:
    """One `python(code)` call: the code, what the model was shown, and the executor's status ("ok", "error",
    "timeout", "limit", "crash")."""

    code: str
    output: str
    status: str
    # Seconds the call waited for a sandbox worker, and ran (`ExecutionResult.queue_wait`, `.duration`): what the
    # trainer logs as tools/queue_wait_ms and tools/run_ms. Not part of a run's identity.
    queue_wait: float = field(default=0.0, compare=False)
    run_time: float = field(default=0.0, compare=False)


class SharedExecutor:
    """The executor of every environment of one process, started at the first call and shared by its instances.

    It pickles as its settings only (TRL's `AsyncGRPOTrainer` sends `environment_factory` to a spawned process, which
    starts its own pool). Calls arrive from several threads at once (TRL runs tools in a thread pool, one call per
    trajectory; the asynchronous trainer one rollout per task). An executor that says it takes concurrent `run` calls
    (`concurrent_runs = True`, as `SandboxPool` does) gets each call as it arrives, from its own thread, with no lock
    here: the pool starts it as soon as a worker is free, so calls overlap up to the pool's size
    (`GTPOConfig.tool_pool_size`: set it to the number of calls you expect at once, e.g. the trajectories of one
    process, where the cores allow). Any other executor is called from one thread at a time: the calls that arrive
    while one `run` is going on are run together in the next one.

    Every result carries how long its call waited (`ExecutionResult.queue_wait`: for a worker of the pool, and here
    for the previous batch of a serial executor) and ran (`duration`; the wall time of its `run` when the executor
    does not say), which the trainer logs as tools/queue_wait_ms and tools/run_ms.

    Args:
        args: what `make_executor` reads (a `GTPOConfig`: `tool_executor`, `tool_pool_size`, `tool_timeout`, ...);
            None: a `SandboxPool` with its defaults.
        executor: an executor to share instead of building one (it is not pickled: give `args` for a spawned process).
        concurrency: the most calls that can arrive at once (the rollouts in flight); it sizes a local pool whose
            `tool_pool_size` is None (one worker per call, up to the cores: `sandbox.concurrency_size`) instead of
            the per-rank default. `AsyncGTPOTrainer` sets it to `max_inflight_tasks` (`expect_concurrency`).
    """

    def __init__(self, args=None, executor: CodeExecutor | None = None, concurrency: int | None = None):
        self.args = args
        self.concurrency = concurrency
        self._executor = executor
        self._owns_executor = executor is None
        self._state = threading.Condition()
        self._pending: list[list] = []  # [call, result] slots waiting for the next batch
        self._running = False

    def __getstate__(self):
        if not self._owns_executor and self._executor is not None:
            raise TypeError(
                "SharedExecutor holds an executor object, which cannot go to another process: give the settings "
                "instead (SharedExecutor(args) / PythonEnvironment.factory(args)), so that process builds its own."
            )
        return {"args": self.args, "concurrency": self.concurrency}

    def __setstate__(self, state):
        self.__init__(state["args"], concurrency=state.get("concurrency"))

    def expect_concurrency(self, concurrency: int) -> None:
        """Size the pool, when it is built, for `concurrency` calls at once, unless a concurrency was given already;
        too late once the executor exists (a warning says so)."""
        with self._state:
            if self.concurrency is not None or not self._owns_executor:  # a user's executor is sized by its user
                return
            if self._executor is not None:
                warnings.warn(
                    f"SharedExecutor.expect_concurrency({concurrency}): the executor is already running, so its size "
                    "stays as it is; set tool_pool_size to size it.", stacklevel=2,
                )
                return
            self.concurrency = concurrency

    @property
    def executor(self) -> CodeExecutor:
        with self._state:
            if self._executor is None:
                if self.args is None:
                    from .sandbox import SandboxPool, concurrency_size

                    self._executor = SandboxPool(concurrency_size(self.concurrency) if self.concurrency else None)
                else:
                    from .executor_factory import make_executor

                    self._executor = make_executor(self.args, self.concurrency)
            return self._executor

    def run(self, calls: list[CodeCall]) -> list[ExecutionResult]:
        """`CodeExecutor.run` (what the code interpreter's loop calls, one call per rollout on the asynchronous path):
        each call joins the batch of whatever other threads submit meanwhile."""
        return [self.run_one(call) for call in calls]

    def run_one(self, call: CodeCall) -> ExecutionResult:
        """Run one call: at once on an executor with `concurrent_runs`, else together with the calls other threads
        submit meanwhile; never raises."""
        executor = self.executor
        if getattr(executor, "concurrent_runs", False):
            start = time.monotonic()
            (result,) = self._run_batch([call])
            return _timed(result, 0.0, time.monotonic() - start)
        arrival = time.monotonic()
        slot = [call, None, arrival]
        with self._state:
            self._pending.append(slot)
            while slot[1] is None and self._running:
                self._state.wait()
            if slot[1] is not None:
                return slot[1]
            self._running = True  # this thread runs the batch of everything pending
            batch, self._pending = self._pending, []
        results = None
        start = time.monotonic()
        try:
            results = self._run_batch([pending[0] for pending in batch])
        finally:  # even when interrupted, release the threads waiting on this batch
            wall = time.monotonic() - start
            with self._state:
                for pending, result in zip(batch, results or [None] * len(batch), strict=True):
                    result = result or ExecutionResult("SandboxError: the run was interrupted", "crash")
                    pending[1] = _timed(result, start - pending[2], wall)
                self._running = False
                self._state.notify_all()
        return slot[1]

    def _run_batch(self, calls: list[CodeCall]) -> list[ExecutionResult]:
        """`executor.run(calls)`; a failure becomes a "crash" result per call."""
        try:
            results = self.executor.run(calls)
        except Exception as error:  # a broken executor becomes an error message for the model, never a crash
            message = f"SandboxError: the code could not be run ({type(error).__name__}: {error})"
            return [ExecutionResult(output=message, status="crash") for _ in calls]
        if len(results) != len(calls):
            message = f"SandboxError: the executor returned {len(results)} results for {len(calls)} calls"
            return [ExecutionResult(output=message, status="crash") for _ in calls]
        return results

    def close_session(self, session_id: str) -> None:
        if self._executor is None:
            return
        try:
            self._executor.close_session(session_id)
        except Exception as error:  # a failing cleanup must not kill training
            logger.warning(f"Could not close sandbox session {session_id}: {error!r}")

    def close(self) -> None:
        """Stop the executor if this object built it (a user's executor is theirs to close)."""
        with self._state:
            if self._owns_executor and self._executor is not None:
                self._executor.close()
                self._executor = None


def _timed(result: ExecutionResult, waited: float, wall: float) -> ExecutionResult:
    """`result` with `waited` seconds (waiting for an earlier batch) added to its queue wait, and the wall time of its
    run (less the pool's queue wait) as its duration when the executor did not give one."""
    duration = result.duration if result.duration > 0 else max(0.0, wall - result.queue_wait)
    return replace(result, queue_wait=waited + result.queue_wait, duration=duration)


_DEFAULT_EXECUTOR = SharedExecutor()  # what `PythonEnvironment()` uses: one local SandboxPool per process


class PythonEnvironment:
    """A TRL environment with one tool, `python(code)`, run in a persistent sandboxed Python session.

    Pass it as `environment_factory`: `GRPOTrainer(..., environment_factory=PythonEnvironment)` (a local
    `SandboxPool` with its defaults), or `environment_factory=PythonEnvironment.factory(args)` for the sandbox
    settings of a `GTPOConfig` (`tool_timeout`, `tool_pool_size`, `tool_executor`, ...). Both pickle, as
    `AsyncGRPOTrainer` needs.

    Each instance is one trajectory's: `reset` (called by TRL before each episode) closes the previous session and
    starts a new one, so no state leaks between episodes; `runs` logs this episode's calls for the turn records.

    Args:
        executor: a `SharedExecutor` (or any `CodeExecutor`) to run the code; None: the process's default pool.
    """

    def __init__(self, executor: SharedExecutor | CodeExecutor | None = None):
        if executor is not None and not isinstance(executor, (SharedExecutor, CodeExecutor)):
            raise TypeError(
                f"PythonEnvironment(executor={executor!r}): pass a trl_gtpo.CodeExecutor (run, close_session, close), "
                "a SharedExecutor, or None for the local sandbox pool."
            )
        self._executor = executor if executor is not None else _DEFAULT_EXECUTOR
        self._session_id: str | None = None
        self.runs: list[ToolRun] = []

    @classmethod
    def factory(cls, args=None, executor: CodeExecutor | None = None) -> Callable[[], "PythonEnvironment"]:
        """An `environment_factory` whose environments share one executor built from `args` (what `make_executor`
        reads) or the given `executor` (which then does not pickle). A classmethod, so TRL offers it as no tool."""
        return _Factory(SharedExecutor(args, executor))

    def reset(self, **kwargs) -> None:
        """Start a new episode: a fresh Python session and an empty call log. Returns no observation."""
        if self._session_id is not None:
            self._executor.close_session(self._session_id)
        self._session_id = uuid.uuid4().hex
        self.runs = []
        return None

    def python(self, code: str) -> str:
        """Run Python code in this conversation's Python session and return what it printed.

        Variables, functions and imports persist from one call to the next. Only printed output is returned, so print
        the values you need; if the code raises, the last lines of the traceback are returned instead.

        Args:
            code: The Python source code to run.

        Returns:
            The printed output, or the error message.
        """
        if self._session_id is None:  # a call before any reset: start the session now
            self.reset()
        if not isinstance(code, str):  # the model may pass a number or a list: run its text
            code = json.dumps(code) if not isinstance(code, (int, float)) else str(code)
        call = CodeCall(self._session_id, code)
        if isinstance(self._executor, SharedExecutor):
            result = self._executor.run_one(call)
        else:
            start = time.monotonic()
            result = _timed(_run_alone(self._executor, call), 0.0, time.monotonic() - start)
        self.runs.append(ToolRun(code, result.output, result.status, result.queue_wait, result.duration))
        return result.output


def expect_concurrency(environment_factory, concurrency: int) -> None:
    """Size the sandbox pool of a `PythonEnvironment.factory(...)` for `concurrency` calls at once (see
    `SharedExecutor.expect_concurrency`); any other factory is left alone."""
    shared = getattr(environment_factory, "executor", None) if isinstance(environment_factory, _Factory) else None
    if isinstance(shared, SharedExecutor):
        shared.expect_concurrency(concurrency)


class _Factory:
    """`PythonEnvironment.factory(...)`: a picklable zero-argument callable (TRL calls it once per trajectory)."""

    def __init__(self, executor: SharedExecutor):
        self.executor = executor

    def __call__(self) -> PythonEnvironment:
        return PythonEnvironment(self.executor)


def _run_alone(executor: CodeExecutor, call: CodeCall) -> ExecutionResult:
    try:
        (result,) = executor.run([call])
        return result
    except Exception as error:  # never raise into TRL's tool loop: the model gets the error message
        return ExecutionResult(f"SandboxError: the code could not be run ({type(error).__name__}: {error})", "crash")


def records_from_environment(
    completion_ids: Sequence[int],
    mask: Sequence[int] | None,
    messages: Sequence[dict],
    runs: Sequence[ToolRun],
    decode: Callable[[list[int]], str],
    spans: Sequence[tuple[int, int]] | None = None,
) -> list[TurnRecord]:
    """The `TurnRecord`s of a trajectory of a `PythonEnvironment`, as the fence interpreter gives them.

    The k-th assistant message is the k-th turn of the mask (TRL's tool loop appends, per model turn, one assistant
    message and one `tool` message per call). A turn's `python` call is matched with the environment's next `ToolRun`
    when its tool message is that run's output: the record then has the run's code (`tool_call`), output and sandbox
    status. A `python` call whose arguments did not fit (TRL answered `{'error': ...}` without running it) is a
    malformed call (`well_formed=False`, status "error"); a call of another tool keeps TRL's view ("ok"/"error").
    `spans`: the turns' token spans when the caller knows them (see `records_from_mask`).
    """
    records = records_from_mask(completion_ids, mask, decode, spans)
    turns: list[tuple[dict, list[dict]]] = []
    for message in messages if isinstance(messages, (list, tuple)) else []:
        if isinstance(message, dict) and message.get("role") == "assistant":
            turns.append((message, []))
        elif isinstance(message, dict) and message.get("role") == "tool" and turns:
            turns[-1][1].append(message)
    pending = list(runs)
    enriched = []
    for record, (message, responses) in zip(records, turns + [({}, [])] * (len(records) - len(turns))):
        codes, outputs, statuses, well_formed = [], [], [], True
        for response in responses:
            content = _text(response.get("content"))
            if response.get("name") == TOOL_NAME and pending and pending[0].output == content:
                run = pending.pop(0)
                codes.append(run.code)
                outputs.append(run.output)
                statuses.append(run.status)
            else:
                failed = content.startswith("{'error'")
                well_formed &= not (failed and response.get("name") == TOOL_NAME)
                outputs.append(content)
                statuses.append("error" if failed else "ok")
        calls = message.get("tool_calls") or None
        status = "none"
        if statuses:
            status = next((s for s in statuses if s != "ok"), "ok")  # a turn's worst call decides it
        if codes:
            call = "\n".join(codes)
        else:
            call = json.dumps(calls, default=str) if calls else None
        enriched.append(
            TurnRecord(
                record.index,
                record.text,
                call,
                "\n".join(outputs) if outputs else record.tool_response,
                status if calls or statuses else "none",
                record.start,
                record.end,
                well_formed=well_formed,
            )
        )
    return enriched


def _text(content) -> str:
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return "" if content is None else str(content)
