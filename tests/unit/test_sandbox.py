"""Adversarial tests of the local code sandbox (`trl_gtpo.interpreter.sandbox.SandboxPool`).

Each hostile snippet must end within its (small) timeout with a clear message, leave the test process, its files and
the pool unharmed, and the next call must work. No timing assertions: behaviour only (status, output, side effects).
"""

import ctypes
import errno
import glob
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import psutil
import pytest

from trl_gtpo.interpreter.executor import CodeCall, ExecutionResult
from trl_gtpo.interpreter.sandbox import SandboxPool
from trl_gtpo.interpreter.sandbox.pool import (
    DEFAULT_PRELOAD,
    HUNG_WORKER_MARGIN_S,
    concurrency_size,
    default_size,
    min_memory_limit_mb,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox needs Linux")

TIMEOUT = 2.0
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SECRET = "gtpo-fake-secret-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def pool():
    os.environ["GTPO_FAKE_SECRET_TOKEN"] = SECRET  # set before the workers start: they must not inherit it
    try:
        p = SandboxPool(2, timeout=TIMEOUT, memory_limit_mb=512, max_output_chars=1024, preload=("math",))
    finally:
        del os.environ["GTPO_FAKE_SECRET_TOKEN"]
    yield p
    p.close()


@pytest.fixture(scope="module", params=["hooks", "userns"])
def fallback_pool(request):
    """The layers an unprivileged trainer gets: "hooks" is only the portable layer (audit hook + rlimits), as on a
    machine that allows no namespaces; "userns" adds namespaces through a user namespace, without a uid change."""
    os.environ["GTPO_FAKE_SECRET_TOKEN"] = SECRET
    try:
        p = SandboxPool(1, timeout=TIMEOUT, memory_limit_mb=512, preload=("math",), isolation=request.param)
    finally:
        del os.environ["GTPO_FAKE_SECRET_TOKEN"]
    yield p
    p.close()


def run(pool: SandboxPool, code: str, session: str | None = None) -> ExecutionResult:
    return pool.run([CodeCall(session or uuid.uuid4().hex, code)])[0]


def assert_healthy(pool: SandboxPool, session: str | None = None) -> None:
    """The pool (and, if given, the session) still runs code."""
    result = run(pool, "6 * 7", session)
    assert (result.status, result.output) == ("ok", "42\n")


def assert_refused(result: ExecutionResult, what: str) -> None:
    assert result.status in ("error", "limit"), result
    assert "PermissionError: sandbox:" in result.output and what in result.output, result.output


# ---- the REPL contract --------------------------------------------------------------------------------------------


def test_repl_output_format(pool):
    assert run(pool, "1 + 1").output == "2\n"
    assert run(pool, "print('a')\nNone").output == "a\n"
    result = run(pool, "x = 1\ny = 0\nx / y")
    assert result.status == "error"
    assert result.output == (
        "Traceback (most recent call last):\n"
        '  File "<stdin>", line 3, in <module>\n'
        "ZeroDivisionError: division by zero\n"
    )
    result = run(
        pool, "import sys\nprint('out')\nprint('err', file=sys.stderr)\ndef f():\n    raise ValueError('bad')\nf()"
    )
    assert result.output.startswith("out\nerr\nTraceback (most recent call last):\n")
    assert result.output.endswith('  File "<stdin>", line 5, in f\nValueError: bad\n')
    result = run(pool, "1 +")
    assert result.status == "error" and "SyntaxError" in result.output and "<stdin>" in result.output


def test_session_state_persists_and_is_isolated(pool):
    a, b = f"a-{uuid.uuid4().hex}", f"b-{uuid.uuid4().hex}"
    pool.run([CodeCall(a, "x = 'from a'"), CodeCall(b, "x = 'from b'")])
    results = pool.run([CodeCall(a, "x"), CodeCall(b, "x")])
    assert [r.output for r in results] == ["'from a'\n", "'from b'\n"]
    # module state is per session too: each session is its own process
    run(pool, "import math\nmath.pi = 3", a)
    assert run(pool, "import math\nmath.pi", b).output.startswith("3.14159")
    pool.close_session(a)
    result = run(pool, "x", a)
    assert result.status == "error" and "NameError" in result.output
    pool.close_session(a)
    pool.close_session(b)


def test_more_sessions_than_workers(pool):
    sessions = [f"many-{i}-{uuid.uuid4().hex}" for i in range(7)]
    pool.run([CodeCall(s, f"v = {i}") for i, s in enumerate(sessions)])
    results = pool.run([CodeCall(s, "v * 10") for s in reversed(sessions)])
    assert [r.output for r in results] == [f"{i * 10}\n" for i in reversed(range(7))]
    for s in sessions:
        pool.close_session(s)


def test_least_recently_used_session_is_dropped_past_the_cap():
    with SandboxPool(1, timeout=TIMEOUT, preload=(), max_sessions_per_worker=2) as p:
        p.run([CodeCall(s, f"v = {s!r}") for s in ("a", "b")])
        p.run([CodeCall("a", "v"), CodeCall("c", "v = 'c'")])  # "b" is the least recently used
        results = p.run([CodeCall(s, "v") for s in ("a", "b", "c")])
        assert [r.output for r in results][::2] == ["'a'\n", "'c'\n"]
        assert results[1].output.startswith("[note:") and "NameError" in results[1].output


def test_calls_of_one_run_overlap(pool):
    code = "import time\nt0 = time.time()\ntime.sleep(0.5)\nprint(t0, time.time())"
    results = pool.run([CodeCall(f"par-{i}-{uuid.uuid4().hex}", code) for i in range(2)])
    (s0, e0), (s1, e1) = [tuple(map(float, r.output.split())) for r in results]
    assert max(s0, s1) < min(e0, e1), "the two calls ran one after the other"


def test_fresh_namespace_without_persistent_sessions():
    with SandboxPool(1, timeout=TIMEOUT, preload=(), persistent_sessions=False) as p:
        p.run([CodeCall("s", "x = 1\nimport math\nmath.pi = 3")])
        result = p.run([CodeCall("s", "import math\nprint(math.pi)\nx")])[0]
        assert result.output.startswith("3.14159") and "NameError" in result.output


# ---- hostile code -------------------------------------------------------------------------------------------------


def test_infinite_loop(pool):
    session = uuid.uuid4().hex
    run(pool, "kept = 5", session)
    result = run(pool, "while True:\n    pass", session)
    assert result.status == "timeout"
    assert result.output.startswith(f"TimeoutError: code ran longer than {TIMEOUT:g} s and was stopped")
    assert run(pool, "kept", session).output == "5\n"  # interrupted, not killed: the session lives on


def test_loop_that_swallows_the_interrupt(pool):
    session = uuid.uuid4().hex
    code = "while True:\n    try:\n        while True:\n            pass\n    except BaseException:\n        pass"
    result = run(pool, code, session)
    assert result.status == "timeout" and result.output.startswith("TimeoutError: code ran longer than")
    assert_healthy(pool, session)


def test_memory_bomb(pool):
    result = run(pool, "b = bytearray(2 ** 40)")
    assert result.status == "limit" and "MemoryError" in result.output and "512 MiB" in result.output
    result = run(pool, "chunks = []\nwhile True:\n    chunks.append(bytearray(50 * 2 ** 20))")
    assert result.status in ("limit", "timeout"), result
    assert_healthy(pool)


def test_fork_bomb(pool):
    result = run(pool, "import os\nwhile True:\n    os.fork()")
    assert result.status == "limit"
    assert_refused(result, "creating processes")
    assert_refused(run(pool, "import subprocess\nsubprocess.run(['true'])"), "creating processes")
    assert_refused(run(pool, "import ctypes\nctypes.CDLL(None).fork()"), "fork()")
    assert_healthy(pool)


def test_cpu_time_is_limited_per_call(pool):
    code = (
        "import resource\nu = resource.getrusage(resource.RUSAGE_SELF)\n"
        "print(u.ru_utime + u.ru_stime, resource.getrlimit(resource.RLIMIT_CPU)[0])"
    )
    used, soft = map(float, run(pool, code).output.split())
    assert 0 < soft <= used + TIMEOUT + 2


def test_process_and_thread_caps_are_set_by_the_kernel(pool):
    if "own unprivileged uid" not in " ".join(pool.isolation_layers):
        pytest.skip("no uid of its own per session on this machine (not root): RLIMIT_NPROC would be shared")
    out = run(pool, "import os, resource\nprint(os.getuid(), resource.getrlimit(resource.RLIMIT_NPROC)[0])").output
    uid, nproc = map(int, out.split())
    assert uid != os.getuid() and nproc <= 9


def test_threads_that_never_end(pool):
    session = uuid.uuid4().hex
    spin = "import threading\ndef spin():\n    while True:\n        pass\n"
    result = run(pool, spin + "threading.Thread(target=spin).start()\nprint('started')", session)
    assert (result.status, result.output) == ("ok", "started\n")
    assert_healthy(pool, session)
    result = run(pool, "t = threading.Thread(target=spin)\nt.start()\nt.join()", session)
    assert result.status == "timeout"
    result = run(
        pool,
        "import threading, time\nfor _ in range(50):\n    threading.Thread(target=time.sleep, args=(60,)).start()",
    )
    assert result.status == "limit" and "threads" in result.output
    pool.close_session(session)
    assert_healthy(pool)


def test_huge_output(pool):
    result = run(pool, "print('x' * 100_000_000)")
    assert result.status == "limit"
    assert "[output truncated: 100000001 chars, showing the first" in result.output
    assert len(result.output) < 1024 + 200
    result = run(pool, "import os\nos.write(1, b'y' * 10_000_000)\nprint('done')")  # raw fd writes go nowhere
    assert result.output.endswith("done\n")
    assert_healthy(pool)


def test_killing_the_parent(pool):
    workers = pool.worker_pids()
    assert_refused(run(pool, "import os\nos.kill(os.getppid(), 9)"), "signals")
    assert_refused(run(pool, "import os\nos.killpg(0, 9)"), "signals")
    assert_refused(run(pool, f"import os\nos.kill({os.getpid()}, 9)"), "signals")
    assert pool.worker_pids() == workers and all(psutil.pid_exists(p) for p in workers)
    assert_healthy(pool)


def test_files_outside_the_workdir(pool, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    repo_file = os.path.join(REPO, "pyproject.toml")
    with open(repo_file, "rb") as f:
        repo_before = f.read()
    attempts = [
        f"open({str(victim)!r}, 'w').write('pwned')",
        f"import os\nos.remove({str(victim)!r})",
        f"import os\nos.rename({str(victim)!r}, 'stolen.txt')",
        f"open({str(tmp_path / 'new.txt')!r}, 'w').write('x')",
        f"open({repo_file!r}, 'a').write('# pwned')",
        f"import shutil\nshutil.rmtree({REPO!r})",
    ]
    for code in attempts:
        result = run(pool, code)
        assert result.status == "error", (code, result)
    assert victim.read_text() == "precious" and sorted(os.listdir(tmp_path)) == ["victim.txt"]
    with open(repo_file, "rb") as f:
        assert f.read() == repo_before
    # ... while its own working directory is writable, private, and gone with the session
    session = uuid.uuid4().hex
    result = run(
        pool, "import os\nopen('notes.txt', 'w').write('hi')\nprint(open('notes.txt').read(), os.getcwd())", session
    )
    assert result.output.startswith("hi ")
    workdir = result.output.split()[1]
    assert "notes.txt" not in run(pool, f"import os\nos.listdir({workdir!r})").output  # another session
    pool.close_session(session)
    assert not os.path.exists(os.path.join(workdir, "notes.txt"))


def test_secrets_are_not_visible(pool):
    code = (
        "import os\nprint(dict(os.environ))\n"
        "try:\n    print(open('/proc/self/environ', 'rb').read())\nexcept OSError as e:\n    print(e)\n"
        f"print(open('/proc/{os.getpid()}/environ', 'rb').read())"
    )
    result = run(pool, code)
    assert SECRET not in result.output and "GTPO_FAKE_SECRET_TOKEN" not in result.output
    assert result.status == "error"  # the trainer's /proc entry is out of reach
    home = os.path.expanduser("~")
    result = run(pool, f"import os\nprint(os.listdir({home!r}))")
    assert result.status == "error" or result.output.strip() in ("[]", "['.pyenv']")  # hidden, or empty


def test_network(pool):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    try:
        result = run(
            pool, f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\ns.send(b'x')"
        )
        assert_refused(result, "network")
        result = run(pool, "import urllib.request\nurllib.request.urlopen('http://127.0.0.1:1', timeout=1)")
        assert result.status == "error"
        with pytest.raises(socket.timeout):
            server.accept()
    finally:
        server.close()
    assert_healthy(pool)


def test_sys_exit(pool):
    session = uuid.uuid4().hex
    run(pool, "kept = 1", session)
    result = run(pool, "print('bye')\nimport sys\nsys.exit()", session)
    assert (result.status, result.output) == ("ok", "bye\nSystemExit: 0\n")
    result = run(pool, "import sys\nsys.exit(3)", session)
    assert (result.status, result.output) == ("error", "SystemExit: 3\n")
    assert run(pool, "kept", session).output == "1\n"
    result = run(pool, "import os\nos._exit(0)", session)  # no exception to catch: the process is gone
    assert result.status == "crash" and "variables are lost" in result.output
    assert_healthy(pool, session)
    assert "NameError" in run(pool, "kept", session).output


def test_segfault(pool):
    session = uuid.uuid4().hex
    result = run(pool, "import ctypes\nctypes.string_at(0)", session)
    assert result.status == "crash" and "SIGSEGV" in result.output
    assert "Fatal Python error: Segmentation fault" in result.output  # native output shown after a crash
    assert result.output.endswith('File "<stdin>", line 2 in <module>')
    assert_healthy(pool, session)


def test_deep_recursion(pool):
    result = run(pool, "def f(n):\n    return f(n + 1)\nf(0)")
    assert result.status == "error" and result.output.endswith("RecursionError: maximum recursion depth exceeded\n")
    assert len(result.output.splitlines()) < 12  # only the last lines of the traceback
    result = run(pool, "import sys\nsys.setrecursionlimit(10 ** 7)\ndef f(n):\n    return f(n + 1)\nf(0)")
    assert result.status in ("error", "crash", "timeout", "limit"), result
    assert_healthy(pool)


def test_input_does_not_hang(pool):
    result = run(pool, "input('name? ')")
    assert result.status == "error" and result.output.endswith("EOFError: EOF when reading a line\n")


def test_importing_a_huge_module(pool):
    for module in ("sympy", "torch"):
        result = run(pool, f"import {module}\nprint({module}.__version__)")
        # torch under a 512 MiB address space: an ImportError, or its OpenBLAS calling exit() (a "crash")
        assert result.status in ("ok", "error", "timeout", "limit", "crash"), result
        if result.status == "timeout":
            assert result.output.startswith("TimeoutError")
        if result.status == "crash":
            assert result.output.startswith("SandboxCrash:")
    assert_healthy(pool)


def test_without_root(fallback_pool, tmp_path):
    """Without a uid change (and maybe without namespaces), files, network, signals and processes are still refused."""
    hooks_pool = fallback_pool
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for code in (f"open({str(victim)!r}, 'w')", f"import os\nos.remove({str(victim)!r})"):
        result = run(hooks_pool, code)  # refused, or (private /tmp) not even there
        assert result.status == "error" and ("writing outside" in result.output or "FileNotFound" in result.output)
    result = run(hooks_pool, f"open({os.path.join(REPO, 'pyproject.toml')!r}, 'a')")
    # refused, or (the repo under a private /tmp, as in a CI clone) not even there
    assert result.status == "error" and ("writing outside" in result.output or "FileNotFound" in result.output)
    assert_refused(run(hooks_pool, "import os\nos.kill(os.getppid(), 9)"), "signals")
    assert_refused(run(hooks_pool, "import socket\nsocket.socket()"), "network")
    assert_refused(run(hooks_pool, "import os\nos.fork()"), "creating processes")
    assert_refused(run(hooks_pool, f"print(open('/proc/{os.getpid()}/environ').read())"), "other processes")
    assert_refused(run(hooks_pool, f"import os\nos.listdir({os.path.expanduser('~')!r})"), "reading")
    result = run(hooks_pool, "import os\nprint(dict(os.environ))")
    assert SECRET not in result.output
    assert victim.read_text() == "precious"
    assert_healthy(hooks_pool)


# ---- what the model can see ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["auto", "userns", "hooks"])
def planted(request, tmp_path_factory):
    """A pool of each isolation layer, started from a directory outside the repo, with answer keys planted where a
    trainer keeps them: a data directory elsewhere on the host, a package's data directory in site-packages, the
    repository checkout, the Hugging Face cache. Its interpreter is a venv whose site-packages hold `answerpkg` (with
    the packaged data) and `okpkg` (preloaded, so it is the one package sessions may see)."""
    secret = "gtpo-answer-key-" + uuid.uuid4().hex
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (site,) = glob.glob(str(venv / "lib" / "python3*" / "site-packages"))
    for pkg in ("answerpkg", "okpkg"):
        os.makedirs(os.path.join(site, pkg, "data"))
        with open(os.path.join(site, pkg, "__init__.py"), "w") as f:
            f.write("VALUE = 7\n")
    scratch = tempfile.mkdtemp(prefix="gtpo-planted-", dir="/var/tmp" if os.access("/var/tmp", os.W_OK) else None)
    keys = {
        "data dir": os.path.join(scratch, "data", "gtpo-answer-key.jsonl"),
        "packaged data": os.path.join(site, "answerpkg", "data", "gtpo-answer-key.json"),
        "repository": os.path.join(REPO, f"gtpo-answer-key-{secret[-8:]}.txt"),
        "HF cache": os.path.join(scratch, "hf", "hub", "datasets--gtpo--math", "gtpo-answer-key.txt"),
    }
    for path in keys.values():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(secret)
    cwd, hf_home = os.getcwd(), os.environ.get("HF_HOME")
    os.chdir(scratch)  # launched from elsewhere: the repo is not the working directory
    os.environ["HF_HOME"] = os.path.join(scratch, "hf")
    try:
        pool = SandboxPool(
            1, timeout=TIMEOUT, preload=("math", "okpkg"), isolation=request.param, python=str(venv / "bin" / "python")
        )
    finally:
        os.chdir(cwd)
        os.environ.pop("HF_HOME") if hf_home is None else os.environ.update(HF_HOME=hf_home)
    yield pool, keys, secret
    pool.close()
    os.remove(keys["repository"])
    shutil.rmtree(scratch)


def test_answer_keys_cannot_be_found_or_read(planted):
    pool, keys, secret = planted
    paths = sorted(keys.values())
    code = (
        "import glob, os\n"
        "print('walk', [os.path.join(d, f) for d, _, fs in os.walk('/') for f in fs if 'answer-key' in f])\n"
        "print('glob', glob.glob('/**/*answer-key*', recursive=True))\n"
        f"for p in {paths!r}:\n"
        "    try:\n"
        "        print('read', open(p).read())\n"
        "    except OSError as e:\n"
        "        print('refused', type(e).__name__)\n"
        f"print('exists', [os.path.exists(p) for p in {paths!r}])\n"  # os.stat: no audit event, only the kernel says
    )
    out = run(pool, code).output
    assert secret not in out and "read" not in out, out
    assert "walk []" in out and "glob []" in out and out.count("refused") == len(paths), out
    exists = out.split("exists ")[1]
    if "True" in exists:
        # A layer without a mount namespace cannot hide files from native code; the pool must say so.
        assert any("native code" in note and "os.stat()" in note for note in pool.isolation_notes), pool.isolation_notes
    else:
        assert exists.strip() == str([False] * len(paths))


def test_native_code_reads_none_of_the_planted_keys(planted):
    """The same keys (a data directory, a package's data in site-packages, the repository, the HF cache) through
    ctypes open() and os.open(): namespaces hide them, Landlock refuses them where there are none."""
    pool, keys, secret = planted
    reads = planted_key_reads(pool, keys, secret)
    readable = sorted(where for where, (native, by_os, _) in reads.items() if native or by_os)
    if any(layer.startswith("Landlock") for layer in pool.isolation_layers) or not any(
        "native code (ctypes) can read" in note for note in pool.isolation_notes
    ):
        assert readable == [], reads
    else:  # a kernel without Landlock and a layer without namespaces: said in isolation_notes
        assert readable == sorted(keys), reads


def test_only_preloaded_packages_are_importable(planted):
    pool, keys, _ = planted
    assert run(pool, "import okpkg\nokpkg.VALUE").output == "7\n"
    result = run(pool, "import answerpkg")
    assert result.status == "error" and ("ModuleNotFoundError" in result.output or "PermissionError" in result.output)
    source = os.path.join(REPO, "trl_gtpo")  # the trainer's source tree, where the worker's own modules live
    data_dir = os.path.dirname(keys["data dir"])
    result = run(pool, f"import os\nprint(os.path.exists({source!r}), os.path.exists({data_dir!r}))")
    hooks_only = any("native code" in note for note in pool.isolation_notes)  # see the test above
    assert result.output == ("True True\n" if hooks_only else "False False\n"), (result, pool.isolation_notes)


def test_model_code_cannot_create_namespaces(planted):
    """Through native calls the audit hook cannot see (functions reached by address, not by name), unshare and clone
    with namespace flags fail: the seccomp filter, not the hook, refuses them."""
    pool, _, _ = planted
    clone_nr = {"x86_64": 56, "aarch64": 220}.get(platform.machine())
    if clone_nr is None:
        pytest.skip(f"no clone syscall number for {platform.machine()}")
    if any("no seccomp filter" in note for note in pool.isolation_notes):
        assert not any("seccomp" in layer for layer in pool.isolation_layers)
        pytest.skip("this kernel allows no seccomp filter (reported in isolation_notes)")
    libc = ctypes.CDLL(None)
    address = lambda f: ctypes.cast(f, ctypes.c_void_p).value  # noqa: E731
    offsets = {name: address(getattr(libc, name)) - address(libc.getpid) for name in ("unshare", "syscall")}
    code = (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None)\n"
        "base = ctypes.cast(libc.getpid, ctypes.c_void_p).value\n"
        "c = ctypes.c_ulong\n"
        f"unshare = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, use_errno=True)(base + {offsets['unshare']})\n"
        f"syscall = ctypes.CFUNCTYPE(ctypes.c_long, c, c, c, c, c, c, use_errno=True)(base + {offsets['syscall']})\n"
        "for flag in (0x10000000, 0x00020000, 0x40000000, 0x20000000):  # NEWUSER, NEWNS, NEWNET, NEWPID\n"
        "    print(unshare(flag), ctypes.get_errno())\n"
        f"pid = syscall({clone_nr}, 0x10000000 | 17, 0, 0, 0, 0)  # clone(CLONE_NEWUSER | SIGCHLD)\n"
        "if pid == 0:\n"
        "    os._exit(0)\n"
        "print(pid, ctypes.get_errno())\n"
        "print(syscall(435, 0, 0, 0, 0, 0), ctypes.get_errno())  # clone3\n"
    )
    result = run(pool, code)
    eperm, enosys = f"-1 {errno.EPERM}", f"-1 {errno.ENOSYS}"
    assert result.output.splitlines() == [eperm] * 5 + [enosys], result.output
    assert any("seccomp" in layer for layer in pool.isolation_layers)
    assert_healthy(pool)


def _landlock_abi() -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    return max(0, libc.syscall(ctypes.c_long(444), None, ctypes.c_size_t(0), ctypes.c_uint32(1)))


@pytest.fixture(scope="module")
def system_keys():
    """Answer keys planted where a trainer's machine keeps data and secrets: system data and configuration folders
    (where this user may write there), temporary folders, the home folder and the working directory. All removed
    after the module."""
    secret = "gtpo-answer-key-" + uuid.uuid4().hex
    tag = secret[-8:]
    places = {
        "system data (/usr/share)": "/usr/share",
        "system config (/etc)": "/etc",
        "temp (/tmp)": tempfile.gettempdir(),
        "temp (/var/tmp)": "/var/tmp",
        "home": os.path.expanduser("~"),
    }
    keys, made = {}, []
    for where, parent in places.items():
        if not os.access(parent, os.W_OK):
            continue
        folder = os.path.join(parent, f"gtpo-planted-{tag}")
        os.makedirs(folder)
        made.append(folder)
        keys[where] = os.path.join(folder, "answer-key.txt")
    keys["working directory"] = os.path.join(os.getcwd(), f"gtpo-planted-{tag}-answer-key.txt")
    for path in keys.values():
        with open(path, "w") as f:
            f.write(secret)
    try:
        yield keys, secret
    finally:
        os.remove(keys["working directory"])
        for folder in made:
            shutil.rmtree(folder, ignore_errors=True)


_NATIVE_READS = """
import ctypes, json, os
libc = ctypes.CDLL(None, use_errno=True)
def native_open(path):
    fd = libc.open(path.encode(), 0)
    if fd < 0:
        return None
    buf = ctypes.create_string_buffer(256)
    n = libc.read(fd, buf, 255)
    libc.close(fd)
    return buf.raw[: max(n, 0)].decode("utf-8", "replace")
def os_open(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.read(fd, 255).decode("utf-8", "replace")
    finally:
        os.close(fd)
def stat(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False
print(json.dumps({p: [native_open(p), os_open(p), stat(p)] for p in PATHS}))
"""


def planted_key_reads(pool: SandboxPool, keys: dict, secret: str) -> dict:
    """For each planted key: (read by ctypes open(), read by os.open(), revealed by os.stat()) from model code."""
    result = run(pool, f"PATHS = {sorted(keys.values())!r}\n" + _NATIVE_READS)
    assert result.status == "ok", result
    found = json.loads(result.output)
    return {
        where: (secret in (found[path][0] or ""), secret in (found[path][1] or ""), found[path][2])
        for where, path in keys.items()
    }


@pytest.mark.parametrize("isolation", ["auto", "userns", "hooks"])
def test_native_code_reads_no_planted_key_where_landlock_is(isolation, system_keys):
    """ctypes open(), os.open() and os.stat() from model code against answer keys in system, temp, home and working
    folders. Without Landlock the "hooks" layer (no namespaces) read every key through ctypes; with it none is
    readable on any layer. os.stat() is outside Landlock: on "hooks" it still tells a key exists (and says so)."""
    keys, secret = system_keys
    with SandboxPool(1, timeout=TIMEOUT, memory_limit_mb=512, preload=("math",), isolation=isolation) as p:
        reads = planted_key_reads(p, keys, secret)
        landlock = any(layer.startswith("Landlock") for layer in p.isolation_layers)
        readable = sorted(where for where, (native, by_os, _) in reads.items() if native or by_os)
        revealed = sorted(where for where, (_, _, exists) in reads.items() if exists)
        count = len(keys)
        print(f"{isolation}: landlock={landlock} readable {len(readable)}/{count} revealed {len(revealed)}/{count}")
        if _landlock_abi():
            assert landlock, p.isolation_notes
        else:
            assert any("no Landlock" in note for note in p.isolation_notes), p.isolation_notes
        if landlock or isolation != "hooks":
            assert readable == [], reads
        if isolation == "hooks":
            assert any("os.stat()" in note for note in p.isolation_notes), p.isolation_notes
        else:
            assert revealed == [], reads
        assert_healthy(p)


def test_landlock_refuses_tcp_and_signals_to_native_code():
    """On the "hooks" layer (no network namespace), native connect() is refused by Landlock (ABI >= 4), and a signal
    to the worker outside the session (ABI >= 6) too; the audit hook cannot see calls reached by address."""
    abi = _landlock_abi()
    if abi < 6:
        pytest.skip(f"Landlock ABI {abi} < 6 on this kernel")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    libc = ctypes.CDLL(None)
    address = lambda f: ctypes.cast(f, ctypes.c_void_p).value  # noqa: E731
    offsets = {name: address(getattr(libc, name)) - address(libc.getpid) for name in ("socket", "connect", "kill")}
    code = (
        "import ctypes, os, struct\n"
        "libc = ctypes.CDLL(None)\n"
        "base = ctypes.cast(libc.getpid, ctypes.c_void_p).value\n"
        "f = lambda off, *args: ctypes.CFUNCTYPE(ctypes.c_int, *args, use_errno=True)(base + off)\n"
        f"sock = f({offsets['socket']}, ctypes.c_int, ctypes.c_int, ctypes.c_int)(2, 1, 0)\n"
        f"addr = struct.pack('<HH4s8x', 2, __import__('socket').htons({port}), bytes([127, 0, 0, 1]))\n"
        f"connect = f({offsets['connect']}, ctypes.c_int, ctypes.c_char_p, ctypes.c_int)\n"
        "print('connect', connect(sock, addr, 16), ctypes.get_errno())\n"
        f"print('kill', f({offsets['kill']}, ctypes.c_int, ctypes.c_int)(os.getppid(), 0), ctypes.get_errno())\n"
    )
    try:
        with SandboxPool(1, timeout=TIMEOUT, memory_limit_mb=512, preload=("math",), isolation="hooks") as p:
            result = run(p, code)
    finally:
        server.close()
    assert result.output.splitlines() == [f"connect -1 {errno.EACCES}", f"kill -1 {errno.EPERM}"], result.output


def test_default_size_shares_the_cores_among_local_ranks(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(12)))
    monkeypatch.delenv("OMPI_COMM_WORLD_LOCAL_SIZE", raising=False)
    for local, size in ((None, 8), ("1", 8), ("2", 6), ("4", 3), ("12", 1), ("32", 1)):
        if local is None:
            monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        else:
            monkeypatch.setenv("LOCAL_WORLD_SIZE", local)
        assert default_size() == size, local


def test_concurrency_size_is_one_worker_per_call_in_flight_up_to_the_cores(monkeypatch):
    """The asynchronous rollout process is its node's only sandbox user: its pool is not divided among the ranks
    (LOCAL_WORLD_SIZE is ignored) and not capped at 8, only by the cores it may run on."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(12)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert [concurrency_size(n) for n in (64, 12, 10, 3, 1, 0)] == [12, 12, 10, 3, 1, 1]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(96)))
    assert concurrency_size(64) == 64 and default_size() == 8


# ---- pool life cycle ----------------------------------------------------------------------------------------------


def test_dead_worker_is_replaced():
    with SandboxPool(1, timeout=TIMEOUT, preload=()) as p:
        run(p, "x = 1", "s")
        (old,) = p.worker_pids()
        os.kill(old, 9)
        deadline = time.monotonic() + 10
        while psutil.Process(old).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.01)
        result = run(p, "x", "s")
        assert result.output.startswith("[note:") and "NameError" in result.output  # told its state is gone
        assert p.worker_pids() != [old]
        assert_healthy(p, "s")


def test_worker_killed_during_a_call_is_replaced():
    with SandboxPool(1, timeout=TIMEOUT, preload=()) as p:
        (old,) = p.worker_pids()
        killer = __import__("threading").Timer(0.5, lambda: os.killpg(old, signal.SIGKILL))
        killer.start()
        result = run(p, "import time\ntime.sleep(1.5)")
        killer.join()
        assert result.status == "crash" and result.output.startswith("SandboxCrash:"), result
        assert p.worker_pids() != [old]
        assert_healthy(p)


def test_frozen_worker_is_replaced_within_the_timeout_plus_the_margin():
    """A worker stopped with SIGSTOP (e.g. by a debugger or the OOM killer's freezer) cannot answer: it is replaced
    once the call's timeout plus HUNG_WORKER_MARGIN_S have passed (it used to be a fixed 60 s). Generous upper bound,
    a functional check: 1 s timeout + 8 s margin, asserted under 30 s."""
    timeout = 1.0
    with SandboxPool(1, timeout=timeout, preload=()) as p:
        run(p, "x = 1", "s")
        (old,) = p.worker_pids()
        os.killpg(old, signal.SIGSTOP)  # the worker and, with namespaces, the process that waits for it
        start = time.monotonic()
        result = run(p, "x", "s")
        elapsed = time.monotonic() - start
        assert result.status == "crash" and "stopped responding" in result.output, result
        assert elapsed < timeout + HUNG_WORKER_MARGIN_S + 20, elapsed
        assert p.worker_pids() != [old]
        assert_healthy(p, "s")


def test_the_config_memory_floor_covers_the_measured_worker_footprint():
    """GTPOConfig refuses tool_memory_limit_mb below `min_memory_limit_mb()`: that floor must hold a session (a copy
    of its worker, measured here with the default preload) plus the 64 MiB the pool requires."""
    with SandboxPool(1, timeout=TIMEOUT, preload=DEFAULT_PRELOAD, isolation="hooks") as p:
        footprint = p._workers[0].footprint_mb
    print(f"worker footprint with the default preload: {footprint} MiB")
    assert footprint + 64 <= min_memory_limit_mb(default_preload=True)
    with SandboxPool(1, timeout=TIMEOUT, preload=(), isolation="hooks") as p:
        assert p._workers[0].footprint_mb + 64 <= min_memory_limit_mb(default_preload=False)


def test_falls_back_to_the_portable_layer_when_namespaces_fail(monkeypatch):
    start_all = SandboxPool._start_all
    calls = []

    def fail_first(self):
        calls.append(self._config["namespaces"])
        if len(calls) == 1:
            raise RuntimeError("a sandbox worker failed to start (simulated)")
        start_all(self)

    monkeypatch.setattr(SandboxPool, "_start_all", fail_first)
    with pytest.warns(UserWarning, match="retrying without namespaces"):
        p = SandboxPool(1, timeout=TIMEOUT, preload=())
    with p:
        assert calls == ["auto", "off"]
        assert not any("namespace" in layer for layer in p.isolation_layers)
        assert_healthy(p)
        assert_refused(run(p, "import socket\nsocket.socket()"), "network")


def test_memory_limit_below_the_worker_footprint_is_refused():
    with pytest.raises(ValueError, match="tool_memory_limit_mb"):
        SandboxPool(1, memory_limit_mb=64, preload=("math",))


def test_close_leaves_no_process():
    before = {c.pid for c in psutil.Process().children(recursive=True)}
    p = SandboxPool(2, timeout=TIMEOUT, preload=())
    p.run(
        [
            CodeCall(f"s{i}", "import threading, time\nthreading.Thread(target=time.sleep, args=(600,)).start()")
            for i in range(4)
        ]
    )
    spawned = [c for c in psutil.Process().children(recursive=True) if c.pid not in before]
    assert len(spawned) >= 2 + 4
    p.close()
    still = [c for c in spawned if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert still == []
    with pytest.raises(RuntimeError):
        p.run([CodeCall("s0", "1")])
