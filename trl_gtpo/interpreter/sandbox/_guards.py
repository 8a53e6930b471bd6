"""In-interpreter guards of a session process: a PEP 578 audit hook plus a few patched entry points.

This is the layer that works everywhere (no privileges, no namespaces), so on a locked-down machine it is the whole
file (reads: the allowlist of `_view.py`), network and process policy; where the kernel layers of `_isolation.py` are
available it is a second line that also turns a forbidden action into a clear Python exception for the model
("PermissionError: sandbox: ...") instead of an obscure errno. Audit hooks cannot be removed once added, but native
code (ctypes) can get around them; the kernel layers are what hold against that, so this module only makes ctypes'
most obvious escapes (calling fork, kill, socket) fail by name.
"""

import _thread
import os
import sys
import threading

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

# Native functions a snippet has no business calling through ctypes: process creation, signals, sockets, namespaces,
# mounts, credentials, limits, raw syscalls.
_DENIED_SYMBOLS = frozenset(
    "fork vfork clone clone3 __clone execve execv execvp execvpe execl execlp execle fexecve system popen posix_spawn "
    "posix_spawnp daemon kill killpg tgkill tkill sigqueue pidfd_send_signal socket socketpair connect bind "
    "syscall unshare setns mount umount umount2 pivot_root chroot ptrace prctl setrlimit prlimit prlimit64 "
    "setuid setgid setreuid setregid setresuid setresgid seteuid setegid capset".split()
)


class SandboxLimitError(PermissionError):
    """A process or thread cap of the sandbox refused the action (reported with status "limit"). Shown to the model
    as a plain PermissionError."""

    sandbox_limit = True


SandboxLimitError.__module__ = "builtins"
SandboxLimitError.__qualname__ = SandboxLimitError.__name__ = "PermissionError"


def _refuse(what: str) -> PermissionError:
    return PermissionError(f"sandbox: {what} is not allowed")


def install(workdir: str, write_roots: list[str], view_rules: list[tuple[str, bool]], max_threads: int) -> None:
    """Install the guards for the rest of this process's life. Call last: the hook also binds the caller.

    `view_rules`: (path, readable) pairs, the longest matching path decides; anything they do not match is not
    readable. The working directory and `write_roots` are readable too."""
    own_pid = os.getpid()
    write_roots = [os.path.realpath(p) for p in [workdir, *write_roots]]
    rules = [(os.path.realpath(p), ok) for p, ok in view_rules]
    rules += [(p, True) for p in [*write_roots, f"/proc/{own_pid}"]]
    rules.sort(key=lambda rule: len(rule[0]), reverse=True)

    def resolve(path) -> str | None:
        if isinstance(path, int):
            return None  # an already open descriptor: it was checked when it was opened
        try:
            text = os.fsdecode(path)
        except (TypeError, ValueError):
            return None
        if not os.path.isabs(text) and ".." in text.split("/"):
            # Resolved against the cwd here, but os.open(..., dir_fd=fd) resolves it against fd, which no audit event
            # shows: climbing from a descriptor would reach any file.
            raise _refuse(f"a relative path that climbs with '..' ({text})")
        return os.path.realpath(text)

    def under(path: str, roots: list[str]) -> bool:
        return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)

    def check_write(path) -> None:
        real = resolve(path)
        if real is not None and real != "/dev/null" and not under(real, write_roots):
            raise _refuse(f"writing outside the working directory {workdir} ({os.fsdecode(path)})")

    def check_read(path) -> None:
        real = resolve(path)
        if real is None:
            return
        if real.startswith("/proc/"):
            head = real[6:].split("/", 1)[0]
            if head.isdigit() and int(head) != own_pid:
                raise _refuse("inspecting other processes")
        if not next((ok for root, ok in rules if under(real, [root])), False):
            raise _refuse(f"reading {os.fsdecode(path)} (only the standard library, preloaded packages and {workdir})")

    def on_open(args) -> None:
        path, mode, flags = args
        writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & _WRITE_FLAGS)
        if writing:
            check_write(path)
        else:
            check_read(path)

    def on_list(args) -> None:
        if args and args[0] is not None:
            check_read(args[0])

    def on_path_change(args) -> None:
        check_write(args[0])

    def on_two_paths(args) -> None:
        check_write(args[0])
        check_write(args[1])

    def on_link(args) -> None:
        check_write(args[1])

    def on_truncate(args) -> None:
        check_write(args[0])

    def on_process(args) -> None:
        raise SandboxLimitError("sandbox: creating processes is not allowed")

    def on_socket(args) -> None:
        raise _refuse("network access")

    def on_kill(args) -> None:
        if args[0] != own_pid:
            raise _refuse("sending signals to other processes")

    def on_killpg(args) -> None:
        raise _refuse("sending signals to other processes")

    def on_rlimit(args) -> None:
        # resource.setrlimit(resource, limits), resource.prlimit(pid, resource, limits=None): reading is fine
        if len(args) == 2 or args[2] is not None:
            raise _refuse("changing resource limits")

    def on_sqlite(args) -> None:
        if isinstance(args[0], (str, bytes, os.PathLike)) and os.fsdecode(args[0]) != ":memory:":
            check_read(args[0])

    def on_dlsym(args) -> None:
        name = args[1] if isinstance(args[1], str) else None
        if name is not None and name in _DENIED_SYMBOLS:
            raise _refuse(f"calling the native function {name}()")

    handlers = {
        "open": on_open,
        "os.listdir": on_list,
        "os.scandir": on_list,
        "os.remove": on_path_change,
        "os.rmdir": on_path_change,
        "os.mkdir": on_path_change,
        "os.chmod": on_path_change,
        "os.chown": on_path_change,
        "os.chflags": on_path_change,
        "os.lchflags": on_path_change,
        "os.utime": on_path_change,
        "os.setxattr": on_path_change,
        "os.removexattr": on_path_change,
        "os.truncate": on_truncate,
        "os.rename": on_two_paths,
        "os.link": on_two_paths,
        "os.symlink": on_link,
        "shutil.rmtree": on_path_change,
        "os.fork": on_process,
        "os.forkpty": on_process,
        "os.posix_spawn": on_process,
        "os.spawn": on_process,
        "os.exec": on_process,
        "os.system": on_process,
        "subprocess.Popen": on_process,
        "pty.spawn": on_process,
        "socket.__new__": on_socket,
        "socket.getaddrinfo": on_socket,
        "socket.gethostbyname": on_socket,
        "socket.gethostbyaddr": on_socket,
        "socket.getnameinfo": on_socket,
        "os.kill": on_kill,
        "os.killpg": on_killpg,
        "resource.setrlimit": on_rlimit,
        "resource.prlimit": on_rlimit,
        "sqlite3.connect": on_sqlite,
        "ctypes.dlsym": on_dlsym,
        "ctypes.dlsym/handle": on_dlsym,
    }

    def hook(event: str, args: tuple) -> None:
        handler = handlers.get(event)
        if handler is not None:
            handler(args)

    _cap_threads(max_threads)
    _block_posixsubprocess()
    sys.addaudithook(hook)


def _cap_threads(max_threads: int) -> None:
    # Python 3.11 raises no audit event when a thread starts, so wrap the functions every thread goes through.
    # Under a uid of its own, RLIMIT_NPROC is the hard version of this cap.
    def capped(start):
        def start_thread(*args, **kwargs):
            if threading.active_count() >= max_threads + 1:
                raise SandboxLimitError(f"sandbox: at most {max_threads} threads may run at once")
            return start(*args, **kwargs)

        return start_thread

    for owner, name in (
        (_thread, "start_new_thread"),
        (_thread, "start_joinable_thread"),
        (threading, "_start_new_thread"),
        (threading, "_start_joinable_thread"),
    ):
        if hasattr(owner, name):
            setattr(owner, name, capped(getattr(owner, name)))


def _block_posixsubprocess() -> None:
    # subprocess raises its audit event in Popen, but its native helper would still fork if called directly.
    try:
        import _posixsubprocess
    except ImportError:
        return

    def fork_exec(*args, **kwargs):
        raise SandboxLimitError("sandbox: creating processes is not allowed")

    _posixsubprocess.fork_exec = fork_exec
