"""What every experiment shares: the result it returns and the sockets it builds.

An experiment sets up real sockets on the real kernel, measures, and returns a
:class:`LabResult`: the claim, whether the measurements support it, the numbers, and
lines that explain them. The verdict is computed from the numbers, never written in.
"""

from __future__ import annotations

import errno
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CHUNK",
    "LabResult",
    "Pair",
    "errno_name",
    "fill",
    "loopback_pair",
    "peer_command",
    "read_line_within",
    "repeated",
    "wait_until",
]

# 1 KiB writes: a small fraction of any buffer used here, so the queue moves in small
# steps (the same size the main experiment's messages have).
CHUNK = 1024
# A send queue that has not become writable for this long is full, not momentarily busy:
# on loopback an ACK takes microseconds, even on a loaded 2-core host well under 0.2 s.
SETTLE = 0.3

TCP_STATES = {1: "ESTABLISHED", 7: "CLOSE", 8: "CLOSE_WAIT", 4: "FIN_WAIT1", 5: "FIN_WAIT2"}


@dataclass(frozen=True, slots=True)
class LabResult:
    name: str
    claim: str
    holds: bool
    evidence: dict[str, Any]
    explanation: tuple[str, ...]
    seconds: float = field(default=0.0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "claim": self.claim,
            "holds": self.holds,
            "verdict": "holds" if self.holds else "does not hold",
            "evidence": self.evidence,
            "explanation": list(self.explanation),
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True, slots=True)
class Pair:
    sender: socket.socket
    receiver: socket.socket


@contextmanager
def loopback_pair(
    *,
    sndbuf: int | None = None,
    rcvbuf: int | None = None,
    rcvbuf_after_accept: int | None = None,
) -> Iterator[Pair]:
    """A connected TCP pair on 127.0.0.1; everything it opened is closed on exit.

    ``rcvbuf`` is set on the listener before listen() (the accepted socket inherits it
    and the handshake's window scale and MSS see it); ``rcvbuf_after_accept`` only after
    the handshake, which is what a program that sets it late does.
    """
    with ExitStack() as stack:
        listener = stack.enter_context(socket.socket())
        if rcvbuf is not None:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        sender = stack.enter_context(socket.socket())
        if sndbuf is not None:
            sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        sender.connect(listener.getsockname())
        receiver = stack.enter_context(listener.accept()[0])
        if rcvbuf_after_accept is not None:
            receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf_after_accept)
        listener.close()
        yield Pair(sender, receiver)


def fill(sock: socket.socket, source: bytes = b"x" * CHUNK, settle: float = SETTLE) -> int:
    """Write without blocking until the socket stays unwritable for ``settle`` seconds.

    Sends ``source`` over and over, in pieces of at most CHUNK, continuing exactly where
    a partial send stopped: the stream is ``source`` repeated, cut at the returned count
    of bytes the kernel accepted. A brief EAGAIN while segments are still in flight is not
    "full": only a queue that does not drain for ``settle`` is.
    """
    timeout = sock.gettimeout()
    sock.setblocking(False)
    view = memoryview(source)
    total = 0
    try:
        while True:
            pos = total % len(source)
            try:
                total += sock.send(view[pos : pos + CHUNK])
            except BlockingIOError:
                if not select.select([], [sock], [], settle)[1]:
                    return total
    finally:
        sock.settimeout(timeout)


def repeated(source: bytes, length: int) -> bytes:
    """The first ``length`` bytes of ``source`` repeated: what :func:`fill` sent."""
    whole, part = divmod(length, len(source))
    return source * whole + source[:part]


def wait_until(predicate: Any, timeout: float, interval: float = 0.005) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def errno_name(exc: BaseException | None) -> str | None:
    if isinstance(exc, OSError) and exc.errno is not None:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return None if exc is None else type(exc).__name__


def state_name(state: int | None) -> str | None:
    return None if state is None else TCP_STATES.get(state, str(state))


def peer_command(*args: str) -> list[str]:
    """The argv that runs the lab's helper peer (``_peer`` beside this module) in a new
    process; named from this package, so it runs the installed copy from any directory."""
    return [sys.executable, "-m", f"{__package__}._peer", *args]


def read_line_within(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """One line from a child's unbuffered stdout (``bufsize=0``), or RuntimeError if none
    comes within ``timeout`` seconds. Unbuffered: a raw readline() never reads past the
    newline, so the next select() still sees the next line."""
    assert proc.stdout is not None
    if not select.select([proc.stdout], [], [], timeout)[0]:
        raise RuntimeError(f"helper process printed nothing within {timeout} s")
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"helper process exited early (code {proc.wait()})")
    return line.decode().strip()
