"""A sandbox worker: a warm, trusted supervisor process that forks one isolated session process per trajectory.

Started by `SandboxPool` as `python -I _worker.py` (by path, stdlib only: importing `trl_gtpo` would pull in torch),
it imports the preloaded modules (numpy, sympy, ...) once, sets up the isolation every session shares (network,
mount and pid namespaces, a read-only root that holds only the allowlist of `_view.py`), then serves requests from the
trainer, one at a time. Each session runs in its own process, forked from this warm one (a few ms, no interpreter
start), that then locks itself down further (private /tmp, its own pid namespace and uid, resource limits, seccomp
filter, audit hook) before it runs any model code. Between calls a session is frozen (SIGSTOP), so a thread it left
running cannot eat the CPU.

The worker never trusts what a session sends: frames are JSON with a size cap and a deadline, and every limit that
matters (wall-clock timeout, CPU time, output size, stray processes) is enforced from here, outside the session, where
the model's code cannot tamper with it. One spare session is forked ahead of time, so a new trajectory does not wait
for the fork.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
import _guards  # noqa: E402
import _isolation as iso  # noqa: E402
import _repl  # noqa: E402
import _view  # noqa: E402
import _wire  # noqa: E402

sys.path.remove(_HERE)

import builtins  # noqa: E402
import faulthandler  # noqa: E402
import gc  # noqa: E402
import importlib  # noqa: E402
import io  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402

_REQUEST_MAX_BYTES = 256 << 20  # frames from the trainer (trusted)
_SETUP_TIMEOUT = 30.0  # a session must be ready this long after its fork
_SEND_TIMEOUT = 5.0  # a session must take its code this fast
_SESSION_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
}
_HOOKS_ONLY_FILES = (
    "filesystem: the host's, with reads outside the allowlist refused by the audit hook only: native code (ctypes) can "
    "read any file this uid can, and os.stat() tells whether a path exists (no mount namespace on this machine)"
)
_HOOKS_LANDLOCK_FILES = (
    "filesystem: the host's (no mount namespace on this machine), with reads outside the allowlist refused by Landlock "
    "to native code too; but os.stat() tells whether a path exists (Landlock does not cover stat), and the names in "
    "the site-packages of a standard library can be listed (never read)"
)
_LANDLOCK_LAYER = (
    "Landlock (ABI {abi}): reads only the allowlist, writes only the working directory, enforced by the kernel on "
    "native code too{net}{scope}"
)
_LOST = "its process is gone, so the session's variables are lost and its next call starts from a fresh session"


class Session:
    """The worker's handle on one session process."""

    def __init__(self, pid: int, cmd_w: int, res_r: int, native_r: int, workdir: str | None):
        self.pid, self.cmd_w, self.res_r, self.native_r, self.workdir = pid, cmd_w, res_r, native_r, workdir
        self.ready = False
        self.layers: list[str] = []
        self.notes: list[str] = []
        self.native_tail = b""  # the end of what native code wrote to fds 1 and 2: shown when the process dies
        self.drain = {native_r: self._keep_tail}

    def _keep_tail(self, data: bytes) -> None:
        self.native_tail = (self.native_tail + data)[-4096:]

    def drain_native(self) -> None:
        """Empty the native-output pipe (so native code writing between frames never blocks)."""
        for _ in range(1024):
            if self.native_r not in self.drain:
                return
            before = len(self.drain), self.native_tail
            _wire.drain_once(self.native_r, self.drain)
            if (len(self.drain), self.native_tail) == before:
                return


class Worker:
    def __init__(self, cfg: dict, in_fd: int, out_fd: int):
        self.cfg, self.in_fd, self.out_fd = cfg, in_fd, out_fd
        self.timeout = float(cfg["timeout"])
        self.max_chars = int(cfg["max_output_chars"])
        self.kind = "hooks"  # "root" | "userns" | "hooks": which kernel layers are on
        self.session_pidns = False
        self.drop_uid = False
        self.own_pidns = -1
        self.notes: list[str] = []
        self.layers: list[str] = []
        self.sessions: dict[str, Session] = {}
        self.spare: Session | None = None
        self.counter = 0
        self.view: _view.View | None = None
        self.landlock_abi = 0
        self.landlock_read: list[tuple[str, bool]] = []

    # ---- setup -------------------------------------------------------------------------------------------------

    def setup(self) -> None:
        """Enter the namespaces every session shares. May fork: the process that returns is the worker (pid 1 of
        its own pid namespace, so all its sessions die with it); the other one only waits for it."""
        if self.cfg["namespaces"] != "off":
            self._enter_namespaces()
        sys.dont_write_bytecode = True  # the preload runs before the root is read-only: it must not write to the host
        for name in self.cfg["preload"]:
            try:
                importlib.import_module(name)
            except Exception as e:  # noqa: BLE001 -- a missing optional module is not an error
                self.notes.append(f"preload {name}: {type(e).__name__}")
        self.view = _view.View.of_this_interpreter()  # after the preload: its packages are what sessions may see
        if self.kind != "hooks":
            self._prepare_filesystem()
            self._probe_session_pidns()
        self.landlock_abi = iso.landlock_abi()
        if self.landlock_abi:
            self.landlock_read = self.view.landlock_read()  # the paths sessions apply: built once, here
        else:
            self.notes.append(
                "no Landlock (kernel older than 5.13 or Landlock off): native code is confined by the other layers only"
            )
        if self.kind == "hooks":
            self.notes.append(_HOOKS_LANDLOCK_FILES if self.landlock_abi else _HOOKS_ONLY_FILES)
        # A uid of its own per session needs root (and is off when only the portable layer is asked for).
        if os.geteuid() == 0 and self.kind != "userns" and self.cfg["drop_uid"]:
            if iso.world_traversable(self.view.readable_dirs()):
                self.drop_uid = True
                self.layers.append("own unprivileged uid per session (RLIMIT_NPROC counts only its own tasks)")
            else:
                self.notes.append("no uid drop: the Python installation is not readable by other users")
        gc.collect()
        gc.freeze()  # keep the preloaded objects out of the collector, so forked sessions share their pages

    def _enter_namespaces(self) -> None:
        flags = iso.CLONE_NEWNS | iso.CLONE_NEWNET | iso.CLONE_NEWIPC | iso.CLONE_NEWPID
        attempts = (["root"] if os.geteuid() == 0 and self.cfg["namespaces"] == "auto" else []) + ["userns"]
        for kind in attempts:
            try:
                iso.unshare(flags) if kind == "root" else iso.enter_user_namespace(flags)
            except OSError as e:
                self.notes.append(f"{kind} namespaces unavailable ({e.strerror})")
                continue
            self.kind = kind
            break
        else:
            return
        pid = os.fork()  # the child is pid 1 of the new pid namespace
        if pid:
            _wait_and_mirror(pid)
        iso.set_pdeathsig(signal.SIGKILL)
        self.layers.append("network namespace (no interfaces: no network at all)")
        self.layers.append("pid namespace per worker (the trainer is invisible and cannot be signalled)")

    def _prepare_filesystem(self) -> None:
        iso.make_mounts_private()
        self.view.enter()  # type: ignore[union-attr]
        self.layers.append(
            "mount namespace: read-only allowlist root (standard library, preloaded packages, shared libraries; the "
            "host's tree is detached), private /tmp per session"
        )

    def _probe_session_pidns(self) -> None:
        self.own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY)
        try:
            iso.unshare(iso.CLONE_NEWPID)
        except OSError as e:
            self.notes.append(f"no pid namespace per session ({e.strerror}): /proc shows the worker's other sessions")
            return
        iso.setns(self.own_pidns, iso.CLONE_NEWPID)  # if this fails the worker cannot fork at all: let it fail
        self.session_pidns = True
        self.layers.append("pid namespace per session (a session's processes all die with it)")

    # ---- request loop ------------------------------------------------------------------------------------------

    def serve(self) -> None:
        first = self._take_spare()  # surfaces a session setup failure now, and reports its layers
        self.spare = first
        with open("/proc/self/statm") as f:
            footprint_mb = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE") >> 20
        _wire.send(
            self.out_fd,
            {
                "ready": True,
                "layers": self.layers + first.layers,
                "notes": self.notes + first.notes,
                "footprint_mb": footprint_mb,
            },
        )
        while True:
            try:
                req = _wire.recv(self.in_fd, _REQUEST_MAX_BYTES)
            except _wire.WireError:
                break  # the trainer is gone
            op = req.get("op")
            if op == "run":
                reply, done = self._run(req)
                _wire.send(self.out_fd, reply)
                if done is not None:
                    self._kill(done)
                if self.spare is None:
                    self.spare = self._spawn()
            elif op == "close":
                session = self.sessions.pop(req["sid"], None)
                if session is not None:
                    self._kill(session)
            elif op == "exit":
                break
        self.shutdown()

    def shutdown(self) -> None:
        for session in [*self.sessions.values(), *([self.spare] if self.spare else [])]:
            self._kill(session)
        self.sessions.clear()
        self.spare = None

    def _run(self, req: dict) -> tuple[dict, Session | None]:
        """Run one call; returns the reply and a session to kill once the reply is sent."""
        sid, fresh, code = req["sid"], bool(req.get("fresh")), req["code"]
        session = None if fresh else self.sessions.get(sid)
        t0 = time.monotonic()
        if session is None:
            try:
                session = self._take_spare()
            except (OSError, _wire.WireError, RuntimeError) as e:
                return _reply(f"SandboxError: could not start a session ({e})", "crash", t0), None
            if not fresh:
                self.sessions[sid] = session
        t0 = time.monotonic()
        try:
            os.kill(session.pid, signal.SIGCONT)
            _wire.send(session.cmd_w, {"code": code}, deadline=t0 + _SEND_TIMEOUT)
            msg = _wire.recv(
                session.res_r,
                64 * self.max_chars + 65536,
                deadline=t0 + self.timeout + _grace(self.timeout),
                abort_fds=(self.in_fd,),
                drain=session.drain,
            )
            output, status = _validate(msg, self.max_chars)
        except _wire.Aborted:
            self.shutdown()
            os._exit(0)  # the trainer is gone: nobody to answer
        except _wire.FrameTimeout:
            self._forget(sid, session)
            return _reply(
                f"TimeoutError: code ran longer than {self.timeout:g} s and was stopped; {_LOST}.", "timeout", t0
            ), session
        except _wire.FrameTooBig:
            self._forget(sid, session)
            return _reply(
                f"OutputLimitError: the code's process sent too much output and was stopped; {_LOST}.", "limit", t0
            ), session
        except (_wire.WireError, OSError):
            self._forget(sid, session)
            session.drain_native()
            message, status = _death_message(self._kill(session), self.cfg["memory_limit_mb"])
            return _reply(message + _native_text(session.native_tail), status, t0), None
        session.drain_native()
        session.native_tail = b""  # native output of a call that went well is not shown (see _session_main)
        if iso.child_pids(session.pid):
            self._forget(sid, session)
            return _reply(
                output + f"ProcessLimitError: the code left processes running, so they were stopped; {_LOST}.",
                "limit",
                t0,
            ), session
        if fresh:
            return _reply(output, status, t0), session
        os.kill(session.pid, signal.SIGSTOP)  # frozen until its next call: leftover threads cannot use the CPU
        return _reply(output, status, t0), None

    def _forget(self, sid: str, session: Session) -> None:
        if self.sessions.get(sid) is session:
            del self.sessions[sid]

    # ---- session processes -------------------------------------------------------------------------------------

    def _take_spare(self) -> Session:
        session = self.spare or self._spawn()
        self.spare = None
        if not session.ready:
            try:
                msg = _wire.recv(session.res_r, 1 << 20, deadline=time.monotonic() + _SETUP_TIMEOUT)
            except _wire.WireError as e:
                self._kill(session)
                raise RuntimeError(f"session setup failed: {e}") from None
            if not isinstance(msg, dict) or not msg.get("ready"):
                self._kill(session)
                raise RuntimeError(f"session setup failed: {msg.get('error') if isinstance(msg, dict) else msg}")
            session.ready, session.layers, session.notes = True, list(msg["layers"]), list(msg["notes"])
        return session

    def _spawn(self) -> Session:
        self.counter += 1
        uid = self.cfg["uid_base"] + self.counter % 65536 if self.drop_uid else None
        workdir = None if self.kind != "hooks" else os.path.join(self.cfg["workroot"], f"{os.getpid()}-{self.counter}")
        cmd_r, cmd_w = os.pipe()
        res_r, res_w = os.pipe()
        native_r, native_w = os.pipe()
        if self.session_pidns:
            iso.unshare(iso.CLONE_NEWPID)  # the next child is pid 1 of a new pid namespace
        try:
            pid = os.fork()
        except OSError as e:
            pid, error = -1, e
        if pid != 0 and self.session_pidns:
            iso.setns(self.own_pidns, iso.CLONE_NEWPID)  # back to our own namespace for the next unshare
        if pid < 0:
            for fd in (cmd_r, cmd_w, res_r, res_w, native_r, native_w):
                os.close(fd)
            raise error
        if pid == 0:
            try:
                _session_main(self, cmd_r, res_w, native_w, uid, workdir)
            finally:
                os._exit(70)
        for fd in (cmd_r, res_w, native_w):
            os.close(fd)
        os.set_blocking(cmd_w, False)
        os.set_blocking(native_r, False)
        return Session(pid, cmd_w, res_r, native_r, workdir)

    def _kill(self, session: Session) -> int:
        """Stop a session and everything it started; returns its wait status."""
        for target in (lambda: os.killpg(session.pid, signal.SIGKILL), lambda: os.kill(session.pid, signal.SIGKILL)):
            try:
                target()
            except OSError:
                pass
        try:
            _, status = os.waitpid(session.pid, 0)
        except ChildProcessError:
            status = 0
        for fd in (session.cmd_w, session.res_r, session.native_r):
            try:
                os.close(fd)
            except OSError:
                pass
        if session.workdir:
            shutil.rmtree(session.workdir, onerror=_force_remove)
        return status


def _session_main(worker: Worker, cmd_r: int, res_w: int, native_w: int, uid: int | None, workdir: str | None) -> None:
    """Body of a session process: lock it down, then run code blocks until the worker closes the pipe.

    What the code prints goes through Python's sys.stdout/sys.stderr, captured and capped in-process (`_repl`).
    Fds 1 and 2 themselves (native code, os.write) go to a pipe the worker drains: it only shows their end when the
    process dies (e.g. "Fatal Python error: Segmentation fault", or a native library giving up on memory)."""
    cfg = worker.cfg
    layers: list[str] = []
    notes: list[str] = []
    try:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGALRM):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file over RLIMIT_FSIZE fails with EFBIG, not a kill
        os.setsid()  # its own process group: the worker can kill everything it starts at once
        write_roots: list[str] = []
        if worker.kind != "hooks":
            owner = f",uid={uid},gid={uid}" if uid is not None else ""
            iso.unshare(iso.CLONE_NEWNS)
            iso.mount(
                "tmpfs", "/tmp", "tmpfs", iso.MS_NOSUID | iso.MS_NODEV, f"size={cfg['disk_limit_mb']}m,mode=700{owner}"
            )
            iso.mount("tmpfs", "/dev/shm", "tmpfs", iso.MS_NOSUID | iso.MS_NODEV, f"size=1m,mode=700{owner}")
            if worker.session_pidns:
                iso.mount("proc", "/proc", "proc", iso.MS_NOSUID | iso.MS_NODEV | iso.MS_NOEXEC)
            workdir = "/tmp"
            write_roots.append("/dev/shm")
            layers.append(f"private tmpfs working directory ({cfg['disk_limit_mb']} MiB, gone with the session)")
        else:
            os.mkdir(workdir, 0o700)
            if uid is not None:
                os.chown(workdir, uid, uid)
            layers.append("private working directory (removed with the session)")
        mem = cfg["memory_limit_mb"] << 20
        iso.set_limit(resource.RLIMIT_AS, mem)
        iso.set_limit(resource.RLIMIT_FSIZE, cfg["disk_limit_mb"] << 20)
        iso.set_limit(resource.RLIMIT_CORE, 0)
        iso.set_limit(resource.RLIMIT_CPU, _cpu_budget(cfg["timeout"]))
        set_cpu_limit = iso.cpu_limiter()
        if uid is not None:
            iso.set_limit(resource.RLIMIT_NPROC, cfg["max_threads"] + 1)
        layers.append("rlimits: address space, CPU time per call, file size, open files, core dumps")
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(native_w, 1)
        os.dup2(native_w, 2)
        faulthandler.enable(file=2)
        keep = sorted((cmd_r, res_w))
        os.closerange(3, keep[0])
        os.closerange(keep[0] + 1, keep[1])
        os.closerange(keep[1] + 1, _max_fd())
        iso.set_limit(resource.RLIMIT_NOFILE, 256)
        if uid is not None:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        elif worker.kind == "userns":
            iso.drop_capabilities()
            layers.append("no capabilities")
        iso.set_no_new_privs()
        try:
            iso.forbid_new_namespaces()
            layers.append("seccomp filter: unshare, clone and setns with CLONE_NEW* flags, and clone3, are refused")
        except OSError as e:
            notes.append(f"no seccomp filter ({e.strerror}): model code may create user namespaces (kernel permitting)")
        if worker.landlock_abi:
            abi = worker.landlock_abi
            try:
                own = [(os.path.realpath("/proc/self"), True)]  # /proc/<pid>: this process only
                iso.landlock_restrict(worker.landlock_read + own, [workdir, *write_roots, *_view.DEVICES], abi)
                layers.append(
                    _LANDLOCK_LAYER.format(
                        abi=abi,
                        net="; no TCP connect or bind" if abi >= 4 else "",
                        scope="; no signals or abstract unix sockets outside the session" if abi >= 6 else "",
                    )
                )
                if abi < 4:
                    notes.append(f"Landlock ABI {abi} < 4: TCP connect and bind are not covered by Landlock")
                if abi < 6:
                    notes.append(f"Landlock ABI {abi} < 6: signals and abstract sockets are not scoped to the session")
            except OSError as e:
                notes.append(f"no Landlock ({e.strerror}): native code is confined by the other layers only")
        iso.set_pdeathsig(signal.SIGKILL)  # after the uid change, which clears it
        os.chdir(workdir)
        os.environ.clear()
        os.environ.update(_SESSION_ENV, HOME=workdir, TMPDIR=workdir)
        if "tempfile" in sys.modules:
            sys.modules["tempfile"].tempdir = None
        sys.stdin = sys.__stdin__ = io.StringIO("")  # input() raises EOFError instead of waiting forever
        sys.argv = [""]
        sys.dont_write_bytecode = True
        _guards.install(workdir, write_roots, worker.view.rules(), cfg["max_threads"])
        layers.append(
            "audit hook: no processes, sockets, signals to others, reads outside the allowlist, writes outside the "
            "working directory"
        )
        layers.append("environment scrubbed, stdin closed")
    except BaseException as e:  # noqa: BLE001
        _wire.send(res_w, {"ready": False, "error": f"{type(e).__name__}: {e}"})
        os._exit(71)
    _wire.send(res_w, {"ready": True, "layers": layers, "notes": notes})
    # The code's globals are a real __main__ module, as in a REPL (dataclasses, pickle and typing look it up there).
    main = types.ModuleType("__main__")
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    namespace = main.__dict__
    del worker
    while True:
        try:
            msg = _wire.recv(cmd_r, _REQUEST_MAX_BYTES)
        except _wire.WireError:
            os._exit(0)
        try:
            set_cpu_limit(cfg["timeout"] + 1)
            output, status = _repl.run_cell(
                msg["code"],
                namespace,
                timeout=cfg["timeout"],
                max_chars=cfg["max_output_chars"],
                memory_limit_mb=cfg["memory_limit_mb"],
            )
        except BaseException as e:  # noqa: BLE001 -- e.g. the timeout landing just after the code finished
            output, status = f"{type(e).__name__}: {e}\n", "timeout" if isinstance(e, _repl.CodeTimeout) else "error"
            output = "TimeoutError: code ran too long and was stopped\n" if status == "timeout" else output
        _wire.send(res_w, {"output": output, "status": status})


def _validate(msg, max_chars: int) -> tuple[str, str]:
    if not isinstance(msg, dict) or not isinstance(msg.get("output"), str):
        raise _wire.WireError("malformed result")
    status = msg.get("status")
    if status not in ("ok", "error", "timeout", "limit"):
        raise _wire.WireError("malformed result")
    output = msg["output"]
    limit = max_chars + 200  # room for the truncation marker
    if len(output) > limit:
        output, status = output[:limit] + "\n... [output truncated]\n", "limit" if status == "ok" else status
    return output, status


def _death_message(status: int, memory_limit_mb: int) -> tuple[str, str]:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXCPU:
            return f"CPUTimeLimitError: the code used too much CPU time and was stopped; {_LOST}.", "limit"
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else f"signal {sig}"
        why = {
            signal.SIGSEGV: "segmentation fault",
            signal.SIGBUS: "bus error",
            signal.SIGABRT: "aborted",
            signal.SIGFPE: "arithmetic fault",
            signal.SIGILL: "illegal instruction",
            signal.SIGKILL: f"killed: out of memory (limit {memory_limit_mb} MiB) or out of CPU time",
        }.get(sig, "killed")
        return f"SandboxCrash: the Python process running the code died ({name}, {why}); {_LOST}.", "crash"
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
    return f"SandboxCrash: the Python process running the code exited (exit code {code}); {_LOST}.", "crash"


def _native_text(tail: bytes) -> str:
    """The last lines native code wrote before the process died, without the sandbox's own frames."""
    lines = [
        line
        for line in tail.decode("utf-8", "replace").splitlines()
        if line.strip() and _HERE not in line and "Current thread" not in line
    ]
    text = "\n".join(lines[-6:])[-600:]
    return f"\nLast native output:\n{text}" if text else ""


def _reply(output: str, status: str, t0: float) -> dict:
    return {"output": output, "status": status, "duration": time.monotonic() - t0}


def _cpu_budget(timeout: float) -> int:
    """Hard RLIMIT_CPU of a whole session: each call gets a soft limit of `timeout` more CPU seconds, and at most this
    many in total (a session that keeps hitting its limits is killed)."""
    return int(32 * (timeout + 2))


def _grace(timeout: float) -> float:
    """How long past its timeout a session gets to stop by itself (it is interrupted at the timeout) before it is
    killed: code stuck in one long C call, or that catches the interrupt, does not stop by itself."""
    return min(3.0, 0.5 + 0.1 * timeout)


def _max_fd() -> int:
    return max(os.sysconf("SC_OPEN_MAX"), 1 << 16)


def _force_remove(func, path, exc_info) -> None:
    try:
        os.chmod(os.path.dirname(path), 0o700)
        os.chmod(path, 0o700)
        func(path)
    except OSError:
        pass


def _wait_and_mirror(pid: int) -> None:
    """The process left outside the namespaces: hold nothing (the trainer's pipes must reach EOF when the worker
    dies), wait for the worker, exit as it did."""
    os.closerange(3, _max_fd())
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))


def main() -> None:
    # The trainer's pipes move off fds 0/1, which point at /dev/null: a stray print cannot corrupt a frame.
    in_fd, out_fd = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    cfg = _wire.recv(in_fd, 1 << 20)
    if cfg["pdeathsig"]:
        iso.set_pdeathsig(signal.SIGKILL)
        if os.getppid() != cfg["parent_pid"]:
            os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's to handle; it then closes the pool
    worker = Worker(cfg, in_fd, out_fd)
    worker.setup()
    worker.serve()
    os._exit(0)


if __name__ == "__main__":
    main()
