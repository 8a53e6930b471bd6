"""Length-prefixed JSON frames over pipes: the only format the trainer, its workers and their sessions exchange.

JSON, not pickle: a session process runs untrusted code, and unpickling its bytes would run code in the worker. Every
read takes a size cap and a deadline, so a hostile or stuck sender can neither make the reader allocate without bound
nor hang it. Stdlib only: the worker process imports this file by path, without the `trl_gtpo` package.
"""

import json
import os
import select
import struct
import time
from collections.abc import Callable

_HEADER = struct.Struct(">I")


class WireError(Exception):
    """The peer broke the protocol: it closed the pipe, sent a malformed or oversized frame, or missed the deadline."""


class PeerClosed(WireError):
    pass


class FrameTooBig(WireError):
    pass


class FrameTimeout(WireError):
    pass


class Aborted(WireError):
    """One of the `abort_fds` became readable (or hung up) while waiting."""


def encode(obj) -> bytes:
    # ensure_ascii: lone surrogates in a string still encode, and every byte is 7-bit.
    data = json.dumps(obj, ensure_ascii=True, separators=(",", ":")).encode("ascii")
    return _HEADER.pack(len(data)) + data


def send(fd: int, obj, deadline: float | None = None) -> None:
    """Write one frame; with a deadline the fd must be non-blocking (else a full pipe could block past it)."""
    view = memoryview(encode(obj))
    while view:
        if deadline is not None:
            _wait(fd, select.POLLOUT, deadline, ())
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            continue
        except (BrokenPipeError, ConnectionResetError) as e:
            raise PeerClosed(str(e)) from None
        view = view[n:]


def recv(
    fd: int,
    max_bytes: int,
    deadline: float | None = None,
    abort_fds: tuple[int, ...] = (),
    drain: dict[int, Callable[[bytes], None]] | None = None,
):
    """Read one frame of at most `max_bytes` bytes of JSON. Meanwhile, whatever arrives on a `drain` descriptor is
    read and handed to its callback (b"" at end of stream, when it is also removed from `drain`)."""
    drain = {} if drain is None else drain
    (size,) = _HEADER.unpack(_read_exact(fd, _HEADER.size, deadline, abort_fds, drain))
    if size > max_bytes:
        raise FrameTooBig(f"frame of {size} bytes, the cap is {max_bytes}")
    data = _read_exact(fd, size, deadline, abort_fds, drain)
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:  # RecursionError: a hostile "[[[[...]]]]"
        raise WireError(f"malformed frame: {e}") from None


def _read_exact(
    fd: int, n: int, deadline: float | None, abort_fds: tuple[int, ...], drain: dict[int, Callable[[bytes], None]]
) -> bytes:
    chunks, left = [], n
    while left:
        if deadline is not None or abort_fds or drain:
            _wait(fd, select.POLLIN, deadline, abort_fds, drain)
        try:
            chunk = os.read(fd, min(left, 1 << 20))
        except BlockingIOError:
            continue
        if not chunk:
            raise PeerClosed("end of stream")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _wait(
    fd: int,
    events: int,
    deadline: float | None,
    abort_fds: tuple[int, ...],
    drain: dict[int, Callable[[bytes], None]] | None = None,
) -> None:
    # poll, not select: a trainer process can easily hold more than FD_SETSIZE (1024) descriptors.
    drain = {} if drain is None else drain
    poller = select.poll()
    poller.register(fd, events)
    for extra in (*abort_fds, *drain):
        poller.register(extra, select.POLLIN)
    while True:
        timeout_ms = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000) + 1)
        ready = poller.poll(timeout_ms)
        if any(r_fd in abort_fds for r_fd, _ in ready):
            raise Aborted("abort descriptor ready")
        for r_fd, _ in ready:
            if r_fd in drain:
                drain_once(r_fd, drain)
                if r_fd not in drain:
                    poller.unregister(r_fd)
        if any(r_fd == fd for r_fd, _ in ready):
            return
        if deadline is not None and time.monotonic() >= deadline:
            raise FrameTimeout("deadline passed")


def drain_once(fd: int, drain: dict[int, Callable[[bytes], None]]) -> None:
    """Read what is available on a (non-blocking) drained descriptor; at end of stream, stop draining it."""
    try:
        data = os.read(fd, 1 << 16)
    except BlockingIOError:
        return
    except OSError:
        data = b""
    drain[fd](data)
    if not data:
        del drain[fd]
