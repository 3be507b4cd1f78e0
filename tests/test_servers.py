"""The five echo server models, as real processes, against real clients.

Each server runs as ``python -m bufdemo serve`` in a process of its own (the fork model
must own its process; and psutil then sees exactly the server). Clients are real sockets
in this process: the concurrent ones come from bufdemo.lecture.loadgen's event loop.
"""

from __future__ import annotations

import contextlib
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import psutil
import pytest

from bufdemo.lecture.loadgen import LoadConfig, ServerProcess, run_load
from bufdemo.lecture.servers import FD_SETSIZE, MODELS, REFUSAL, EchoSession, _SelectPoller
from tests.conftest import require_nofile

EVENT_LOOPS = ("select", "poll", "epoll")
TIMEOUT = 10.0  # seconds any single wait may take on a loaded 2-core host


@pytest.fixture
def server() -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def start(model: str, events: bool = False) -> ServerProcess:
        proc = ServerProcess(model, events=events)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.__exit__(None, None, None)


def echo_once(host: str, port: int, payload: bytes = b"ping\n") -> bytes:
    with socket.create_connection((host, port), timeout=TIMEOUT) as s:
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        return got


def read_to_end(s: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def wait_for(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def footprint(pid: int) -> tuple[int, int, int]:
    """(descriptors, threads, child processes incl. zombies) of a server."""
    proc = psutil.Process(pid)
    return proc.num_fds(), proc.num_threads(), len(proc.children(recursive=True))


def idle(pid: int) -> bool:
    """One thread, no children, no connection but the listener: nothing in progress."""
    proc = psutil.Process(pid)
    conns = proc.net_connections(kind="tcp")
    return (
        proc.num_threads() == 1
        and not proc.children(recursive=True)
        and all(c.status == psutil.CONN_LISTEN for c in conns)
    )


# -- the sans-IO core ----------------------------------------------------------------


def test_echo_session_returns_every_byte_in_order_whatever_the_chunking() -> None:
    session = EchoSession(high_water=8)
    session.receive(b"abc")
    session.receive(b"defgh")
    assert session.outgoing() == b"abcdefgh"
    assert not session.wants_read  # at the high-water mark: stop reading this client
    session.sent(3)
    assert session.outgoing() == b"defgh"
    assert session.wants_read
    assert session.wants_write
    session.receive(b"")
    assert session.eof
    assert not session.done
    session.sent(5)
    assert session.done
    assert (session.bytes_in, session.bytes_out) == (8, 8)


def test_select_bookkeeping_tracks_the_highest_descriptor_like_the_lecture() -> None:
    poller = _SelectPoller()
    for fd in (3, 7, 5):
        poller.watch(fd, True, False)
    assert poller.max_fd == 7
    assert poller.read_fds == {3, 5, 7}
    poller.watch(7, False, False)
    assert poller.max_fd == 5  # searched down after the highest one left
    poller.watch(5, False, True)
    assert poller.read_fds == {3}
    assert poller.write_fds == {5}
    assert poller.max_fd == 5
    assert poller.can_watch(FD_SETSIZE - 1)
    assert not poller.can_watch(FD_SETSIZE)


# -- behaviour of each model ---------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_model_echoes_correctly_for_50_concurrent_clients(
    server: Callable[..., ServerProcess], model: str
) -> None:
    srv = server(model)
    result = run_load(LoadConfig(srv.host, srv.port, clients=50, messages=20))
    assert result.failures == 0, result.reasons
    assert result.connected == 50
    assert result.replies_ok == 50 * 20
    assert srv.stop() == 0
    assert "50 connections accepted, 0 refused" in srv.output()


@pytest.mark.slow
def test_epoll_holds_1000_concurrent_clients(server: Callable[..., ServerProcess]) -> None:
    require_nofile(1200)
    srv = server("epoll")
    result = run_load(LoadConfig(srv.host, srv.port, clients=1000, messages=3))
    assert result.failures == 0, result.reasons
    assert result.replies_ok == 3000
    assert srv.stop() == 0
    assert "1000 connections accepted, 0 refused" in srv.output()


@pytest.mark.slow
def test_select_refuses_past_fd_setsize_with_a_message_and_keeps_serving(
    server: Callable[..., ServerProcess],
) -> None:
    require_nofile(FD_SETSIZE + 200)
    srv = server("select")
    held: list[socket.socket] = []
    refused: list[bytes] = []
    try:
        # Keep every connection open, so the server's descriptors climb towards 1024.
        for i in range(FD_SETSIZE + 20):
            s = socket.create_connection((srv.host, srv.port), timeout=TIMEOUT)
            msg = b"client %d\n" % i
            s.sendall(msg)
            reply = s.recv(65536)
            if reply == msg:
                held.append(s)
                continue
            refused.append(reply + read_to_end(s))
            s.close()
        accepted = len(held)
        assert FD_SETSIZE - 16 <= accepted < FD_SETSIZE  # stdio, listener: a few fds below
        assert len(refused) == FD_SETSIZE + 20 - accepted
        assert all(r == REFUSAL for r in refused)
        assert b"FD_SETSIZE (1024)" in REFUSAL
        # The clients it accepted are still served, the first and the last one too.
        for s in (held[0], held[len(held) // 2], held[-1]):
            s.sendall(b"still there\n")
            assert s.recv(65536) == b"still there\n"
    finally:
        for s in held:
            s.close()
    assert srv.stop() == 0
    out = srv.output()
    assert "is not below FD_SETSIZE (1024), which select() cannot watch" in out
    assert f"{accepted} connections accepted, {len(refused)} refused" in out


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_no_descriptor_thread_or_process_leaks_over_200_cycles(
    server: Callable[..., ServerProcess], model: str
) -> None:
    srv = server(model)
    assert echo_once(srv.host, srv.port) == b"ping\n"  # warm up: poller created, etc.
    assert wait_for(lambda: idle(srv.pid))
    baseline = footprint(srv.pid)
    for i in range(200):
        payload = b"cycle %d\n" % i
        assert echo_once(srv.host, srv.port, payload) == payload
    # Workers finish asynchronously after the client leaves: wait, then compare exactly.
    assert wait_for(lambda: idle(srv.pid))
    assert footprint(srv.pid) == baseline
    assert baseline[1] == 1
    assert baseline[2] == 0
    assert srv.stop() == 0


@pytest.mark.parametrize("model", MODELS)
def test_events_are_named_as_in_the_lecture(
    server: Callable[..., ServerProcess], model: str
) -> None:
    srv = server(model, events=True)
    assert echo_once(srv.host, srv.port, b"hello events\n") == b"hello events\n"
    assert wait_for(lambda: "peer closed" in srv.output())
    assert srv.stop() == 0
    lines = srv.output().splitlines()
    names = ("new connection", "data readable", "peer closed")
    kinds = [k for ln in lines for k in names if k in ln]  # in the order printed
    assert kinds == list(names)
    assert any("data readable" in ln and "13 bytes" in ln for ln in lines)


def _flood(host: str, port: int, total: int) -> int:
    """Send ``total`` bytes without reading for a while, then read the echo back."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the replies back up fast
        s.connect((host, port))
        s.setblocking(False)
        sel = selectors.DefaultSelector()
        sel.register(s, selectors.EVENT_WRITE)
        data = memoryview(b"f" * total)
        sent = received = 0
        deadline = time.monotonic() + TIMEOUT
        reading_from = time.monotonic() + 0.3  # not reading at first: the server must wait
        while received < total and time.monotonic() < deadline:
            want = (selectors.EVENT_WRITE if sent < total else 0) | (
                selectors.EVENT_READ if time.monotonic() >= reading_from else 0
            )
            sel.modify(s, want or selectors.EVENT_READ)
            for _, ev in sel.select(0.05):
                if ev & selectors.EVENT_WRITE and sent < total:
                    with contextlib.suppress(BlockingIOError):
                        sent += s.send(data[sent : sent + 65536])
                if ev & selectors.EVENT_READ and time.monotonic() >= reading_from:
                    chunk = s.recv(65536)
                    if not chunk:
                        return received
                    received += len(chunk)
        sel.close()
        return received


@pytest.mark.parametrize("model", EVENT_LOOPS)
def test_event_loop_waits_for_writable_instead_of_blocking_the_others(
    server: Callable[..., ServerProcess], model: str
) -> None:
    srv = server(model, events=True)
    total = 8 << 20  # more than the server's autotuned send buffer (tcp_wmem[2], 4 MiB) holds
    with socket.create_connection((srv.host, srv.port), timeout=TIMEOUT) as other:
        other.sendall(b"first\n")
        assert other.recv(100) == b"first\n"
        assert _flood(srv.host, srv.port, total) == total
        # The flooding client did not block the loop: the other one is answered at once.
        other.sendall(b"second\n")
        assert other.recv(100) == b"second\n"
    assert srv.stop() == 0
    writable = [ln for ln in srv.output().splitlines() if "writable" in ln and "waiting" in ln]
    assert writable, "a reply that could not be written at once never waited for writable"


@pytest.mark.parametrize("model", MODELS)
def test_ctrl_c_stops_every_model_and_leaves_nothing_behind(
    server: Callable[..., ServerProcess], model: str
) -> None:
    srv = server(model)
    clients = [socket.create_connection((srv.host, srv.port), timeout=TIMEOUT) for _ in range(5)]
    try:
        for c in clients:
            c.sendall(b"hi\n")
            assert c.recv(100) == b"hi\n"
        children = psutil.Process(srv.pid).children(recursive=True)
        assert len(children) == (5 if model == "fork" else 0)
        code = srv.stop(signal.SIGINT)
        assert code == 0, f"exit {code}; the server wrote:\n{srv.output()}"
        assert "5 still open at stop" in srv.output()
        # The server reaped its children before it exited: none is left, not even a zombie.
        assert wait_for(lambda: not any(child.is_running() for child in children))
        for c in clients:  # the server's side of every connection is closed
            with contextlib.suppress(ConnectionResetError):
                assert c.recv(100) == b""
    finally:
        for c in clients:
            c.close()


def test_sigterm_stops_as_cleanly_as_ctrl_c(server: Callable[..., ServerProcess]) -> None:
    srv = server("thread")
    assert echo_once(srv.host, srv.port) == b"ping\n"
    assert srv.stop(signal.SIGTERM) == 0
    assert "stopped:" in srv.output()


# -- usage and runtime errors --------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bufdemo", *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--model", "coroutine"], "--model: must be one of fork, thread, select, poll, epoll"),
        (["--model", "epoll", "--listen", "localhost"], "--listen: expected HOST:PORT"),
        (["--model", "epoll", "--listen", "127.0.0.1:70000"], "--listen: port must be 0-65535"),
    ],
)
def test_serve_usage_errors_are_one_line_exit_2(args: list[str], needle: str) -> None:
    proc = run_cli("serve", *args)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_serve_on_a_port_in_use_fails_in_one_line_exit_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_cli("serve", "--model", "epoll", "--listen", f"127.0.0.1:{port}")
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"BufdemoError: cannot listen on 127.0.0.1:{port}: address already in use"
    )
