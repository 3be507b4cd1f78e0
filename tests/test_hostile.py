"""Hostile or stray peers at a listening receiver, and what bufdemo exposes.

A receiver accepts only a connection that presents a valid hello with the run's token
within HELLO_TIMEOUT; everything else is closed, counted and never reaches the
experiment. After its sender is accepted the listener is closed: later connections are
refused by the kernel. Default listen address: 127.0.0.1.
"""

from __future__ import annotations

import json
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from bufdemo.experiment.receiver import HELLO_TIMEOUT
from bufdemo.experiment.wire import KIND_HELLO, MAGIC, Hello, encode_hello
from tests.procs import Bufdemo, csv_rows, one_line, only_run_dir, wait_until

TOKEN = "00112233445566778899aabbccddeeff"  # noqa: S105 - a test token, not a secret
WRONG_TOKEN = bytes(16)
MESSAGES = 2000


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def rejected(sock: socket.socket) -> bool:
    """True once the receiver has closed this connection on us (EOF or reset)."""
    with sock:
        sock.settimeout(HELLO_TIMEOUT + 10)
        try:
            return sock.recv(1) == b""
        except ConnectionResetError:
            return True


def send_and_wait(port: int, data: bytes) -> bool:
    sock = connect(port)
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        sock.close()
        return True
    return rejected(sock)


def port_scanner(port: int) -> bool:
    connect(port).close()
    return True


def random_bytes(port: int) -> bool:
    return send_and_wait(port, bytes(range(7, 250)) * 3)


def wrong_magic(port: int) -> bool:
    return send_and_wait(port, b"HTTP" + bytes(40))


def four_gigabyte_length(port: int) -> bool:
    header = MAGIC + struct.pack(">B3xQII", KIND_HELLO, 0, 0xFFFFFFFF, 0)
    return send_and_wait(port, header)


def wrong_token(port: int) -> bool:
    return send_and_wait(port, encode_hello(Hello(WRONG_TOKEN, 10, 1024)))


def one_byte_a_second(port: int) -> bool:
    """A slow-loris: a valid beginning, one byte per second, never a whole hello."""
    sock = connect(port)
    hello = encode_hello(Hello(bytes.fromhex(TOKEN), 10, 1024))
    try:
        for byte in hello:
            sock.sendall(bytes([byte]))
            sock.settimeout(1.0)
            try:
                if sock.recv(1) == b"":
                    sock.close()
                    return True  # closed on us mid-trickle
            except TimeoutError:
                continue
            except ConnectionResetError:
                sock.close()
                return True
    except (BrokenPipeError, ConnectionResetError):
        sock.close()
        return True
    sock.close()
    return False  # the whole hello got through a byte a second: the door was held open


STRAYS: dict[str, tuple[Callable[[int], bool], str]] = {
    "port scanner (connects and leaves)": (port_scanner, "connection closed before a hello"),
    "random bytes": (random_bytes, "bad magic"),
    "wrong magic": (wrong_magic, "bad magic b'HTTP'"),
    "a 4 GB length field": (four_gigabyte_length, "frame length 4294967295 exceeds the maximum 28"),
    "a valid hello with the wrong token": (wrong_token, "wrong run token"),
    "one byte a second": (one_byte_a_second, "silent"),
}


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[Bufdemo, int]]:
    recv = Bufdemo(
        ["receive", "--token", TOKEN, "--recv-delay", "0.001", "--out", str(tmp_path / "r")],
        tmp_path,
    )
    try:
        yield recv, recv.listening_port()
    finally:
        recv.cleanup()


@pytest.mark.slow
def test_strays_are_rejected_and_do_not_change_the_runs_message_counts(
    receiver: tuple[Bufdemo, int], tmp_path: Path
) -> None:
    recv, port = receiver
    results: dict[str, bool] = {}
    # The slow one holds the (sequential) acceptor for HELLO_TIMEOUT: start it first,
    # the others queue in the listen backlog meanwhile.
    slow = threading.Thread(
        target=lambda: results.update({"one byte a second": one_byte_a_second(port)})
    )
    slow.start()
    time.sleep(0.2)
    for name, (stray, _) in STRAYS.items():
        if name != "one byte a second":
            results[name] = stray(port)
    slow.join(timeout=HELLO_TIMEOUT + 30)
    assert results == dict.fromkeys(STRAYS, True)
    assert not (tmp_path / "r").exists()  # strays alone create no run directory
    rss_mb = psutil.Process(recv.pid).memory_info().rss / 1e6
    assert rss_mb < 300, "a length field must not make the receiver allocate it"

    sender = Bufdemo(
        ["send", "--to", f"127.0.0.1:{port}", "--token", TOKEN, "--messages", str(MESSAGES),
         "--sndbuf", "16384", "--out", str(tmp_path / "s")],
        tmp_path,
    )  # fmt: skip
    try:
        # Once the sender is accepted the listener is closed: a late stray is refused.
        try:
            wait_until(lambda: (tmp_path / "r").exists(), 60, "the sender to be accepted")
        except AssertionError as exc:
            sender.cleanup()
            recv.cleanup()
            raise AssertionError(f"{exc}: {sender.leftover=} {recv.leftover=}") from None
        with pytest.raises(ConnectionRefusedError):
            connect(port)
        assert sender.finish()[0] == 0
    finally:
        sender.cleanup()
    code, stdout, stderr = recv.finish()
    assert code == 0, stderr
    # The result on stdout (status and errors go to stderr).
    assert re.search(
        rf"consumed {MESSAGES:,} messages \({MESSAGES:,} intact\), {len(STRAYS)} stray", stdout
    )
    run_dir = only_run_dir(tmp_path / "r")
    rec = json.loads((run_dir / "meta.json").read_text())["receiver"]
    assert rec["messages"] == rec["intact"] == MESSAGES
    assert rec["corrupt"] == rec["out_of_order"] == 0
    assert rec["rejected"] == len(STRAYS)
    reasons = " | ".join(rec["rejected_peers"])
    for name, (_, reason) in STRAYS.items():
        assert reason in reasons, name
    assert csv_rows(run_dir / "consumed.csv") == MESSAGES


def test_receiver_listens_on_loopback_unless_told_otherwise(tmp_path: Path) -> None:
    recv = Bufdemo(["receive", "--timeout", "0.5", "--out", "out"], tmp_path)
    try:
        assert recv.listening_port() > 0  # "listening on 127.0.0.1:PORT"
        code, _, stderr = recv.finish()
    finally:
        recv.cleanup()
    assert code == 1
    assert "warning" not in stderr


def test_a_non_loopback_listen_address_warns_that_strangers_can_reach_it(
    tmp_path: Path,
) -> None:
    recv = Bufdemo(["receive", "--listen", "0.0.0.0:0", "--timeout", "0.5", "--out", "out"],
                   tmp_path)  # fmt: skip
    try:
        warning = recv.first_stderr_line()
        code, _, rest = recv.finish()
    finally:
        recv.cleanup()
    assert warning.startswith("warning: listening on 0.0.0.0:0: other hosts can reach this port")
    # No --token given: one is generated and printed, and only a sender with it is accepted.
    assert re.search(r"a token is required, generated: [0-9a-f]{32} \(pass --token ", warning)
    assert code == 1
    assert one_line(rest.split("\n", 1)[1]) == "PeerTimeout: no sender connected within 0.5 s"


def test_a_server_on_a_non_loopback_address_warns_that_strangers_can_reach_it() -> None:
    server = subprocess.Popen(
        [sys.executable, "-m", "bufdemo", "serve", "--model", "epoll", "--listen", "0.0.0.0:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stderr is not None
        warning = server.stderr.readline()
    finally:
        server.terminate()
        server.communicate(timeout=30)
    assert warning.startswith("warning: listening on 0.0.0.0:0: other hosts can reach this")


DEMO = Path(__file__).resolve().parent.parent / "demo"


@pytest.mark.parametrize(
    "pattern",
    [r"shell\s*=\s*True", r"\bpickle\b", r"\bmarshal\b", r"\beval\(", r"\bexec\(", r"os\.system"],
)
def test_nothing_is_executed_or_unpickled_from_received_data(pattern: str) -> None:
    """No shell, no pickle/marshal, no eval/exec anywhere in the live experiment."""
    hits = [
        f"{path.relative_to(DEMO.parent)}:{n}"
        for path in sorted(DEMO.rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(pattern, line.split("#", 1)[0])
    ]
    assert hits == []
