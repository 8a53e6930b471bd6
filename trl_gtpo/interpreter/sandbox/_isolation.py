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


# ---- Landlock (Linux >= 5.13): a kernel-enforced allowlist by path, for unprivileged processes, no namespaces ----

_SYS_LANDLOCK_CREATE_RULESET, _SYS_LANDLOCK_ADD_RULE, _SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446  # all arches
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1
_FS_EXECUTE, _FS_WRITE_FILE, _FS_READ_FILE, _FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_WRITE_DIR = sum(1 << bit for bit in range(4, 13))  # remove dir/file, make char/dir/reg/sock/fifo/block/sym
_FS_REFER, _FS_TRUNCATE = 1 << 13, 1 << 14  # ABI 2, ABI 3
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1  # ABI 4
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6
_FILE_RIGHTS = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | _FS_TRUNCATE  # the rights a rule on a file may hold


class _RulesetAttr(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in ("handled_access_fs", "handled_access_net", "scoped")]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_abi() -> int:
    """The Landlock ABI version this kernel offers (0: none, e.g. before Linux 5.13 or not enabled at boot)."""
    version = ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION)
    ret = _libc.syscall(ctypes.c_long(_SYS_LANDLOCK_CREATE_RULESET), None, ctypes.c_size_t(0), version)
    return max(0, int(ret))


def landlock_restrict(read: list[tuple[str, bool]], write: list[str], abi: int) -> None:
    """Restrict this process (and all it starts) with Landlock: `read` lists (path, whole) pairs, whole=True for a tree
    (or file) readable beneath, whole=False for directory listings only; `write` the paths where anything may be
    created, read, written and removed (devices: read and write); every other path is neither readable nor
    writable (stat and path walks are outside Landlock: they still work). From ABI 4 no TCP bind or connect, from
    ABI 6 no signals and no abstract unix sockets outside this process's domain. Needs no_new_privs (set first)."""
    handled = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | _FS_READ_DIR | _FS_WRITE_DIR
    handled |= (_FS_REFER if abi >= 2 else 0) | (_FS_TRUNCATE if abi >= 3 else 0)
    attr = _RulesetAttr(handled, _NET_BIND_TCP | _NET_CONNECT_TCP, _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL)
    size = 8 if abi < 4 else 16 if abi < 6 else 24  # the struct grew with the ABI: pass what this kernel knows
    ruleset = _libc.syscall(
        ctypes.c_long(_SYS_LANDLOCK_CREATE_RULESET), ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0)
    )
    if ruleset < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"landlock_create_ruleset: {os.strerror(err)}")
    try:
        rules = [(path, _FS_READ_FILE | _FS_EXECUTE | _FS_READ_DIR if whole else _FS_READ_DIR) for path, whole in read]
        rules += [(path, handled) for path in write]
        for path, access in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # gone since the view was built: nothing to allow
            try:
                if not stat.S_ISDIR(os.fstat(fd).st_mode):
                    access &= _FILE_RIGHTS
                    if not access:
                        continue
                rule = _PathBeneathAttr(access & handled, fd)
                ret = _libc.syscall(
                    ctypes.c_long(_SYS_LANDLOCK_ADD_RULE),
                    ctypes.c_int(ruleset),
                    ctypes.c_int(_LANDLOCK_RULE_PATH_BENEATH),
                    ctypes.byref(rule),
                    ctypes.c_uint32(0),
                )
                if ret != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"landlock_add_rule {path}: {os.strerror(err)}")
            finally:
                os.close(fd)
        ret = _libc.syscall(ctypes.c_long(_SYS_LANDLOCK_RESTRICT_SELF), ctypes.c_int(ruleset), ctypes.c_uint32(0))
        if ret != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"landlock_restrict_self: {os.strerror(err)}")
    finally:
        os.close(ruleset)
