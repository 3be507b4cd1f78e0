"""Shared fixtures: real loopback TCP pairs with small buffers."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import pytest

Pair = tuple[socket.socket, socket.socket]


@pytest.fixture
def tcp_pair() -> Iterator[Callable[..., Pair]]:
    """Make connected (client, server) pairs on 127.0.0.1; buffers set before connect."""
    made: list[socket.socket] = []

    def make(sndbuf: int | None = None, rcvbuf: int | None = None) -> Pair:
        listener = socket.socket()
        made.append(listener)
        if rcvbuf is not None:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.socket()
        made.append(client)
        if sndbuf is not None:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        client.connect(listener.getsockname())
        server, _ = listener.accept()
        made.append(server)
        return client, server

    yield make
    for sock in made:
        sock.close()


def fill(sock: socket.socket, chunk: int = 1024) -> int:
    """Write without blocking until the kernel refuses more; return bytes accepted."""
    sock.setblocking(False)
    total = 0
    try:
        while True:
            total += sock.send(b"x" * chunk)
    except BlockingIOError:
        pass
    finally:
        sock.setblocking(True)
    return total
