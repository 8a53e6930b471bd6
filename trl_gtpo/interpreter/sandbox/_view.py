"""The filesystem a session sees: an allowlist, built from what the worker actually imported.

A deny list (home directories, the working directory) leaves everything else on the host readable: a data directory
elsewhere, the source tree, the Hugging Face cache, the data sets packaged in site-packages with their answers. A
policy being optimized will find the one file that holds its reward. So a session sees only:

- the standard library (read-only), with any site-packages inside it shown empty;
- the top-level directories of the packages the worker preloaded (numpy, sympy, their dependencies), nothing else of
  site-packages;
- shared libraries (/usr/lib, /lib) for extension modules, time zones, a few /dev nodes;
- its own /proc and private working directory (mounted by the session itself).

`View.enter` makes that the whole filesystem of a worker (tmpfs root, read-only binds, pivot_root: the host's tree is
detached, not merely covered), where the kernel allows mount namespaces. `View.rules` is the same allowlist for the
audit hook (`_guards.py`), which is all there is on machines without namespaces. Stdlib only.
"""

import glob
import os
import sys
import sysconfig

import _isolation as iso

_SYSTEM = ("/usr/lib", "/usr/lib64", "/usr/lib32", "/lib", "/lib64", "/lib32", "/usr/share/zoneinfo")
_SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/localtime")
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
_MOUNT_POINTS = ("/proc", "/tmp", "/dev/shm")  # filled per worker (/proc) or per session (/tmp, /dev/shm)


class View:
    """Paths a session may read: `expose` (whole trees), `blank` (directories inside them shown empty: site-packages),
    `packages` (preloaded packages inside the blank directories)."""

    def __init__(self, expose: list[str], blank: list[str], packages: list[str]):
        self.expose, self.blank, self.packages = expose, blank, packages

    @classmethod
    def of_this_interpreter(cls) -> "View":
        """The allowlist for this process's modules: call after the preload."""
        stdlib = _existing(sysconfig.get_path("stdlib"), sysconfig.get_path("platstdlib"))
        site_dirs = [p for p in sys.path if p and os.path.isdir(p) and not any(_within(p, s) for s in stdlib)]
        for root in [*stdlib, *glob.glob("/usr/lib/python3*"), *glob.glob("/usr/local/lib/python3*")]:
            site_dirs += [os.path.join(root, n) for n in ("site-packages", "dist-packages")]
        site_dirs = _existing(*site_dirs)
        packages = set()
        for module in list(sys.modules.values()):
            paths = [getattr(module, "__file__", None), *(getattr(module, "__path__", None) or [])]
            for path in paths:
                if not isinstance(path, str):
                    continue
                path = os.path.abspath(path)
                site = next((s for s in site_dirs if _within(path, s) and path != s), None)
                if site is not None:
                    top = path[len(site) :].strip("/").split("/")[0]
                    packages.add(os.path.join(site, top))
                    packages.add(os.path.join(site, top.split(".")[0] + ".libs"))  # numpy.libs: vendored .so files
        expose = _existing(*stdlib, *_SYSTEM, *_SYSTEM_FILES)
        return cls(expose, site_dirs, sorted(p for p in packages if os.path.exists(p)))

    def rules(self) -> list[tuple[str, bool]]:
        """(path, readable) pairs for the audit hook: the longest matching path decides."""
        out = [(p, True) for p in self.expose + list(DEVICES)]
        out += [(p, False) for p in self.blank] + [(p, True) for p in self.packages]
        return [(q, ok) for p, ok in out for q in {os.path.abspath(p), os.path.realpath(p)}]

    def landlock_read(self) -> list[tuple[str, bool]]:
        """The same allowlist as (path, whole) pairs for Landlock: whole=True, everything beneath is readable;
        whole=False, only directory listings beneath. Landlock grants whole trees and cannot carve a blank directory
        out of one, so a tree holding one is split into its entries (each granted whole unless it holds a blank
        directory itself); where Python looks modules up in such a tree (a `sys.path` entry, e.g. a standard library
        with site-packages inside), it is also given its listings: then the names in the blank directory can be
        listed, never read."""
        blank = [os.path.realpath(p) for p in self.blank]
        search_path = {os.path.realpath(p) for p in sys.path if p}
        out: list[tuple[str, bool]] = []

        def grant(path: str) -> None:
            inner = [b for b in blank if _within(b, path)]
            if not inner:
                out.append((path, True))
                return
            if path in inner:
                return
            if path in search_path:
                out.append((path, False))  # listings only: the entries below are granted one by one
            try:
                entries = sorted(os.listdir(path))
            except OSError:
                return
            for name in entries:
                grant(os.path.join(path, name))

        for path in self.expose:
            grant(os.path.realpath(path))
        out += [(os.path.realpath(p), True) for p in self.packages]
        return out

    def readable_dirs(self) -> list[str]:
        return [p for p in self.expose + self.packages if os.path.isdir(p)]

    def enter(self) -> None:
        """Make this view the root filesystem of this process (which must be in its own mount namespace, with
        private mounts, in its pid namespace already: the /proc mounted here shows that namespace)."""
        plan = _Plan()
        for path in sorted(self.expose, key=len):  # outer trees first: a tree inside one already bound is skipped
            plan.bind(path)
        for path in self.blank:
            plan.blank(path)
        for path in self.packages:
            plan.bind(path)
        for path in DEVICES:
            if os.path.exists(path):
                plan.bind(path)
        for path in _MOUNT_POINTS:
            plan.ensure(path, is_dir=True)
        sources = {op[1]: os.open(op[1], os.O_PATH | os.O_CLOEXEC) for op in plan.ops if op[0] == "bind"}
        root = "/tmp"  # mounted over: the host's /tmp is reached through the descriptors above only
        try:
            iso.mount("tmpfs", root, "tmpfs", iso.MS_NOSUID | iso.MS_NODEV, "mode=755,size=1m")
            for op in plan.ops:
                kind, path, target = op[0], root + op[1], op[-1]
                if kind == "dir":
                    os.mkdir(path, 0o755)
                elif kind == "file":
                    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
                elif kind == "symlink":
                    os.symlink(target, path)
                elif kind == "tmpfs":
                    iso.mount("tmpfs", path, "tmpfs", iso.MS_NOSUID | iso.MS_NODEV, "mode=755,size=1m")
                else:
                    iso.mount(f"/proc/self/fd/{sources[op[1]]}", path, None, iso.MS_BIND | iso.MS_REC)
                    iso.make_readonly(path)  # before anything else is created: never write through to the host
        finally:
            for fd in sources.values():
                os.close(fd)
        iso.mount("proc", root + "/proc", "proc", iso.MS_NOSUID | iso.MS_NODEV | iso.MS_NOEXEC)
        iso.pivot_root(root)
        iso.make_readonly("/")


class _Plan:
    """The operations that build the view under a new root: directories, the host's symlinks along each path (so
    the paths Python already knows still resolve), bind mounts, empty tmpfs."""

    def __init__(self):
        self.ops: list[tuple] = []
        self.known: dict[str, str] = {"/": "dir"}  # path -> "dir" | "file" | "symlink" | "bind" | "tmpfs"

    def bind(self, path: str) -> None:
        real = os.path.realpath(path)
        self.ensure(path, is_dir=os.path.isdir(real))
        if not self._inside_bind(real):
            self.ops.append(("bind", real))
            self.known[real] = "bind"

    def blank(self, path: str) -> None:
        real = os.path.realpath(path)
        if self._inside_bind(real):
            self.ops.append(("tmpfs", real))
            self.known[real] = "tmpfs"
        else:
            self.ensure(path, is_dir=True)

    def ensure(self, path: str, is_dir: bool) -> str:
        """Create `path` in the new tree unless it is there already; returns the host path it resolves to."""
        current = "/"
        parts = [p for p in path.split("/") if p]
        for i, part in enumerate(parts):
            host = os.path.join(current, part)
            last = i == len(parts) - 1
            if os.path.islink(host):
                if not self._exists(host):
                    self.ops.append(("symlink", host, os.readlink(host)))
                    self.known[host] = "symlink"
                current = self.ensure(os.path.realpath(host), is_dir or not last)
                continue
            if not self._exists(host):
                kind = "dir" if is_dir or not last else "file"
                self.ops.append((kind, host))
                self.known[host] = kind
            current = host
        return current

    def _exists(self, path: str) -> bool:
        return path in self.known or self._inside_bind(path)

    def _inside_bind(self, path: str) -> bool:
        """Inside a bound host tree, and not inside a blank directory in it."""
        owner = max((k for k in self.known if _within(path, k)), key=len)
        return self.known[owner] == "bind"


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _existing(*paths: str) -> list[str]:
    out: list[str] = []
    for p in paths:
        if p and os.path.lexists(p) and os.path.abspath(p) not in out:
            out.append(os.path.abspath(p))
    return out
