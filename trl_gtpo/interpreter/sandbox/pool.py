"""SandboxPool: the local `CodeExecutor`, a pool of warm sandbox worker processes on the trainer's machine.

Layout of processes::

    trainer ──pipes── worker 0 (warm Python, preloaded numpy/sympy; trusted supervisor, never runs model code)
                        ├── session process of trajectory A (forked from the worker: its own namespaces, uid, limits)
                        ├── session process of trajectory B
                        └── spare session (forked ahead of time)
            ──pipes── worker 1 ...

Sessions and workers: a session (one trajectory) is bound to one worker for its life, and lives in its own process
forked from that worker, so its Python state survives between its turns, is isolated from every other session, and
is dropped by `close_session` (the process is killed). A worker hosts any number of sessions (idle ones are frozen and
cost little memory, their pages are shared with the worker), but runs one call at a time: the calls of one `run` run
in parallel across workers, and calls bound to the same worker queue. Several threads may call `run` at once: each
call starts as soon as a worker it may use is free (oldest first), whichever thread submitted it, and reports how long
it waited (`ExecutionResult.queue_wait`); size the pool to the calls expected at once (`size`). New sessions go to the
worker with the fewest, so a turn of G trajectories spreads evenly; with `persistent_sessions=False` every call takes
a fresh session on whichever worker is free. A worker that dies, or does not answer by the call's timeout plus
`HUNG_WORKER_MARGIN_S` (frozen, stuck), is replaced; its call gets a "crash" result and the other sessions it hosted
start over, with a note saying so on their next call.

Shutdown: `close`, garbage collection and interpreter exit stop every worker, and a worker stops its sessions before
it exits. A trainer killed outright (SIGKILL, or SIGTERM without handler) leaves no process behind either: workers see
end-of-file on their pipe (and get SIGKILL via the parent-death signal), and sessions die with their worker's pid
namespace, or through their own parent-death signal where namespaces are not available.
"""

import collections
import os
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import weakref
from collections.abc import Sequence

from ..executor import CodeCall, ExecutionResult
from . import _wire

_WORKER_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_worker.py")
DEFAULT_PRELOAD = (
    "math",
    "cmath",
    "fractions",
    "decimal",
    "itertools",
    "functools",
    "collections",
    "re",
    "random",
    "statistics",
    "numpy",
    "sympy",
)
_WORKER_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "MALLOC_ARENA_MAX": "2",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
}
_STATE_LOST = (
    "[note: the sandbox process that held this session's variables was restarted; names defined by earlier "
    "code are gone]\n"
)
_ISOLATION_MODES = ("auto", "userns", "hooks")
# Address space (VmSize) of a ready worker, measured on Linux x86_64 with Python 3.11, numpy 2 and sympy 1.14: 134 MiB
# with DEFAULT_PRELOAD, 17 MiB with no preload. A session starts as a copy of its worker and needs 64 MiB more to run
# anything (the pool checks that exactly when its workers start). The floors below round up for other builds.
_SESSION_HEADROOM_MB = 64
_DEFAULT_PRELOAD_FLOOR_MB = 256
_BARE_FLOOR_MB = 96
# A worker that has not answered a call by its timeout plus this margin is replaced. The margin covers the worker's
# own grace before it kills a session that ignores the interrupt (at most 3 s, `_worker._grace`) and the start of the
# session (forked ahead of time: milliseconds, seconds on a loaded machine).
HUNG_WORKER_MARGIN_S = 8.0
_live_pools: "weakref.WeakSet[SandboxPool]" = weakref.WeakSet()


class _Worker:
    """The trainer's handle on one worker process."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.in_fd = proc.stdin.fileno()
        self.out_fd = proc.stdout.fileno()
        self.layers: list[str] = []
        self.notes: list[str] = []
        self.footprint_mb = 0

    def alive(self) -> bool:
        return self.proc.poll() is None


class _Request:
    """One `run` call: the calls still waiting for a worker (`pending`), the workers granted to it and not yet used
    (`granted`: (worker, call) pairs), and a pipe that wakes its thread when a worker is granted."""

    def __init__(self, calls: list[CodeCall]):
        self.pending = collections.deque(range(len(calls)))
        self.targets: list[int | None] = []
        self.notes: list[str] = []
        self.granted: list[tuple[int, int]] = []
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def wake(self) -> None:
        try:
            os.write(self.wake_w, b"x")
        except BlockingIOError:  # the pipe is full of unread wake-ups: the thread will wake anyway
            pass

    def close(self) -> None:
        os.close(self.wake_r)
        os.close(self.wake_w)


class SandboxPool:
    """Runs model-written Python in warm, isolated worker processes (see the module docstring).

    Args:
        size: number of workers, i.e. calls running at once, from one `run` or from several threads
            (`GTPOConfig.tool_pool_size`; set it to the calls you expect at once where the cores or the tool's waits
            allow: one per trajectory of this process is the most any turn asks). None: this process's share of
            the node's cores (the cores it may run on divided by the training processes of the node,
            `LOCAL_WORLD_SIZE`), at least 1, at most 8; so 8 ranks on a node do not start 8 pools of 8.
        timeout: wall-clock seconds one code block may run.
        memory_limit_mb: address-space limit of a session process.
        max_output_chars: characters of output kept for the model.
        persistent_sessions: keep a session's Python state across its calls; if False every call starts fresh.
        preload: modules the workers import once, so that sessions get them for free (missing ones are skipped).
        isolation: "auto" (every layer this machine allows), "userns" (namespaces through a user namespace even when
            root), or "hooks" (only the in-process guards and rlimits; for tests and locked-down machines).
        max_threads: threads a session may run besides its main one.
        disk_limit_mb: size of a session's private working directory (and of any file it writes).
        max_sessions_per_worker: live sessions a worker keeps; past that the least recently used one is dropped
            (its next call gets a note that its state is gone).
        start_timeout: seconds a worker may take to start (preloading sympy on a busy machine takes a few).
        python: interpreter for the workers; default `sys.executable`.
    """

    def __init__(
        self,
        size: int | None = None,
        *,
        timeout: float = 10.0,
        memory_limit_mb: int = 1024,
        max_output_chars: int = 1024,
        persistent_sessions: bool = True,
        preload: Sequence[str] = DEFAULT_PRELOAD,
        isolation: str = "auto",
        max_threads: int = 8,
        disk_limit_mb: int = 64,
        max_sessions_per_worker: int = 64,
        start_timeout: float = 120.0,
        python: str | None = None,
    ):
        if size is None:
            size = default_size()
        if size < 1:
            raise ValueError(
                f"SandboxPool size={size!r}: use an integer >= 1 (or None for this process's share of the cores)"
            )
        if isolation not in _ISOLATION_MODES:
            raise ValueError(f"SandboxPool isolation={isolation!r}: use one of {_ISOLATION_MODES}")
        for name, value in (("timeout", timeout), ("start_timeout", start_timeout)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise ValueError(
                    f"SandboxPool {name}={value!r}: use a finite positive number of seconds, e.g. 10 "
                    "(GTPOConfig.tool_timeout for `timeout`)"
                )
        for name, value in (("memory_limit_mb", memory_limit_mb), ("max_output_chars", max_output_chars),
                            ("max_threads", max_threads), ("disk_limit_mb", disk_limit_mb),
                            ("max_sessions_per_worker", max_sessions_per_worker)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SandboxPool {name}={value!r}: use a positive integer")
        if not sys.platform.startswith("linux"):
            raise RuntimeError("SandboxPool needs Linux; set GTPOConfig.tool_executor to run code elsewhere")
        self.size = size
        self.timeout = float(timeout)
        self.max_output_chars = int(max_output_chars)
        self.persistent_sessions = persistent_sessions
        self.max_sessions_per_worker = max_sessions_per_worker
        self._start_timeout = start_timeout
        self._python = python or sys.executable
        self._lock = threading.RLock()
        self._closed = False
        self._workroot = _make_workroot()
        self._config = {
            "timeout": self.timeout,
            "memory_limit_mb": int(memory_limit_mb),
            "max_output_chars": self.max_output_chars,
            "max_threads": int(max_threads),
            "disk_limit_mb": int(disk_limit_mb),
            "preload": list(preload),
            # "auto": the best the machine allows; "userns": namespaces through a user namespace; "off": none
            "namespaces": {"auto": "auto", "userns": "userns", "hooks": "off"}[isolation],
            "drop_uid": isolation == "auto",
            "workroot": self._workroot,
        }
        # uids far above any login or container range; each worker gets a block of 65536 for its sessions
        self._uid_base = random.randrange(3_000_000_000, 4_000_000_000 - (size + 1) * 65536, 65536)
        self._workers: list[_Worker | None] = [None] * size
        self._bound: list[collections.OrderedDict[str, None]] = [collections.OrderedDict() for _ in range(size)]
        self._claimed = [False] * size  # worker w runs a call for some thread
        self._requests: list[_Request] = []  # `run` calls with calls not yet granted a worker, oldest first
        self._binding: dict[str, int] = {}
        self._lost: set[str] = set()
        self._finalizer = weakref.finalize(self, _shutdown, self._workers, self._workroot, os.getpid())
        _live_pools.add(self)
        try:
            try:
                self._start_all()
            except RuntimeError as e:
                if isolation != "auto":
                    raise
                # Some kernel layer this machine offers half-way failed: keep what works everywhere.
                warnings.warn(
                    f"SandboxPool: {e}; retrying without namespaces (audit hook, rlimits, uid only)",
                    stacklevel=2,
                )
                self._config["namespaces"] = "off"
                self._start_all()
            footprint = max(w.footprint_mb for w in self._workers)  # type: ignore[union-attr]
            if memory_limit_mb < footprint + 64:
                raise ValueError(
                    f"memory_limit_mb={memory_limit_mb} (GTPOConfig.tool_memory_limit_mb) leaves no room: a session "
                    f"starts as a copy of its worker, which takes {footprint} MiB of address space with "
                    f"preload={list(preload)}. Use at least {footprint + 256}, or preload fewer modules."
                )
        except BaseException:
            self.close()
            raise

    # ---- CodeExecutor ------------------------------------------------------------------------------------------

    # Thread safety: several threads may call `run` at once (TRL runs tools in a thread pool, the asynchronous trainer
    # one rollout per task); each call is dispatched as soon as a worker it may use is free, not after the calls of
    # other threads. `_lock` guards the pool's state (workers, bindings, claims) and every write to a worker's pipe;
    # it is never held while code runs. A worker runs one call at a time: the thread whose call it runs "claims" it
    # and alone reads its reply. Free workers go to the waiting calls in their order of arrival (`_grant`), so a
    # session's calls, bound to one worker, run in the order they were submitted.
    concurrent_runs = True  # `SharedExecutor` may call `run` from several threads at once

    def run(self, calls: list[CodeCall]) -> list[ExecutionResult]:
        calls = list(calls)
        if not calls:
            return []
        arrival = time.monotonic()
        request = _Request(calls)
        with self._lock:
            if self._closed:
                raise RuntimeError("SandboxPool.run() after close()")
            for w, worker in enumerate(self._workers):
                if worker is not None and not self._claimed[w] and not worker.alive():
                    self._discard_worker(w)  # died between runs: its sessions get a note on this call
            request.notes = [""] * len(calls)
            request.targets = self._assign(calls, request.notes)
            self._requests.append(request)
            self._grant()
        results: list[ExecutionResult | None] = [None] * len(calls)
        waits = [0.0] * len(calls)
        busy: dict[int, tuple[int, float, float]] = {}  # worker -> (call, start, deadline)
        granted: list[tuple[int, int]] = []  # claimed by this thread, not yet dispatched
        try:
            while True:
                with self._lock:
                    granted, request.granted = request.granted, []
                    if not (granted or busy or request.pending):
                        break
                while granted:
                    w, j = granted[0]
                    entry = self._dispatch(w, j, calls[j], results)
                    granted.pop(0)
                    waits[j] = (entry[1] if entry is not None else time.monotonic()) - arrival
                    if entry is None:
                        self._release(w)
                    else:
                        busy[w] = entry
                if busy or request.pending:
                    for w in self._collect(busy, calls, results, request.wake_r if request.pending else None):
                        self._release(w)
        except BaseException:
            # Interrupted (Ctrl-C) with calls in flight: their replies would come out of turn, so drop those workers.
            with self._lock:
                for w, _ in granted + request.granted:
                    self._claimed[w] = False
                request.granted = []
                for w in list(busy):
                    self._discard_worker(w)
                    self._claimed[w] = False
            raise
        finally:
            with self._lock:
                if request in self._requests:
                    self._requests.remove(request)
                self._grant()
            request.close()
        return [
            ExecutionResult(request.notes[i] + r.output, r.status, r.duration, queue_wait=waits[i])
            for i, r in enumerate(results)  # type: ignore[union-attr]
        ]

    def close_session(self, session_id: str) -> None:
        with self._lock:
            self._lost.discard(session_id)
            w = self._binding.pop(session_id, None)
            if w is None:
                return
            self._bound[w].pop(session_id, None)
            self._send_close(w, session_id)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._finalizer()

    def __enter__(self) -> "SandboxPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def isolation_layers(self) -> list[str]:
        """The isolation layers the workers set up on this machine (for logs)."""
        w = next((w for w in self._workers if w is not None), None)
        return list(w.layers) if w else []

    @property
    def isolation_notes(self) -> list[str]:
        """Layers that were not available, and why."""
        w = next((w for w in self._workers if w is not None), None)
        return list(w.notes) if w else []

    def worker_pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers if w is not None]

    def __repr__(self) -> str:
        return f"SandboxPool(size={self.size}, timeout={self.timeout:g}, sessions={len(self._binding)})"

    # ---- scheduling --------------------------------------------------------------------------------------------

    def _assign(self, calls: list[CodeCall], notes: list[str]) -> list[int | None]:
        """Worker of each call: the session's worker, a new binding for a new session, None (any) without sessions."""
        if not self.persistent_sessions:
            return [None] * len(calls)
        queued = [0] * self.size
        targets: list[int | None] = []
        for i, call in enumerate(calls):
            sid = call.session_id
            w = self._binding.get(sid)
            if w is None:
                w = min(range(self.size), key=lambda k: (len(self._bound[k]), queued[k]))
                self._binding[sid] = w
                if len(self._bound[w]) >= self.max_sessions_per_worker:
                    self._evict(w, keep={c.session_id for c in calls})
            self._bound[w][sid] = None
            self._bound[w].move_to_end(sid)
            if sid in self._lost:
                self._lost.discard(sid)
                notes[i] = _STATE_LOST
            queued[w] += 1
            targets.append(w)
        return targets

    def _grant(self) -> None:
        """Hand each free worker to the oldest waiting call that may run on it (its session's worker, or any worker
        for a call without a session), and wake the thread that submitted it. Holds `_lock`."""
        for w in range(self.size):
            if self._claimed[w]:
                continue
            for request in self._requests:
                j = next((k for k in request.pending if request.targets[k] in (None, w)), None)
                if j is not None:
                    request.pending.remove(j)
                    request.granted.append((w, j))
                    self._claimed[w] = True
                    request.wake()
                    break

    def _release(self, w: int) -> None:
        """Worker `w` finished its call: hand it to the next waiting call."""
        with self._lock:
            self._claimed[w] = False
            self._grant()

    def _evict(self, w: int, keep: set[str]) -> None:
        victim = next((sid for sid in self._bound[w] if sid not in keep), None)
        if victim is not None:
            del self._bound[w][victim]
            del self._binding[victim]
            self._lost.add(victim)
            self._send_close(w, victim)

    def _dispatch(self, w: int, j: int, call: CodeCall, results: list) -> tuple[int, float, float] | None:
        """Send call `j` to worker `w`, which this thread has claimed."""
        if self._closed:  # closed by another thread meanwhile: start no worker
            results[j] = ExecutionResult("SandboxCrash: the sandbox pool was closed while this call waited", "crash")
            return None
        worker = self._ensure_worker(w)  # a worker that cannot start raises, as before: the executor cannot run
        start = time.monotonic()
        try:
            with self._lock:  # one writer at a time on a worker's pipe (close_session writes there too)
                _wire.send(
                    worker.in_fd,
                    {"op": "run", "sid": call.session_id, "code": call.code, "fresh": not self.persistent_sessions},
                )
        except _wire.WireError:
            results[j] = self._worker_died(w, call.session_id, start)
            return None
        # A healthy worker always answers within timeout + grace + session start; this catches a stuck or frozen one.
        return j, start, start + self.timeout + HUNG_WORKER_MARGIN_S

    def _collect(
        self, busy: dict[int, tuple[int, float, float]], calls: list[CodeCall], results: list, wake_fd: int | None
    ) -> list[int]:
        """Wait for the next replies (or the first deadline, or `wake_fd`: a worker was granted to this thread), store
        them, and return the workers that are done."""
        done = []
        fd_to_worker = {self._workers[w].out_fd: w for w in busy}  # type: ignore[union-attr]
        poller = select.poll()
        for fd in fd_to_worker:
            poller.register(fd, select.POLLIN)
        if wake_fd is not None:
            poller.register(wake_fd, select.POLLIN)
        timeout_ms = -1
        if busy:
            first_deadline = min(deadline for _, _, deadline in busy.values())
            timeout_ms = max(0, int((first_deadline - time.monotonic()) * 1000) + 1)
        for fd, _ in poller.poll(timeout_ms):
            if fd == wake_fd:
                try:
                    os.read(wake_fd, 4096)
                except BlockingIOError:
                    pass
                continue
            w = fd_to_worker[fd]
            done.append(w)
            j, start, _ = busy.pop(w)
            try:
                reply = _wire.recv(fd, 64 * self.max_output_chars + 65536, deadline=time.monotonic() + 30.0)
                results[j] = ExecutionResult(
                    output=str(reply["output"])[: self.max_output_chars + 400],
                    status=str(reply["status"]),
                    duration=float(reply["duration"]),
                )
            except (_wire.WireError, KeyError, TypeError, ValueError):
                results[j] = self._worker_died(w, calls[j].session_id, start)
        now = time.monotonic()
        for w, (j, start, deadline) in list(busy.items()):
            if now >= deadline:
                del busy[w]
                done.append(w)
                results[j] = self._worker_died(w, calls[j].session_id, start, hung=True)
        return done

    # ---- workers -----------------------------------------------------------------------------------------------

    def _start_all(self) -> None:
        started: list[_Worker] = []
        try:
            started.extend(self._start_worker(i) for i in range(self.size))  # they start in parallel
            for i, worker in enumerate(started):
                self._workers[i] = self._await_ready(worker)
        except BaseException:
            for worker in started:
                _kill_worker(worker)
            self._workers[:] = [None] * self.size
            raise

    def _start_worker(self, w: int) -> _Worker:
        proc = subprocess.Popen(
            [self._python, "-I", _WORKER_PATH],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=dict(_WORKER_ENV),
            cwd="/",
            start_new_session=True,  # Ctrl-C in the terminal reaches the trainer only; it then closes the pool
            close_fds=True,
        )
        worker = _Worker(proc)
        config = dict(
            self._config,
            uid_base=self._uid_base + w * 65536,
            parent_pid=os.getpid(),
            pdeathsig=threading.current_thread() is threading.main_thread(),
        )
        try:
            _wire.send(worker.in_fd, config)
        except _wire.WireError:
            pass  # reported by _await_ready
        return worker

    def _await_ready(self, worker: _Worker) -> _Worker:
        try:
            msg = _wire.recv(worker.out_fd, 1 << 20, deadline=time.monotonic() + self._start_timeout)
        except _wire.WireError as e:
            _kill_worker(worker)
            raise RuntimeError(
                f"a sandbox worker failed to start ({e}; exit code {worker.proc.poll()}); its stderr is the "
                "trainer's, look there for the reason"
            ) from None
        worker.layers, worker.notes = list(msg.get("layers", [])), list(msg.get("notes", []))
        worker.footprint_mb = int(msg.get("footprint_mb", 0))
        return worker

    def _ensure_worker(self, w: int) -> _Worker:
        worker = self._workers[w]
        if worker is None or not worker.alive():
            if worker is not None:
                with self._lock:
                    self._discard_worker(w)
            worker = self._await_ready(self._start_worker(w))
            self._workers[w] = worker
        return worker

    def _worker_died(self, w: int, session_id: str, start: float, hung: bool = False) -> ExecutionResult:
        worker = self._workers[w]
        code = worker.proc.poll() if worker is not None else None
        with self._lock:
            self._discard_worker(w)
            self._lost.discard(session_id)  # this result already says so
        what = "stopped responding and was restarted" if hung else f"died (exit code {code}) and was restarted"
        return ExecutionResult(
            output=f"SandboxCrash: the sandbox worker running this code {what}; the session's variables are lost.",
            status="crash",
            duration=time.monotonic() - start,
        )

    def _discard_worker(self, w: int) -> None:
        """Kill worker `w`; the sessions it hosted are lost (it is restarted when next needed)."""
        worker = self._workers[w]
        self._workers[w] = None
        if worker is not None:
            _kill_worker(worker)
        for sid in self._bound[w]:
            self._binding.pop(sid, None)
            self._lost.add(sid)
        self._bound[w].clear()

    def _send_close(self, w: int, session_id: str) -> None:
        worker = self._workers[w]
        if worker is None:
            return
        try:
            _wire.send(worker.in_fd, {"op": "close", "sid": session_id})
        except _wire.WireError:
            self._discard_worker(w)

    def _after_fork_in_child(self) -> None:
        # A forked copy of the trainer (e.g. a DataLoader worker) must not hold the pipes (the workers would not see
        # end-of-file when the trainer dies) nor stop the trainer's workers when it exits.
        self._finalizer.detach()
        self._closed = True
        for worker in self._workers:
            if worker is not None:
                for f in (worker.proc.stdin, worker.proc.stdout):
                    try:
                        f.close()
                    except OSError:
                        pass


def min_memory_limit_mb(default_preload: bool = True) -> int:
    """The least `memory_limit_mb` a pool can start with: a session is a copy of its worker (see the measured
    footprints above) plus room to run. With a preload of your own the pool checks the exact figure at start."""
    return _DEFAULT_PRELOAD_FLOOR_MB if default_preload else _BARE_FLOOR_MB


def default_size() -> int:
    """Workers for one training process: the cores it may run on, shared with the other training processes of the
    node (each starts its own pool, so N ranks would otherwise start N pools of one worker per core), at least 1, at
    most 8."""
    local = 1
    for var in ("LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE"):  # torchrun / accelerate launch; mpirun
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) >= 1:
            local = int(value)
            break
    return max(1, min(len(os.sched_getaffinity(0)) // local, 8))


def concurrency_size(concurrency: int) -> int:
    """Workers for a process that runs up to `concurrency` calls at once and is its node's only sandbox user (the
    asynchronous trainer's rollout process, whose tool threads run every rollout of the job): one per call in
    flight, at most one per core it may run on (the calls are CPU-bound, and a worker past the cores only
    time-slices), at least 1."""
    return max(1, min(int(concurrency), len(os.sched_getaffinity(0))))


def _kill_worker(worker: _Worker) -> None:
    if worker.proc.returncode is None:  # not reaped yet, so its pid (= its process group) cannot have been reused
        try:
            os.killpg(worker.proc.pid, signal.SIGKILL)
        except OSError:
            pass
    worker.proc.kill()
    worker.proc.wait()
    for f in (worker.proc.stdin, worker.proc.stdout):
        try:
            f.close()
        except OSError:
            pass


def _shutdown(workers: list, workroot: str, owner_pid: int) -> None:
    """Stop all workers: ask nicely (they stop their sessions first), then kill what is left."""
    if os.getpid() != owner_pid:
        return
    live = [w for w in workers if w is not None]
    for worker in live:
        try:
            os.set_blocking(worker.in_fd, False)
            _wire.send(worker.in_fd, {"op": "exit"}, deadline=time.monotonic() + 0.5)
        except (_wire.WireError, OSError, ValueError):
            pass
    deadline = time.monotonic() + 5.0
    for worker in live:
        try:
            worker.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        _kill_worker(worker)
    workers[:] = [None] * len(workers)
    shutil.rmtree(workroot, ignore_errors=True)


def _make_workroot() -> str:
    """The directory under which sessions get their working directories when there is no private tmpfs. A trainer
    killed outright cannot remove its own, so remove those of dead trainers first."""
    tmp = tempfile.gettempdir()
    for name in os.listdir(tmp):
        match = re.fullmatch(r"trl_gtpo_sandbox_(\d+)_\w+", name)
        if match and not _pid_alive(int(match.group(1))):
            shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)
    root = tempfile.mkdtemp(prefix=f"trl_gtpo_sandbox_{os.getpid()}_")
    os.chmod(root, 0o711)  # a session under another uid must reach its own directory in it
    return root


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _close_pipes_after_fork() -> None:
    for pool in list(_live_pools):
        pool._after_fork_in_child()


os.register_at_fork(after_in_child=_close_pipes_after_fork)
