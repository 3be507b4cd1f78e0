"""The lecture's client: read a line from the user, send it, print the server's reply.

It speaks plain bytes, so it works against any echo server (ours, ``socat``, ``nc``).
TCP keeps no message boundaries: a reply may arrive in several pieces, so the client
reads until it has the newline that ended the line it sent (its own framing: one line,
one reply) instead of trusting a single recv() to return the whole reply.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass

from bufdemo.errors import PeerError

__all__ = ["ClientStats", "LineReader", "connect", "run_client"]

RECV_SIZE = 65536  # one recv() of up to the loopback MSS (picked for loopback)
# How long to wait for a connection: long enough for a busy host, short enough that a
# wrong address fails while the user is still looking (picked arbitrarily).
CONNECT_TIMEOUT = 10.0


@dataclass(slots=True)
class ClientStats:
    lines_sent: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0


class LineReader:
    """Split a byte stream into lines; bytes in, complete lines out (no I/O)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_line(self) -> bytes | None:
        end = self._buf.find(b"\n")
        if end < 0:
            return None
        line = bytes(self._buf[: end + 1])
        del self._buf[: end + 1]
        return line

    def rest(self) -> bytes:
        rest = bytes(self._buf)
        self._buf.clear()
        return rest


def connect(host: str, port: int, timeout: float = CONNECT_TIMEOUT) -> socket.socket:
    """Connect or raise PeerError naming the address and the reason."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise PeerError(f"cannot connect to {host}:{port}: {reason.lower()}") from exc
    sock.settimeout(None)
    return sock


def run_client(
    sock: socket.socket,
    read_line: Callable[[], str | None],
    show: Callable[[str], None],
) -> ClientStats:
    """The lecture's loop on a connected socket until ``read_line`` returns None (EOF).

    Raises PeerError when the server closes or resets the connection; whatever it sent
    before that is shown first (e.g. a server's "full, try again later").
    """
    stats = ClientStats()
    reader = LineReader()
    while True:
        line = read_line()
        if line is None:
            return stats
        data = (line + "\n").encode()
        try:
            sock.sendall(data)
        except OSError as exc:
            raise PeerError(f"sending failed: {(exc.strerror or str(exc)).lower()}") from exc
        stats.lines_sent += 1
        stats.bytes_sent += len(data)
        while (reply := reader.next_line()) is None:
            try:
                chunk = sock.recv(RECV_SIZE)
            except OSError as exc:
                reason = (exc.strerror or str(exc)).lower()
                raise PeerError(f"receiving failed: {reason}") from exc
            if not chunk:
                rest = reader.rest()
                if rest:
                    show(rest.decode(errors="replace"))
                raise PeerError("the server closed the connection")
            stats.bytes_received += len(chunk)
            reader.feed(chunk)
        show(reply.decode(errors="replace").rstrip("\n"))
