"""The lecture's client, driven as a person would (pexpect on a terminal), against our
echo servers and against socat and nc (OpenBSD netcat). Without socat or OpenBSD nc those
two tests skip naming the package to install (apt-get install socat netcat-openbsd); with
BUFDEMO_REQUIRE_TOOLS=1 (CI) they fail instead.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pexpect
import psutil
import pytest

from bufdemo.lecture.client import LineReader
from bufdemo.lecture.loadgen import ServerProcess
from tests.conftest import require_tool

TIMEOUT = 10.0
CLIENT = [sys.executable, "-m", "bufdemo", "client"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_listening(pid: int, port: int) -> None:
    """Wait until process ``pid`` listens on ``port`` (without connecting to it)."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        conns = psutil.Process(pid).net_connections(kind="tcp")
        if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in conns):
            return
        time.sleep(0.02)
    pytest.fail(f"process {pid} never listened on port {port}")


@contextmanager
def socat_echo() -> Iterator[int]:
    socat = require_tool("socat", "socat")
    port = free_port()
    proc = subprocess.Popen(
        [socat, f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork", "PIPE"],
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_listening(proc.pid, port)
        yield port
    finally:
        proc.kill()
        proc.wait()


@contextmanager
def nc_echo() -> Iterator[int]:
    """nc as an echo server: what it receives goes to its stdout, a pipe that is also its
    stdin, so it sends every byte back. No shell involved."""
    nc = require_tool("nc", "netcat-openbsd", variant="OpenBSD")
    port = free_port()
    r, w = os.pipe()
    try:
        proc = subprocess.Popen([nc, "-l", "127.0.0.1", str(port)], stdin=r, stdout=w)
    finally:
        os.close(r)
        os.close(w)
    try:
        wait_listening(proc.pid, port)
        yield port
    finally:
        proc.kill()
        proc.wait()


@contextmanager
def ours(model: str) -> Iterator[int]:
    with ServerProcess(model) as srv:
        yield srv.port


def spawn_client(port: int) -> pexpect.spawn:
    child = pexpect.spawn(
        CLIENT[0], [*CLIENT[1:], f"127.0.0.1:{port}"], timeout=TIMEOUT, echo=False, encoding="utf-8"
    )
    return child


def converse(port: int) -> None:
    """Type two lines as a person would, check each reply, end with Ctrl-D."""
    child = spawn_client(port)
    try:
        child.expect_exact("> ")
        child.sendline("hello from the lecture")
        child.expect_exact("hello from the lecture\r\n> ")
        child.sendline("第二行 second line")
        child.expect_exact("第二行 second line\r\n> ")
        child.sendeof()
        child.expect_exact("bye: 2 lines sent")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


@pytest.mark.parametrize("model", ["epoll", "fork", "select"])
def test_client_talks_to_our_servers(model: str) -> None:
    with ours(model) as port:
        converse(port)


def test_client_talks_to_socat() -> None:
    with socat_echo() as port:
        converse(port)


def test_client_talks_to_nc() -> None:
    with nc_echo() as port:
        converse(port)


def test_client_with_piped_input_prints_only_the_replies() -> None:
    with ours("thread") as port:
        proc = subprocess.run(
            [*CLIENT, f"127.0.0.1:{port}"],
            input="one\ntwo\n\nfour\n",
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 0
    assert proc.stdout == "one\ntwo\n\nfour\n"


def test_client_reports_a_server_that_hangs_up_in_one_line_exit_1() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        def hang_up() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(100)
                conn.sendall(b"bye from the server\n")
                conn.shutdown(socket.SHUT_WR)
                conn.recv(100)  # the client's next line, read so close() sends FIN

        server = threading.Thread(target=hang_up)
        server.start()
        child = spawn_client(port)
        try:
            child.expect_exact("> ")
            child.sendline("first")
            child.expect_exact("bye from the server\r\n> ")
            child.sendline("second")
            child.expect_exact("PeerError: the server closed the connection")
            child.expect(pexpect.EOF)
        finally:
            child.close()
            server.join()
    assert child.exitstatus == 1


def test_connection_refused_is_one_line_exit_1() -> None:
    port = free_port()
    proc = subprocess.run(
        [*CLIENT, f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=60, input=""
    )
    assert proc.returncode == 1
    assert proc.stderr == f"PeerError: cannot connect to 127.0.0.1:{port}: connection refused\n"


@pytest.mark.parametrize(
    ("address", "needle"),
    [("127.0.0.1", "expected HOST:PORT"), ("127.0.0.1:0", "port must be 1-65535")],
)
def test_bad_address_is_a_usage_error(address: str, needle: str) -> None:
    proc = subprocess.run([*CLIENT, address], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert "HOST:PORT: " in proc.stderr
    assert needle in proc.stderr


def test_line_reader_finds_lines_however_the_bytes_arrive() -> None:
    stream = b"alpha\nbeta\n\ngamma"
    reader = LineReader()
    lines = []
    for i in range(len(stream)):  # one byte at a time: TCP may deliver exactly that
        reader.feed(stream[i : i + 1])
        while (line := reader.next_line()) is not None:
            lines.append(line)
    assert lines == [b"alpha\n", b"beta\n", b"\n"]
    assert reader.rest() == b"gamma"
