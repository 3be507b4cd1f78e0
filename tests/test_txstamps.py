"""Transmit timestamps read by a process of their own, over a real TCP connection."""

from __future__ import annotations

import ast
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from bufdemo import probes
from bufdemo.experiment import errqueue, txstamps, wire
from bufdemo.experiment.config import RunConfig
from bufdemo.experiment.sender import SenderResult, run_sender
from bufdemo.net import Address
from tests.procs import wait_until

SIZE = 1024
MESSAGES = 2_000
TIMEOUT = 30.0


@contextmanager
def stamped_pair() -> Iterator[socket.socket]:
    """A connected sender socket with SO_TIMESTAMPING on; a thread reads everything."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        sender = socket.create_connection(listener.getsockname())
        peer, _ = listener.accept()
    why = txstamps.enable(sender)
    if why is not None:
        sender.close()
        peer.close()
        pytest.skip(f"no transmit timestamps here: {why}")

    def read_all() -> None:
        while peer.recv(1 << 20):
            pass

    reader = threading.Thread(target=read_all)
    reader.start()
    try:
        yield sender
    finally:
        sender.close()
        reader.join(TIMEOUT)
        peer.close()


@pytest.mark.parametrize(
    ("host", "asked"),
    [
        ("127.0.0.1", False),
        ("127.3.2.1", False),
        ("::1", False),
        ("::ffff:127.0.0.1", False),
        ("10.200.0.2", True),
        ("192.168.1.20", True),
        ("fe80::1%veth0", True),
        ("2001:db8::1", True),
    ],
)
def test_sched_reports_are_asked_for_only_off_loopback(host: str, asked: bool) -> None:
    assert (txstamps.sched_reason(host) is None) is asked


def test_a_peer_at_this_hosts_own_address_goes_through_lo_too() -> None:
    assert txstamps.sched_reason("10.0.0.5", "10.0.0.5") == txstamps.NO_QDISC
    assert txstamps.sched_reason("::ffff:10.0.0.5", "10.0.0.5") == txstamps.NO_QDISC
    assert txstamps.sched_reason("10.0.0.5", "10.0.0.6") is None
    assert txstamps.sched_reason("example.org") is None  # not an address: asked


def _own_address() -> str | None:
    """This host's address on its default route (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: never answered, only routed
        except OSError:
            return None
        host: str = probe.getsockname()[0]
    return None if host.startswith("127.") else host


@pytest.mark.parametrize("where", ["loopback", "own address"])
def test_a_connection_on_this_host_asks_for_no_sched(where: str) -> None:
    host = "127.0.0.1" if where == "loopback" else _own_address()
    if host is None:
        pytest.skip("this host has no address off loopback")
    with (
        socket.create_server((host, 0)) as listener,
        socket.create_connection(listener.getsockname()) as sock,
    ):
        assert txstamps.sched_reason_of(sock) == txstamps.NO_QDISC
    with socket.socket() as unconnected:  # no peer to tell by: ask
        assert txstamps.sched_reason_of(unconnected) is None


def test_the_reader_process_needs_the_standard_library_only() -> None:
    """It runs as ``python -I -S errqueue.py FD``: no site-packages, no bufdemo."""
    tree = ast.parse(Path(errqueue.__file__).read_text())
    imported = {
        (node.module or "") if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    top = {name.split(".")[0] for name in imported}
    assert top - {"__future__"} <= sys.stdlib_module_names, top - sys.stdlib_module_names


@pytest.mark.parametrize("through_lo", [True, False])
def test_the_sender_asks_for_sched_as_the_route_decides(
    through_lo: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole sender on loopback; off it (what a --netns link is), told so by
    ``sched_reason_of``: SCHED reports are then asked for, read and recorded."""
    if not through_lo:
        monkeypatch.setattr(txstamps, "sched_reason_of", lambda sock: None)
    cfg = RunConfig(messages=MESSAGES, size=SIZE, timestamps=True, out=tmp_path)
    result = SenderResult()
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def read_all() -> None:
            peer, _ = listener.accept()
            with peer:
                while peer.recv(1 << 20):
                    pass

        reader = threading.Thread(target=read_all)
        reader.start()
        run_sender(cfg, Address(*listener.getsockname()), tmp_path, None, result)
        reader.join(TIMEOUT)
    assert result.complete, result.error
    record = result.timestamping
    assert record is not None
    if not record["enabled"]:
        pytest.skip(f"no transmit timestamps here: {record['reason']}")
    # 2,000 writes make ~4,000 reports: a reader process kept off the CPU (a loaded
    # machine) lets the error queue fill, and the kernel drops what does not fit
    # (docs/kernel.md), the last ACK's report too. The tests that send the data in one
    # piece (few reports) assert the last byte's ACK exactly.
    assert 0 < record["last_acked_offset"] <= SIZE * MESSAGES - 1
    assert record["notifications"]["SND"] > 0
    assert record["notifications"]["ACK"] > 0
    if through_lo:
        assert record["sched_reason"] == txstamps.NO_QDISC
        assert record["notifications"]["SCHED"] == 0
    else:
        assert record["sched_reason"] is None
        assert record["notifications"]["SCHED"] > 0


def send_and_wait_for_acks(sock: socket.socket) -> None:
    sock.sendall(b"m" * SIZE * MESSAGES)
    wait_until(lambda: probes.queue_out(sock) == 0, TIMEOUT, "every byte ACKed")


def test_the_reader_process_hands_back_every_kind_up_to_the_last_byte() -> None:
    with stamped_pair() as sock:
        reader = txstamps.TxStampProcess(sock, base=0)
        reader.start()
        child = reader._proc
        assert child is not None
        send_and_wait_for_acks(sock)
        reader.stop()
        assert child.returncode == 0
    record = reader.record()
    assert (record["reader"], record["reader_error"], record["read_errors"]) == ("process", None, 0)
    assert 0 < record["reader_start_s"] < txstamps.READY_TIMEOUT  # the wait it cost the sender
    # The standard library only, without site-packages: it starts in a fraction of the
    # time importing the package takes (test_the_reader_process_needs_the_standard...).
    assert isinstance(child.args, list)
    assert child.args[1:4] == ["-I", "-S", errqueue.__file__]
    assert record["last_acked_offset"] == SIZE * MESSAGES - 1
    assert all(record["notifications"][kind] > 0 for kind in ("SND", "SCHED", "ACK"))
    assert len(reader.kind) == len(reader.offset) == len(reader.t_ns)
    assert min(reader.t_ns) > 0  # on the monotonic clock, as every other *_ns column
    assert sock.fileno() == -1  # the child never closed the socket for us: we did


def test_without_the_process_the_thread_reads_and_the_record_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "executable", "/bin/false")  # a child that never gets ready
    with stamped_pair() as sock:
        reader = txstamps.TxStampProcess(sock, base=0)
        reader.start()
        send_and_wait_for_acks(sock)
        reader.stop()
    record = reader.record()
    assert record["reader"] == "thread"
    assert "the reader process did not start" in record["reader_error"]
    assert "\n" not in record["reader_error"]
    assert record["last_acked_offset"] == SIZE * MESSAGES - 1


def test_a_reader_process_that_dies_loses_its_reports_and_says_so() -> None:
    with stamped_pair() as sock:
        reader = txstamps.TxStampProcess(sock, base=0)
        reader.start()
        assert reader._proc is not None
        send_and_wait_for_acks(sock)
        reader._proc.kill()
        reader.stop()
    record = reader.record()
    assert record["read_errors"] == 1
    assert record["reader_error"].startswith("the reader process exited with -9")
    assert record["notifications"] == {"SND": 0, "SCHED": 0, "ACK": 0}


SENDER = """
import socket, sys, time
from bufdemo.experiment import txstamps
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
txstamps.enable(sock)
reader = txstamps.TxStampProcess(sock, base=0)
reader.start()
print(reader._proc.pid, flush=True)
time.sleep(60)
"""


def test_a_sigkilled_sender_leaves_no_reader_process() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        sender = subprocess.Popen(
            [sys.executable, "-c", SENDER, str(listener.getsockname()[1])],
            stdout=subprocess.PIPE,
            text=True,
        )
        peer, _ = listener.accept()
        with sender, peer:
            assert sender.stdout is not None
            child = psutil.Process(int(sender.stdout.readline()))
            assert child.is_running()
            os.kill(sender.pid, signal.SIGKILL)
            sender.wait(TIMEOUT)
            gone, _ = psutil.wait_procs([child], timeout=TIMEOUT)
            assert gone, "the reader process outlived its sender"
            peer.settimeout(TIMEOUT)
            assert peer.recv(1) == b""  # and with both gone, the connection closed


def test_a_ctrl_c_to_the_process_group_leaves_the_reader_to_its_sender() -> None:
    """SIGINT and SIGTERM reach every process of the group; the sender handles them and
    then stops the reader, which must still have its rows to hand back."""
    with stamped_pair() as sock:
        reader = txstamps.TxStampProcess(sock, base=0)
        reader.start()
        assert reader._proc is not None
        send_and_wait_for_acks(sock)
        reader._proc.send_signal(signal.SIGINT)
        reader._proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)  # a reader that did not ignore them would be gone by now
        assert reader._proc.poll() is None
        reader.stop()
    record = reader.record()
    assert (record["reader"], record["reader_error"]) == ("process", None)
    assert record["last_acked_offset"] == SIZE * MESSAGES - 1


def test_by_hand_halves_report_offsets_from_the_first_message_byte(tmp_path: Path) -> None:
    """`bufdemo send --timestamps` to a `bufdemo receive`: the hello and the three clock
    frames before the data are reported at negative offsets (their last bytes), and
    the first message at its own last byte, size - 1."""
    with subprocess.Popen(
        [sys.executable, "-m", "bufdemo", "receive", "--recv-delay", "0",
         "--out", str(tmp_path / "r")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    ) as recv:  # fmt: skip
        assert recv.stderr is not None
        line = ""
        while "now start:" not in line:
            line = recv.stderr.readline()
            assert line, "the receiver ended before listening"
        to = line.split("--to ")[1].split()[0]
        send = subprocess.run(
            [sys.executable, "-m", "bufdemo", "send", "--to", to, "-n", "50", "--timestamps",
             "--out", str(tmp_path / "s"), "--json"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert send.returncode == 0, send.stderr
        recv.stderr.read()  # to its end: the receiver has ended
        assert recv.wait(60) == 0
    (s_dir,) = (tmp_path / "s").iterdir()
    rows = (s_dir / "tx_timestamps.csv").read_text().splitlines()[1:]
    offsets = sorted({int(row.split(",")[1]) for row in rows})
    frame = wire.HEADER_SIZE + wire.CLOCK_SIZE
    before = [o for o in offsets if o < 0]
    assert before == [-3 * frame - 1, -2 * frame - 1, -frame - 1, -1]
    assert [o for o in offsets if o >= 0][:1] == [SIZE - 1]
