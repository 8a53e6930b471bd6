"""Linux kernel isolation for sandbox processes: namespaces, mounts, credentials, resource limits, a seccomp filter.

These are the layers that hold even against code that defeats the in-interpreter guards (`_guards.py`, e.g. through
ctypes): a network namespace has no interface to reach, a read-only mount cannot be written, an unprivileged uid
cannot signal the trainer, RLIMIT_NPROC on a uid of its own stops a fork bomb. Every helper raises `OSError` when the
kernel refuses, so the caller can fall back to the next layer on machines (containers, hardened kernels) that forbid
it. Stdlib only (ctypes for the syscalls Python 3.11 lacks); imported by the worker process by path.
"""

import ctypes
import errno
import os
import platform
import resource
import stat

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18

_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38
_SYS_MOUNT_SETATTR = 442  # x86_64 and aarch64 share the number (new syscalls are unified)
_AT_FDCWD = -100
_AT_RECURSIVE = 0x8000
_MOUNT_ATTR_RDONLY = 0x1

_MNT_DETACH = 2
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_RET_ERRNO = 0x00050000
_SECCOMP_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}  # AUDIT_ARCH_*
_SYS_NS = {
    "x86_64": {"clone": 56, "unshare": 272, "setns": 308, "clone3": 435},
    "aarch64": {"clone": 220, "unshare": 97, "setns": 268, "clone3": 435},
}
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
_CLONE_NEWTIME = 0x80
_NS_FLAGS = CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: None if s is None else os.fsencode(s)  # noqa: E731
    ret = _libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data))
    _check(ret, f"mount {target}")


def set_pdeathsig(signum: int) -> None:
    """Have the kernel send `signum` to this process when the thread that forked it exits."""
    _check(_libc.prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(signum), 0, 0, 0), "prctl(PDEATHSIG)")


def set_no_new_privs() -> None:
    _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), 0, 0, 0), "prctl(NO_NEW_PRIVS)")


def drop_capabilities() -> None:
    """Clear every capability of this process (used when a user namespace left us uid 0 with all of them)."""

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3, all zero
    _check(_libc.capset(ctypes.byref(header), data), "capset")


def enter_user_namespace(extra_flags: int) -> None:
    """Become uid 0 of a new user namespace (mapped to our own uid), which lets an unprivileged trainer create the
    other namespaces."""
    uid, gid = os.getuid(), os.getgid()
    unshare(CLONE_NEWUSER | extra_flags)
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"0 {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"0 {gid} 1")


def make_mounts_private() -> None:
    """Nothing mounted from here on may propagate back to the host's mount namespace."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)


def make_readonly(path: str) -> None:
    """Make the mount at `path` and every mount below it read-only (later mounts, such as a session's private tmpfs,
    stay writable)."""

    class MountAttr(ctypes.Structure):
        _fields_ = [(n, ctypes.c_uint64) for n in ("attr_set", "attr_clr", "propagation", "userns_fd")]

    attr = MountAttr(_MOUNT_ATTR_RDONLY, 0, 0, 0)
    ret = _libc.syscall(
        ctypes.c_long(_SYS_MOUNT_SETATTR),
        ctypes.c_int(_AT_FDCWD),
        os.fsencode(path),
        ctypes.c_uint(_AT_RECURSIVE),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
    )
    if ret == 0:
        return
    # Kernels before 5.12 have no mount_setattr: remount each mount point, keeping the flags a user namespace may not
    # clear.
    keep_flags = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC}
    with open("/proc/self/mountinfo") as f:
        entries = [line.split() for line in f]
    for fields in entries:
        target = fields[4].encode().decode("unicode_escape")
        if not (target == path or target.startswith(path.rstrip("/") + "/")):
            continue
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for opt in fields[5].split(","):
            flags |= keep_flags.get(opt, 0)
        try:
            mount(None, target, None, flags)
        except OSError:
            if target == path:
                raise


def pivot_root(new_root: str) -> None:
    """Make the mount at `new_root` this mount namespace's root and detach the old root entirely (a chroot would
    leave it reachable to a process that regains a capability)."""
    nr = _SYS_PIVOT_ROOT.get(platform.machine())
    if nr is None:
        raise OSError(errno.ENOSYS, f"pivot_root: no syscall number known for {platform.machine()}")
    os.chdir(new_root)
    _check(_libc.syscall(ctypes.c_long(nr), b".", b"."), "pivot_root")
    # pivot_root(".", ".") stacks the old root on top of the new one; detaching it leaves the new one.
    _check(_libc.umount2(b".", ctypes.c_int(_MNT_DETACH)), "umount2(old root)")
    os.chdir("/")


def forbid_new_namespaces() -> None:
    """Install a seccomp filter on this process and all it starts: unshare, clone and setns that would create or
    join a namespace fail with EPERM, clone3 with ENOSYS (its flags sit in a struct a filter cannot read; glibc then
    falls back to clone). Model code has no use for namespaces, and each new user namespace is kernel attack surface.
    Needs no_new_privs (set first) or CAP_SYS_ADMIN."""
    machine = platform.machine()
    if machine not in _SECCOMP_ARCH:
        raise OSError(errno.ENOSYS, f"seccomp filter: no syscall numbers known for {machine}")
    nr = _SYS_NS[machine]
    program = [
        ("ld", 4),  # seccomp_data.arch
        ("jeq", _SECCOMP_ARCH[machine], None, "enosys"),  # another ABI (i386 through int 0x80): refuse all of it
        ("ld", 0),  # seccomp_data.nr
        ("jge", 0x40000000, "enosys", None),  # x32 syscall numbers on x86_64
        ("jeq", nr["clone3"], "enosys", None),
        ("jeq", nr["setns"], "eperm", None),
        ("jeq", nr["unshare"], "unshare", None),
        ("jeq", nr["clone"], "clone", None),
        ("ret", _SECCOMP_RET_ALLOW),
        ("label", "unshare"),
        ("ld", 16),  # low 32 bits of args[0], the flags (little-endian)
        ("jset", _NS_FLAGS | _CLONE_NEWTIME, "eperm", None),
        ("ret", _SECCOMP_RET_ALLOW),
        ("label", "clone"),
        ("ld", 16),
        ("jset", _NS_FLAGS, "eperm", None),  # not CLONE_NEWTIME: clone's low byte is the exit signal
        ("ret", _SECCOMP_RET_ALLOW),
        ("label", "eperm"),
        ("ret", _SECCOMP_RET_ERRNO | errno.EPERM),
        ("label", "enosys"),
        ("ret", _SECCOMP_RET_ERRNO | errno.ENOSYS),
    ]
    filters = _assemble(program)

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = SockFprog(len(filters), ctypes.addressof(filters))
    _check(_libc.prctl(_PR_SET_SECCOMP, ctypes.c_ulong(_SECCOMP_MODE_FILTER), ctypes.byref(prog), 0, 0), "seccomp")


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint32)]


def _assemble(program: list[tuple]) -> ctypes.Array:
    """Classic BPF from (op, k[, jump-if-true label, jump-if-false label]) tuples; a None label falls through."""
    labels, position = {}, 0
    for ins in program:
        if ins[0] == "label":
            labels[ins[1]] = position
        else:
            position += 1
    codes = {"ld": 0x20, "jeq": 0x15, "jge": 0x35, "jset": 0x45, "ret": 0x06}  # ld: BPF_LD|BPF_W|BPF_ABS
    out = []
    for ins in program:
        if ins[0] == "label":
            continue
        after = len(out) + 1  # jumps count from the next instruction
        jt, jf = (0 if j is None else labels[j] - after for j in (*ins[2:4], None, None)[:2])
        out.append(_SockFilter(codes[ins[0]], jt, jf, ins[1]))
    return (_SockFilter * len(out))(*out)


def world_traversable(paths: list[str]) -> bool:
    """True if a process of an arbitrary other uid can reach and read every path (so a session that drops to such a
    uid can still import the standard library and site-packages)."""
    for path in paths:
        if not os.path.isdir(path):
            continue
        st = os.stat(path)
        if not (st.st_mode & stat.S_IROTH and st.st_mode & stat.S_IXOTH):
            return False
        parent = os.path.dirname(path)
        while True:
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return False
            if parent == "/":
                break
            parent = os.path.dirname(parent)
    return True


def child_pids(pid: int) -> list[int]:
    """Processes forked by any thread of `pid` (needs CONFIG_PROC_CHILDREN; [] when unknown)."""
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(p) for p in f.read().split())
    except OSError:
        return []
    return out


def cpu_limiter():
    """Return `f(seconds)`, which sets this process's soft RLIMIT_CPU to its CPU time so far plus `seconds` (never
    above the hard limit). It calls the native setrlimit resolved here, before the session's audit hook exists: the
    hook refuses `resource.setrlimit` to the model's code, and the worker cannot always do it from outside (prlimit on
    another uid needs CAP_SYS_RESOURCE, which containers often drop)."""

    class RLimit(ctypes.Structure):
        _fields_ = [("cur", ctypes.c_ulong), ("max", ctypes.c_ulong)]  # rlim_t is unsigned long on 64-bit Linux

    setrlimit = _libc.setrlimit

    def set_soft(seconds: float) -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
        want = int(usage.ru_utime + usage.ru_stime + seconds) + 1
        limit = RLimit(want if hard == resource.RLIM_INFINITY else min(want, hard), hard & 0xFFFFFFFFFFFFFFFF)
        setrlimit(resource.RLIMIT_CPU, ctypes.byref(limit))

    return set_soft


def set_limit(which: int, soft: int, hard: int | None = None) -> None:
    resource.setrlimit(which, (soft, soft if hard is None else hard))
