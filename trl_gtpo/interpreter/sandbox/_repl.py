"""Run one code block the way a Python REPL / notebook cell does, and turn what happened into the model's text.

The model learned Python from REPL transcripts and notebooks, so it gets that format back: stdout and stderr in the
order they were written, a bare expression on the last line echoed with `repr`, and for an error the last lines of the
traceback with the code shown as `File "<stdin>"`. Output is captured in the session process itself and capped there,
so a 100 MB print never leaves it.
"""

import ast
import io
import os
import signal
import sys
import traceback

_TRACEBACK_LINES = 6  # frame lines kept (the end of the stack, where the error is)
_SANDBOX_DIR = os.path.dirname(os.path.abspath(__file__))


class CodeTimeout(BaseException):
    """Raised into the running code when its time is up. A BaseException, so `except Exception:` does not swallow
    it."""


class CPULimitExceeded(BaseException):
    """Raised into the running code when it used up its CPU time (RLIMIT_CPU's SIGXCPU): several threads can burn
    CPU faster than the wall clock runs."""


class Capture(io.TextIOBase):
    """A text stream that keeps the first `limit` characters written to it and counts the rest."""

    def __init__(self, limit: int):
        self.limit = limit
        self.total = 0
        self._parts: list[str] = []
        self._kept = 0

    def writable(self) -> bool:
        return True

    def write(self, s) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        n = len(s)
        self.total += n
        if self._kept < self.limit:
            part = s[: self.limit - self._kept]
            self._parts.append(part)
            self._kept += len(part)
        return n

    @property
    def buffer(self):
        return _BytesToText(self)

    @property
    def encoding(self) -> str:
        return "utf-8"

    def isatty(self) -> bool:
        return False

    def getvalue(self) -> str:
        return "".join(self._parts)


class _BytesToText(io.RawIOBase):
    def __init__(self, text: Capture):
        self._text = text

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self._text.write(bytes(b).decode("utf-8", "replace"))
        return len(b)


def run_cell(code: str, namespace: dict, *, timeout: float, max_chars: int, memory_limit_mb: int) -> tuple[str, str]:
    """Run `code` in `namespace`; return (output for the model, status)."""
    capture = Capture(max_chars)
    sys.stdout = sys.stderr = sys.__stdout__ = sys.__stderr__ = capture
    status, error = "ok", ""
    try:
        try:
            body, last = _compile(code)
        except (SyntaxError, ValueError, OverflowError, RecursionError, MemoryError) as e:
            return _finish(capture, "".join(traceback.format_exception_only(type(e), e)), max_chars), "error"
        signal.signal(signal.SIGALRM, _raise_timeout)
        signal.signal(signal.SIGXCPU, _raise_cpu_limit)
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            exec(body, namespace)
            if last is not None:
                value = eval(last, namespace)
                if value is not None:
                    namespace["_"] = value
                    capture.write(repr(value) + "\n")
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except CodeTimeout:
        status, error = "timeout", f"TimeoutError: code ran longer than {timeout:g} s and was stopped\n"
    except CPULimitExceeded:
        status, error = "limit", f"CPUTimeLimitError: code used more than {timeout:g} s of CPU time and was stopped\n"
    except SystemExit as e:
        # The worker loop survives it, so report it like an uncaught exception; a clean exit is not a failure.
        status = "ok" if e.code in (None, 0) else "error"
        error = f"SystemExit: {e.code if e.code is not None else 0}\n"
    except BaseException as e:  # noqa: BLE001 -- everything the code raised is reported, nothing escapes
        status, error = _classify(e), _format_traceback(e, memory_limit_mb)
    return _finish(capture, error, max_chars), status if capture.total <= max_chars else _worst(status, "limit")


def _compile(code: str):
    tree = ast.parse(code, "<stdin>", "exec")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = compile(ast.Expression(tree.body.pop().value), "<stdin>", "eval")
    return compile(tree, "<stdin>", "exec"), last


def _raise_timeout(signum, frame):
    raise CodeTimeout()


def _raise_cpu_limit(signum, frame):
    signal.signal(signal.SIGXCPU, signal.SIG_IGN)  # the kernel repeats it every second: once is enough
    raise CPULimitExceeded()


def _classify(e: BaseException) -> str:
    if isinstance(e, CodeTimeout):
        return "timeout"
    if isinstance(e, MemoryError) or getattr(e, "sandbox_limit", False):
        return "limit"  # out of memory, or a process/thread cap of the sandbox (`_guards.SandboxLimitError`)
    if isinstance(e, RuntimeError) and "can't start new thread" in str(e):
        return "limit"  # RLIMIT_NPROC refused a thread
    return "error"


def _worst(a: str, b: str) -> str:
    order = ("ok", "limit", "error", "timeout")
    return a if order.index(a) >= order.index(b) else b


def _format_traceback(e: BaseException, memory_limit_mb: int) -> str:
    frames = [f for f in traceback.extract_tb(e.__traceback__) if not f.filename.startswith(_SANDBOX_DIR)]
    lines = traceback.StackSummary.from_list(frames).format()
    if isinstance(e, MemoryError) and not str(e):
        tail = [f"MemoryError: out of memory (the sandbox limit is {memory_limit_mb} MiB)\n"]
    else:
        try:
            tail = traceback.format_exception_only(type(e), e)
        except BaseException:  # noqa: BLE001 -- a hostile __str__
            tail = [f"{type(e).__name__}: <exception str() failed>\n"]
    frame_lines = "".join(lines).splitlines(keepends=True)[-_TRACEBACK_LINES:]
    head = ["Traceback (most recent call last):\n"] if frames else []
    return "".join(head + frame_lines + tail)


def _finish(capture: Capture, error: str, max_chars: int) -> str:
    """Stdout first, then the error; the error is kept whole (up to half the budget) because it is what the model
    most needs, the stdout is cut to what is left, with a marker giving the full size."""
    error = _fit(error, max_chars // 2)
    budget = max_chars - len(error)
    out = capture.getvalue()
    if capture.total > budget:
        shown = out[:budget]
        out = f"{shown}\n... [output truncated: {capture.total} chars, showing the first {len(shown)}]\n"
    text = out + error
    # Lone surrogates (print("\ud800")) would break tokenizers downstream.
    return text.encode("utf-8", "replace").decode("utf-8")


def _fit(error: str, budget: int) -> str:
    """Shorten a traceback to `budget` characters by dropping its oldest frame lines, never its last line."""
    if len(error) <= budget:
        return error
    lines = error.splitlines(keepends=True)
    head = lines.pop(0) if lines[0].startswith("Traceback") else ""
    kept: list[str] = []
    for line in reversed(lines):
        if len(head) + sum(map(len, kept)) + len(line) > budget:
            break
        kept.insert(0, line)
    if not kept:  # the exception message alone is too long: keep its start
        kept = [lines[-1][: max(0, budget - len(head) - 4)] + "...\n"]
    return head + "".join(kept)
