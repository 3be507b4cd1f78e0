"""Two hosts: the clock frame, the offset estimator, and merge on real by-hand halves.

The estimator is pure and tested with made-up clocks. The halves run for real: on
loopback (anywhere), and in two network namespaces as two hosts (root). On one machine
the true offset is 0, or the amount the test hook shifts the receiver's clock by.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bufdemo import analysis, probes
from bufdemo.cli import main
from bufdemo.errors import ProtocolError
from bufdemo.experiment import clocksync, netns
from bufdemo.experiment.receiver import ReceiverResult, receive_loop
from bufdemo.experiment.recorder import ConsumedLog, Sampler
from bufdemo.experiment.sender import (
    FIRST_ANSWER_WAIT,
    SO_TIMESTAMPNS,
    EarlyClockAnswers,
    arrival_ns,
)
from bufdemo.experiment.wire import (
    KIND_CLOCK,
    ClockReading,
    Decoder,
    FrameBlock,
    Hello,
    decode_clock,
    encode_clock,
    encode_frame,
)
from tests.conftest import require_root, require_tool

BUFDEMO = [sys.executable, "-m", "bufdemo"]
MESSAGES = 2000

# -- pure ------------------------------------------------------------------------------


def test_a_clock_frame_round_trips_through_the_decoder() -> None:
    reading = ClockReading(4, 123, -5, 2**62)
    decoder = Decoder(max_length=24)
    decoder.receive_data(encode_clock(reading))
    msg = decoder.next_message()
    assert msg is not None
    assert msg.kind == KIND_CLOCK
    assert decode_clock(msg) == reading
    with pytest.raises(ProtocolError, match="malformed clock frame"):
        decode_clock(msg._replace(payload=b"short"))
    bad = Decoder(max_length=100)
    bad.receive_data(encode_frame(KIND_CLOCK, 0, b"x" * 24)[:-1] + b"y")  # checksum broken
    broken = bad.next_message()
    assert broken is not None
    with pytest.raises(ProtocolError, match="intact=False"):
        decode_clock(broken)


def _exchange(t1: int, offset: int, there: int, back: int, think: int = 1000) -> dict[str, int]:
    """Four timestamps for a receiver ``offset`` ns ahead, one-way delays there/back."""
    t2 = t1 + there + offset
    t3 = t2 + think
    return {"t1": t1, "t2": t2, "t3": t3, "t4": t3 - offset + back}


def test_symmetric_delays_give_the_offset_exactly() -> None:
    e = clocksync.Exchange(**_exchange(10_000, offset=2_500_000_000, there=300, back=300))
    assert e.offset_ns == 2_500_000_000
    assert e.round_trip_ns == 600


@pytest.mark.parametrize(("there", "back"), [(100, 5000), (5000, 100), (0, 4000)])
def test_asymmetry_stays_within_half_the_round_trip(there: int, back: int) -> None:
    records = [
        {"seq": 0, **_exchange(0, -7_000_000, there, back)},
        {"seq": 3, **_exchange(10**9, -7_000_000, 10**6, 10**6)},  # the marker: queued
        {"seq": 4, **_exchange(2 * 10**9, -7_000_000, there, back)},
    ]
    est = clocksync.estimate(clocksync.exchanges_from(records))
    assert est is not None
    assert abs(est.offset_ns - -7_000_000) <= est.error_ns
    assert est.error_ns == (there + back) / 2  # the marker's long round trip is not used


def test_drift_is_the_offsets_change_per_time_and_moves_the_mapping() -> None:
    # The receiver's clock runs 100 ppm fast: +100 us per second of the sender's.
    records = [
        {"seq": 1, **_exchange(0, 1_000_000, 200, 200)},
        {"seq": 5, **_exchange(10**9, 1_000_000 + 100_000, 200, 200)},
    ]
    est = clocksync.estimate(clocksync.exchanges_from(records))
    assert est is not None
    assert est.drift_ppm == pytest.approx(100, rel=1e-3)
    # Half-way, the offset is half-way: a receiver time maps back to the sender's.
    t_sender = 5 * 10**8
    t_receiver = t_sender + 1_000_000 + 50_000
    assert abs(clocksync.to_sender_clock(t_receiver, est) - t_sender) <= 300


def test_the_shortest_round_trip_of_each_phase_is_used() -> None:
    records = [
        {"seq": 0, **_exchange(0, 0, 5000, 5000)},
        {"seq": 1, **_exchange(100_000, 0, 100, 120)},
        {"seq": 2, **_exchange(200_000, 0, 900, 900)},
    ]
    (best,) = clocksync.exchanges_from(records)
    assert best.round_trip_ns == 220


def test_the_test_hook_reads_seconds_and_refuses_nonsense() -> None:
    assert clocksync.clock_shift_ns({}) == 0
    assert clocksync.clock_shift_ns({clocksync.CLOCK_SHIFT_ENV: "2.5"}) == 2_500_000_000
    with pytest.raises(Exception, match="must be seconds"):
        clocksync.clock_shift_ns({clocksync.CLOCK_SHIFT_ENV: "soon"})


def test_an_answers_t4_is_the_kernels_arrival_stamp_within_the_exchange() -> None:
    real = 1_700_000_000_123_456_789
    offset = 1_000_000_000_000_000_000  # CLOCK_REALTIME - CLOCK_MONOTONIC
    stamp = struct.pack("qq", real // 10**9, real % 10**9)
    arrived = real - offset
    anc = [(socket.SOL_SOCKET, SO_TIMESTAMPNS, stamp)]
    assert arrival_ns(anc, offset, arrived - 5, arrived + 7) == arrived
    # Another cmsg first (SO_TIMESTAMPING's, with --timestamps): still found.
    other = (socket.SOL_SOCKET, 37, bytes(48))
    assert arrival_ns([other, *anc], offset, arrived - 5, arrived + 7) == arrived
    # No stamp, a short one, or one outside [t1, t_read] (the clock stepped): the read.
    assert arrival_ns([], offset, arrived - 5, arrived + 7) == arrived + 7
    short = [(socket.SOL_SOCKET, SO_TIMESTAMPNS, stamp[:8])]
    assert arrival_ns(short, offset, arrived - 5, arrived + 7) == arrived + 7
    assert arrival_ns(anc, offset, arrived + 1, arrived + 7) == arrived + 7
    assert arrival_ns(anc, offset, arrived - 5, arrived - 1) == arrived - 1


# -- real halves -----------------------------------------------------------------------


@contextlib.contextmanager
def receive_stamping_on() -> Iterator[None]:
    """Hold the kernel's receive stamping on, once it is: it comes on a moment after the
    first socket on the machine asks for it (docs/two-hosts.md), and a segment that
    arrives before that carries no stamp. Waits until a byte sent on loopback comes
    with one."""
    with (
        socket.create_server(("127.0.0.1", 0)) as listener,
        socket.create_connection(listener.getsockname()) as out,
    ):
        out.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # each byte at once
        into, _ = listener.accept()
        with into:
            into.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            deadline = time.monotonic() + 30
            while True:
                out.sendall(b"x")
                _, anc, _, _ = into.recvmsg(1, socket.CMSG_SPACE(16))
                if any(lvl == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS for lvl, kind, _ in anc):
                    break
                assert time.monotonic() < deadline, "the kernel's receive stamping never came on"
                time.sleep(0.001)
            yield


def test_while_a_socket_keeps_receive_stamping_on_a_new_one_is_stamped_at_once() -> None:
    """The kernel's receive stamping is global: once on, a socket that asks for it gets
    a stamp on the very next segment (switching it on from off takes a moment, which
    receive_stamping_on waits for; on an idle machine a byte sent right after the first
    request often arrives unstamped)."""
    with receive_stamping_on():
        for _ in range(5):
            with (
                socket.create_server(("127.0.0.1", 0)) as listener,
                socket.create_connection(listener.getsockname()) as out,
            ):
                into, _ = listener.accept()
                with into:
                    into.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                    out.sendall(b"x")
                    _, anc, _, _ = into.recvmsg(1, socket.CMSG_SPACE(16))
                    assert [(lvl, kind) for lvl, kind, _ in anc] == [
                        (socket.SOL_SOCKET, SO_TIMESTAMPNS)
                    ]


@pytest.mark.parametrize("read_by", ["finish", "a sample"])
def test_early_answers_keep_their_arrival_time_and_no_thread_waits_for_them(
    read_by: str,
) -> None:
    """The answers to the clock frames before the data are read by the sender's sampler
    when a sample finds them in the receive queue, or after the data; no thread is
    started for them. Their t4 is when they arrived (the kernel's stamp), not when they
    were read, and once read the receive queue is empty (a socket closed with unread
    bytes would reset the connection). The stamps are asked for as soon as the reader
    exists, before the frames: the kernel's stamping comes on a moment later (which the
    test waits for, as a sender's answers do while the receiver reads its hello)."""
    listener = socket.create_server(("127.0.0.1", 0))
    answered = threading.Event()

    def peer() -> None:  # answers each frame at once, as a bufdemo receiver does
        conn, _ = listener.accept()
        with conn:
            decoder = Decoder(max_length=24)
            for _ in clocksync.BEFORE:
                while (msg := decoder.next_message()) is None:
                    decoder.receive_data(conn.recv(4096))
                asked = decode_clock(msg)
                now = time.perf_counter_ns()
                conn.sendall(encode_clock(ClockReading(asked.seq, asked.t1, now, now)))
            answered.set()
            conn.recv(1)  # until the sender closes

    thread = threading.Thread(target=peer, daemon=True)
    thread.start()
    with listener, socket.create_connection(listener.getsockname()) as sock:
        clock: list[dict[str, int]] = []
        early = EarlyClockAnswers(sock, clock)
        assert sock.getsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS) == 1
        sampler = Sampler(sock, 0.001, count=lambda: 0, gated=True, on_unread=early.poll)
        threads = threading.active_count()
        sampler.start()
        with receive_stamping_on():
            early.send_frames()
            assert answered.wait(30)
        time.sleep(0.2)  # the data goes; the answers wait in the receive queue
        assert threading.active_count() == threads
        t_before_read = time.perf_counter_ns()
        if read_by == "a sample":
            sampler.sample_if_due(time.perf_counter_ns())
            assert early.done
            assert probes.queue_in(sock) == 0
        assert early.finish()
        sampler.stop()
        assert early.stamped
        assert [c["seq"] for c in clock] == list(clocksync.BEFORE)
        for c in clock:
            assert c["t1"] <= c["t2"] <= c["t4"] < t_before_read  # the arrival, not the read
    thread.join(30)


@pytest.mark.parametrize("delay", [0.0, 0.0001])
def test_a_clock_frame_right_behind_the_data_is_answered_when_read_with_it(
    delay: float,
) -> None:
    """The clock frame after the data (clocksync.AFTER's marker) can reach the receiver
    in one read with the last messages: the receiver answers it from what it already
    holds, without waiting for bytes that will not come (its sender waits for the
    answer). At delay 0 the bulk loop reads all of it in one recv_into."""
    messages, size = 20, 1024
    block = FrameBlock(size, messages)
    block.fill(0)
    data = b"".join(bytes(view) for view in block.views)
    marker = encode_clock(ClockReading(clocksync.AFTER[0], 123))
    listener = socket.create_server(("127.0.0.1", 0))
    with listener, socket.create_connection(listener.getsockname()) as sender:
        conn, _ = listener.accept()
        loop, result = _receiver_thread(conn, messages, size, delay)
        sender.sendall(data + marker)  # in the kernel before the receiver's first read
        loop.start()
        ready, _, _ = select.select([sender], [], [], 30)
        assert ready, "the receiver did not answer the clock frame"
        decoder = Decoder(max_length=24)
        while (msg := decoder.next_message()) is None:
            decoder.receive_data(sender.recv(4096))
        assert decode_clock(msg).seq == clocksync.AFTER[0]
        sender.shutdown(socket.SHUT_WR)
        loop.join(30)
        conn.close()
    assert not loop.is_alive()
    assert result.messages == messages


@pytest.mark.parametrize("delay", [0.0, 1e-6])
def test_the_data_behind_the_clock_frames_goes_back_to_the_fast_loop(
    delay: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A by-hand sender's data follows its clock frames at once, so the receiver's first
    read holds both. The general loop answers the frames, takes the data frames read
    with them, and hands back to the fast loop as soon as it holds nothing more (it
    used to keep every message to the end: a recv and a decode per message). With a
    delay, no slot is paced as a frame and found to be a clock frame only later (a
    batch of such slots used to be served first, holding the answers up)."""
    from bufdemo.experiment import receiver

    messages, size = 20_000, 64
    block = FrameBlock(size, messages)
    block.fill(0)
    data = b"".join(bytes(view) for view in block.views)
    clocks = b"".join(encode_clock(ClockReading(seq, 1)) for seq in clocksync.BEFORE)
    in_decoder: list[int] = []  # rows each call of the general loop recorded
    decoder_loop = receiver._decoder_loop

    def counted(*args: Any) -> int | None:
        log: ConsumedLog = args[5]
        before = log.rows
        try:
            return decoder_loop(*args)
        finally:
            in_decoder.append(log.rows - before)

    monkeypatch.setattr(receiver, "_decoder_loop", counted)
    misread: list[int] = []  # batches found to start with something not a data frame
    flush = receiver._flush

    def checked(buf: bytearray, frames: int, *rest: Any) -> bytearray | None:
        left = flush(buf, frames, *rest)
        if left is not None:
            misread.append(frames)
        return left

    monkeypatch.setattr(receiver, "_flush", checked)
    listener = socket.create_server(("127.0.0.1", 0))
    with listener, socket.create_connection(listener.getsockname()) as sender:
        conn, _ = listener.accept()
        loop, result = _receiver_thread(conn, messages, size, delay)
        loop.start()
        sender.sendall(clocks + data)
        sender.shutdown(socket.SHUT_WR)
        loop.join(60)
        conn.close()
    assert not loop.is_alive()
    assert result.messages == result.intact == messages
    assert len(result.clock) == len(clocksync.BEFORE)
    assert 1 <= len(in_decoder) <= len(clocksync.BEFORE)  # only for the clock frames
    # At most the frames read with them: one bulk read at delay 0; with a delay, the one
    # data frame a slot shares with the last clock frame.
    assert sum(in_decoder) <= (receiver.BULK_BYTES // size if delay == 0 else 1)
    assert misread == []


def _receiver_thread(
    conn: socket.socket, messages: int, size: int, delay: float
) -> tuple[threading.Thread, ReceiverResult]:
    """receive_loop on ``conn`` in a thread (not started), as after the hello."""
    result = ReceiverResult()
    loop = threading.Thread(
        target=receive_loop,
        args=(conn, Hello(bytes(16), messages, size), delay, ConsumedLog(messages), result),
        daemon=True,
    )
    return loop, result


def _halves(
    tmp_path: Path, shift: str | None, listen: str, sender_ns: str | None, receiver_ns: str | None
) -> tuple[Path, Path]:
    env = dict(os.environ)
    env.pop(clocksync.CLOCK_SHIFT_ENV, None)
    recv_env = dict(env)
    if shift is not None:
        recv_env[clocksync.CLOCK_SHIFT_ENV] = shift

    def inside(ns: str | None) -> list[str]:
        return [] if ns is None else ["ip", "netns", "exec", ns]

    recv = subprocess.Popen(
        [
            *inside(receiver_ns),
            *BUFDEMO,
            "receive",
            "--listen",
            listen,
            "--recv-delay",
            "0.0002",
            "--out",
            str(tmp_path / "r"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=recv_env,
    )
    try:
        assert recv.stderr is not None
        line = ""
        while "now start:" not in line:
            line = recv.stderr.readline()
            assert line, "the receiver ended before listening"
        m = re.search(r"bufdemo send (--to \S+(?: --token [0-9a-f]{32})?)", line)
        assert m, line
        send = subprocess.run(
            [
                *inside(sender_ns),
                *BUFDEMO,
                "send",
                *m.group(1).split(),
                "-n",
                str(MESSAGES),
                "--out",
                str(tmp_path / "s"),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert send.returncode == 0, send.stderr
        _out, err = recv.communicate(timeout=120)
        assert recv.returncode == 0, err
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.communicate()
    (s_dir,) = (tmp_path / "s").iterdir()
    (r_dir,) = (tmp_path / "r").iterdir()
    return s_dir, r_dir


@pytest.fixture(scope="module")
def loopback_halves(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[str | None], tuple[Path, Path]]:
    """The by-hand halves on loopback for a clock shift, run once per shift: the tests
    that use them only read them (merge writes elsewhere)."""
    made: dict[str | None, tuple[Path, Path]] = {}

    def halves(shift: str | None) -> tuple[Path, Path]:
        if shift not in made:
            made[shift] = _halves(
                tmp_path_factory.mktemp("halves"), shift, "127.0.0.1:0", None, None
            )
        return made[shift]

    return halves


def test_the_clock_frames_go_before_the_data_and_answers_follow_it(
    loopback_halves: Callable[[str | None], tuple[Path, Path]],
) -> None:
    s_dir, _r_dir = loopback_halves(None)
    meta = json.loads((s_dir / "meta.json").read_text())
    clock = meta["sender"]["clock"]
    assert [c["seq"] for c in clock] == [*clocksync.BEFORE, *clocksync.AFTER]
    t_first_ns = int(analysis.load_run(s_dir).sends["t_ns"].iloc[0])
    assert all(c["t1"] < t_first_ns for c in clock if c["seq"] in clocksync.BEFORE)
    assert all(c["t1"] > t_first_ns for c in clock if c["seq"] in clocksync.AFTER)
    assert all(c["t1"] < c["t4"] for c in clock)


def test_a_plain_reader_gets_the_data_at_once_and_no_clock_is_recorded(tmp_path: Path) -> None:
    """A peer that never answers clock frames (nc, a plain reader) does not hold up the
    data: the first message goes at once, and the run completes without clocks."""
    listener = socket.create_server(("127.0.0.1", 0))
    got = [0]

    def read_all() -> None:
        conn, _ = listener.accept()
        with conn:
            while data := conn.recv(1 << 16):
                got[0] += len(data)

    reader = threading.Thread(target=read_all, daemon=True)
    reader.start()
    port = listener.getsockname()[1]
    send = subprocess.run(
        [*BUFDEMO, "send", "--to", f"127.0.0.1:{port}", "-n", "200", "--json",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    reader.join(30)
    listener.close()
    assert send.returncode == 0, send.stderr
    record = json.loads(send.stdout)
    assert record["complete"]
    assert record["messages"] == 200
    assert record["clock"] == []
    t_first_ns = int(analysis.load_run(Path(record["run_dir"])).sends["t_ns"].iloc[0])
    # Not after the wait for an answer that never comes: the data went first.
    assert t_first_ns - record["t_connected_ns"] < FIRST_ANSWER_WAIT * 1e9
    assert got[0] > 200 * 1024  # every message (and the hello and the clock frames) arrived


def _merge_and_check(
    tmp_path: Path,
    s_dir: Path,
    r_dir: Path,
    truth_s: float,
    capsys: pytest.CaptureFixture[str],
    *,
    plot: bool = True,
) -> None:
    assert main(["merge", str(s_dir), str(r_dir), "--out", str(tmp_path / "m")]) == 0
    assert "merged run directory" in capsys.readouterr().out
    (m_dir,) = (tmp_path / "m").iterdir()
    meta = json.loads((m_dir / "meta.json").read_text())
    clock = meta["clock"]
    assert abs(clock["offset_ns"] - truth_s * 1e9) <= clock["error_ns"], clock
    assert clock["error_ns"] > 0
    assert clock["drift_ppm"] is not None
    merged, sender, receiver = (analysis.load_run(d) for d in (m_dir, s_dir, r_dir))
    summary = analysis.summarize(merged)
    assert summary["messages_sent"] == len(sender.sends) == MESSAGES
    assert summary["messages_received"] == len(receiver.consumed) == MESSAGES
    assert summary["messages_intact"] == int(receiver.consumed["intact"].sum())
    assert summary["complete"] is True
    # On the sender's clock: each message read after its write began (within the error).
    # A message's stamp is taken when write() returns, which a preempted sender can do
    # after the receiver already read it; the write began after the previous stamp
    # (t_ns - duration_ns, the loop's start for the first message).
    write_began = (merged.sends["t_ns"] - merged.sends["duration_ns"]).to_numpy()
    read_at = merged.consumed["t_read_ns"].to_numpy()
    assert (read_at - write_began >= -clock["error_ns"]).all()
    if plot:
        assert main(["plot", str(m_dir)]) == 0
        assert (m_dir / "timeline.png").is_file()


@pytest.mark.parametrize("shift", [None, "2.5"])
def test_loopback_halves_merge_onto_the_senders_clock(
    loopback_halves: Callable[[str | None], tuple[Path, Path]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    shift: str | None,
) -> None:
    s_dir, r_dir = loopback_halves(shift)
    _merge_and_check(tmp_path, s_dir, r_dir, float(shift or 0), capsys)


@pytest.mark.parametrize("shift", [None, "2.5"])
def test_two_namespaces_as_two_hosts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], shift: str | None
) -> None:
    require_root("network namespaces")
    require_tool("ip", "iproute2")
    with netns.Link(netns.LinkSettings()) as link:
        p = link.plan
        s_dir, r_dir = _halves(tmp_path, shift, f"{p.receiver_addr}:0", p.sender_ns, p.receiver_ns)
    meta = json.loads((r_dir / "meta.json").read_text())
    assert meta["receiver"]["address"].startswith(p.receiver_addr)
    # Plotting a merged run (same tables, same format) is checked on the loopback halves.
    _merge_and_check(tmp_path, s_dir, r_dir, float(shift or 0), capsys, plot=False)


def test_merging_the_halves_the_wrong_way_round_is_a_usage_error(
    loopback_halves: Callable[[str | None], tuple[Path, Path]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    s_dir, r_dir = loopback_halves(None)
    capsys.readouterr()
    assert main(["merge", str(r_dir), str(s_dir)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("bufdemo: usage error: SENDER_RUN: has no sender record"), line


def test_an_answer_after_finish_gave_up_is_left_to_the_exchanges_after_the_data() -> None:
    """finish() gave up waiting (FIRST_ANSWER_WAIT passed without an answer): an answer
    that comes later is not taken by a sample; the bytes after that point belong to the
    exchanges after the data and the drain."""
    listener = socket.create_server(("127.0.0.1", 0))
    with listener, socket.create_connection(listener.getsockname()) as sock:
        conn, _ = listener.accept()
        with conn:
            clock: list[dict[str, int]] = []
            early = EarlyClockAnswers(sock, clock)
            sampler = Sampler(sock, 0.001, count=lambda: 0, gated=True, on_unread=early.poll)
            sampler.start()
            early.send_frames()
            assert not early.finish()  # the peer has not answered: given up
            late = encode_clock(ClockReading(clocksync.BEFORE[0], 1, 2, 3))
            conn.sendall(late)
            wait_for = time.monotonic() + 30
            while probes.queue_in(sock) != len(late) and time.monotonic() < wait_for:
                time.sleep(0.01)
            sampler.sample_if_due(time.perf_counter_ns())
            sampler.stop()
            assert clock == []
            assert probes.queue_in(sock) == len(late)  # still there for whoever reads next
