"""The witnesses: the kernel's trace (--trace), the wire (--capture), the blocking rule.

Pure parts first (the trace parser, the wire-event reader, the stale sweep), fuzzed with
hostile input; then real runs: SO_MEMINFO at every blocking send (any user), and, where
root, tracefs and tcpdump are present, a traced and captured run, two at once, and a run
killed with SIGKILL whose tracefs instance the next run removes.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bufdemo
from bufdemo import RunConfig, runformat
from bufdemo.experiment import tracing
from bufdemo.experiment.capture import PcapError, read_pcap, wire_events
from bufdemo.experiment.tracing import TRACEFS_ROOTS, parse_trace, parse_trace_line
from tests.conftest import missing, require_root, require_tool

# Real lines from this kernel's tracefs (tcp_probe at both ends, a reset, the header).
HEADER = "# entries-in-buffer/entries-written: 137/140   #P:2"
PROBE_SENDER = (
    "          python-9506    [000] ..s2.  3598.936925: tcp_probe: family=AF_INET "
    "src=127.0.0.1:39752 dest=127.0.0.1:36421 mark=0x0 data_len=0 snd_nxt=0xf94ef62a "
    "snd_una=0xf94ef62a snd_cwnd=14 ssthresh=10 snd_wnd=0 srtt=725 rcv_wnd=65536 "
    "sock_cookie=16 skbaddr=000000002d2a1f6f skaddr=00000000755b6c49"
)
PROBE_RECEIVER = (
    "          python-9506    [000] .....  3598.936974: tcp_probe: family=AF_INET "
    "src=127.0.0.1:36421 dest=127.0.0.1:39752 mark=0x0 data_len=6144 snd_nxt=0x3a2e5f12 "
    "snd_una=0x3a2e5f12 snd_cwnd=10 ssthresh=2147483647 snd_wnd=65536 srtt=24 "
    "rcv_wnd=71680 sock_cookie=15 skbaddr=000000002d2a1f6f skaddr=000000004839682e"
)
RESET = (
    "         python3-9890    [001] .....  3600.022799: tcp_send_reset: skbaddr=0000000000000000 "
    "skaddr=00000000ed7781de src=127.0.0.1:39752 dest=127.0.0.1:36421 state=TCP_CLOSE "
    "reason=TCP_STATE"
)
COOKIES = {0x16: "sender", 0x15: "receiver"}
PORTS = {39752: "sender", 36421: "receiver"}


# -- the trace parser ------------------------------------------------------------------


def test_a_trace_line_is_read_with_its_time_on_the_mono_clock() -> None:
    ev = parse_trace_line(PROBE_SENDER)
    assert ev is not None
    assert ev.t_ns == 3598_936925_000
    assert ev.event == "tcp_probe"
    assert ev.fields["snd_wnd"] == "0"
    assert ev.fields["sock_cookie"] == "16"  # printed in hex, without 0x


def test_the_parser_keeps_only_the_runs_cookies_and_assigns_sides() -> None:
    parsed = parse_trace([HEADER, PROBE_SENDER, PROBE_RECEIVER, RESET], {0x16: "sender"}, PORTS)
    assert [(r["side"], r["event"]) for r in parsed.rows] == [
        ("sender", "tcp_probe"),
        ("sender", "tcp_send_reset"),  # no cookie: kept by its source port
    ]
    assert parsed.foreign == 1  # the receiver's cookie was not given: another socket
    assert parsed.lost == 3  # 140 written, 137 in the buffer
    sender = parsed.rows[0]
    assert sender["snd_wnd"] == 0
    assert sender["snd_una"] == 0  # bytes since the socket's first event
    assert sender["cwnd"] == 14
    assert sender["srtt_us"] == 725


def test_sequence_numbers_are_unwrapped_across_2_to_the_32() -> None:
    def line(t: int, una: int, nxt: int) -> str:
        return PROBE_SENDER.replace("3598.936925", f"3598.{t:06d}").replace(
            "snd_nxt=0xf94ef62a snd_una=0xf94ef62a", f"snd_nxt={nxt:#x} snd_una={una:#x}"
        )

    top = (1 << 32) - 1000
    lines = [line(1, top, top + 500), line(2, top + 800, (top + 3000) % (1 << 32))]
    rows = parse_trace(lines, COOKIES).rows
    assert [(r["snd_una"], r["snd_nxt"]) for r in rows] == [(0, 500), (800, 3000)]


@given(st.lists(st.text(max_size=300), max_size=30))
@settings(max_examples=300, deadline=None)
def test_the_trace_parser_never_raises_on_garbage(lines: list[str]) -> None:
    parsed = parse_trace(lines, COOKIES, PORTS)
    assert parsed.unreadable + len(parsed.rows) + parsed.foreign <= len(lines)


@given(st.integers(0, len(PROBE_SENDER)), st.text(max_size=40))
@settings(max_examples=300, deadline=None)
def test_a_truncated_or_mangled_trace_line_is_a_gap_never_a_traceback(cut: int, junk: str) -> None:
    parsed = parse_trace([PROBE_SENDER[:cut] + junk, PROBE_RECEIVER], COOKIES, PORTS)
    assert parsed.rows[-1]["side"] == "receiver"  # the good line after it still counts


def test_a_newer_trace_format_is_counted_as_unreadable_with_an_example() -> None:
    parsed = parse_trace(["tcp_probe v2 {json: true}", PROBE_SENDER], COOKIES)
    assert parsed.unreadable == 1
    assert parsed.first_unreadable == "tcp_probe v2 {json: true}"
    assert len(parsed.rows) == 1


# -- the wire ----------------------------------------------------------------------------


def _tcp(
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    win: int,
    payload: bytes = b"",
    wscale: int | None = None,
    mss: int | None = None,
    timestamps: bool = False,
) -> bytes:
    import dpkt

    opts = b"" if wscale is None else bytes([3, 3, wscale, 1])  # window scale + NOP
    if mss is not None:
        opts += bytes([2, 4]) + mss.to_bytes(2, "big")
    if timestamps:
        opts += bytes([1, 1, 8, 10]) + bytes(8)  # NOP NOP TS(value, echo)
    tcp = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, win=win, opts=opts)
    tcp.off = (20 + len(opts)) // 4  # dpkt does not derive the header length
    tcp.data = payload
    ip = dpkt.ip.IP(src=b"\x7f\0\0\x01", dst=b"\x7f\0\0\x01", p=6, data=tcp)
    ip.len = len(ip)
    return bytes(ip)


def _conversation(sender: int = 40000, receiver: int = 5000) -> list[tuple[int, bytes]]:
    """SYN (wscale 7), SYN-ACK (wscale 7), data, zero window, probe, update, FIN, RST."""
    import dpkt

    SYN, ACK, FIN, RST = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_FIN, dpkt.tcp.TH_RST
    s_isn, r_isn = 1000, 9000
    pkts = [
        _tcp(sender, receiver, s_isn, 0, SYN, 65535, wscale=7),
        _tcp(receiver, sender, r_isn, s_isn + 1, SYN | ACK, 65535, wscale=7),
        _tcp(sender, receiver, s_isn + 1, r_isn + 1, ACK, 512, b"x" * 100),
        _tcp(receiver, sender, r_isn + 1, s_isn + 101, ACK, 0),  # zero window
        _tcp(sender, receiver, s_isn + 100, r_isn + 1, ACK, 512),  # probe: snd_una - 1
        _tcp(sender, receiver, s_isn + 1, r_isn + 1, ACK, 512, b"x" * 100),  # retransmission
        _tcp(receiver, sender, r_isn + 1, s_isn + 101, ACK, 4),  # update: 4 << 7 = 512 B
        _tcp(sender, receiver, s_isn + 101, r_isn + 1, FIN | ACK, 512),
        _tcp(receiver, sender, r_isn + 1, s_isn + 102, RST | ACK, 0),
    ]
    return [(1_000_000_000 * (i + 1), p) for i, p in enumerate(pkts)]


def test_the_wire_reader_finds_every_kind_of_event_with_scaled_windows() -> None:
    parsed = wire_events(_conversation(), None, 5000, offset_ns=500_000_000)
    events = [(r["direction"], r["event"]) for r in parsed.rows]
    assert events == [
        ("to_sender", "zero_window"),
        ("to_receiver", "zero_window_probe"),
        ("to_receiver", "retransmission"),
        ("to_sender", "window_update"),
        ("to_receiver", "fin"),
        ("to_sender", "rst"),
    ]
    update = parsed.rows[3]
    assert update["window"] == 4 << 7
    assert parsed.rows[0]["t_ns"] == 4_000_000_000 - 500_000_000  # moved onto the run's clock
    assert parsed.window_scale == {"to_receiver": 7, "to_sender": 7}
    assert parsed.saw_syn


def _filling_conversation() -> list[tuple[int, bytes]]:
    """MSS 1000 with timestamps (988 B a segment), a 3000 B window: three segments fill
    it, an ACK for one reopens room; packets cut to SNAPLEN as tcpdump keeps them."""
    import dpkt

    from bufdemo.experiment.capture import SNAPLEN

    SYN, ACK = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK
    s, r = 1000, 9000
    pkts = [
        _tcp(40000, 5000, s, 0, SYN, 65535, wscale=0, mss=1460, timestamps=True),
        _tcp(5000, 40000, r, s + 1, SYN | ACK, 65535, wscale=0, mss=1000, timestamps=True),
        _tcp(5000, 40000, r + 1, s + 1, ACK, 3000),
        _tcp(40000, 5000, s + 1, r + 1, ACK, 512, b"x" * 988),  # 2012 B left: room
        _tcp(40000, 5000, s + 989, r + 1, ACK, 512, b"x" * 988),  # 1024 B left: room
        _tcp(40000, 5000, s + 1977, r + 1, ACK, 512, b"x" * 988),  # 36 B left: full
        _tcp(5000, 40000, r + 1, s + 989, ACK, 3000),  # 1024 B left again: open
        _tcp(5000, 40000, r + 1, s + 2965, ACK, 0),  # zero (full ends there too)
        _tcp(5000, 40000, r + 1, s + 2965, ACK, 500),  # update, but less than one MSS
    ]
    return [(1000 * (i + 1), p[:SNAPLEN]) for i, p in enumerate(pkts)]


def test_the_wire_reader_marks_the_window_full_when_less_than_one_segment_is_left() -> None:
    parsed = wire_events(_filling_conversation(), None, 5000)
    assert parsed.mss == 988
    events = [(r["direction"], r["event"], r["t_ns"]) for r in parsed.rows]
    assert events == [
        ("to_receiver", "window_full", 6000),
        ("to_sender", "window_open", 7000),
        ("to_sender", "zero_window", 8000),
        ("to_sender", "window_update", 9000),
        ("to_sender", "window_full", 9000),
    ]
    assert parsed.rows[0]["len"] == 988  # from the IP header: the capture kept 128 bytes


def test_without_an_mss_option_the_wire_reader_never_guesses_a_full_window() -> None:
    records = [rec for i, rec in enumerate(_filling_conversation()) if i != 1]  # no SYN-ACK
    parsed = wire_events(records, None, 5000)
    assert parsed.mss is None
    assert not {r["event"] for r in parsed.rows} & {"window_full", "window_open"}


def test_the_trace_calls_the_window_blocked_when_closed_or_less_than_one_mss_is_left() -> None:
    from bufdemo.analysis.witness import trace_blocked

    sp = pd.DataFrame(
        {
            "snd_una": [0, 0, 1000, 1000, 5000],
            "snd_nxt": [0, 2500, 3000, 1000, 5000],
            "snd_wnd": [3000, 3000, 3000, 0, 900],
        }
    )
    assert trace_blocked(sp, 1000.0).tolist() == [False, True, False, True, True]
    assert trace_blocked(sp, None).tolist() == [False, False, False, True, False]


def test_the_wire_blocked_episodes_join_zero_and_full_windows() -> None:
    from bufdemo.analysis.witness import wire_blocked_episodes

    wev = pd.DataFrame(
        {
            "t": [1.0, 2.0, 2.0, 3.0, 4.0, 5.0],
            "event": [
                "zero_window",
                "window_update",
                "window_full",
                "window_open",
                "retransmission",
                "window_full",
            ],
        }
    )
    assert wire_blocked_episodes(wev) == [(1.0, 2.0), (2.0, 3.0), (5.0, float("inf"))]


def test_a_capture_of_another_connection_yields_no_events() -> None:
    parsed = wire_events(_conversation(41000, 6000), None, 5000)
    assert parsed.rows == []
    assert parsed.packets == 0
    assert parsed.foreign == 9


@given(st.lists(st.binary(max_size=80), max_size=20))
@settings(max_examples=300, deadline=None)
def test_the_wire_reader_never_raises_on_garbage_packets(packets: list[bytes]) -> None:
    records = [(i, p) for i, p in enumerate(packets)]
    parsed = wire_events(records, None, 5000)
    assert parsed.undecodable + parsed.packets + parsed.foreign == len(packets)


def _pcap(records: list[tuple[int, bytes]]) -> bytes:
    """A classic pcap (microseconds), linktype RAW (101 -> dpkt reports it as given)."""
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 228)  # 228: DLT_IPV4
    for t_ns, data in records:
        sec, usec = divmod(t_ns // 1000, 1_000_000)
        out += struct.pack("<IIII", sec, usec, len(data), len(data)) + data
    return out


@given(st.integers(0, 2000), st.binary(max_size=64))
@settings(max_examples=200, deadline=None)
def test_a_truncated_or_garbage_pcap_is_a_clear_error_or_a_shorter_record(
    tmp_path_factory: pytest.TempPathFactory, cut: int, junk: bytes
) -> None:
    path = tmp_path_factory.mktemp("pcap") / "capture.pcap"
    path.write_bytes(_pcap(_conversation())[:cut] + junk)
    records: list[tuple[int, bytes]] = []
    try:
        records = list(read_pcap(path))
    except PcapError as exc:
        error = str(exc)
        assert error.startswith("capture.pcap: ")
    wire_events(records, None, 5000)  # what was read is read without a traceback


def test_a_pcapng_file_a_newer_format_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "capture.pcap"
    path.write_bytes(bytes.fromhex("0a0d0d0a") + b"\x1c\0\0\0" + b"\x4d\x3c\x2b\x1a" + b"\0" * 20)
    with pytest.raises(PcapError, match="not a pcap file"):
        list(read_pcap(path))


def test_the_pcap_reader_reads_back_what_it_is_given(tmp_path: Path) -> None:
    path = tmp_path / "capture.pcap"
    path.write_bytes(_pcap(_conversation()))
    parsed = wire_events(read_pcap(path), None, 5000)
    assert len(parsed.rows) == 6


# -- stale instances ---------------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no such process now (pids are not reused this fast)


def test_the_sweep_removes_only_dead_owners_instances(tmp_path: Path) -> None:
    instances = tmp_path / "instances"
    dead = instances / f"bufdemo-{_dead_pid()}-abcd1234"
    alive = instances / f"bufdemo-{os.getpid()}-abcd1234"
    other = instances / "someone-else"
    for d in (dead, alive, other):
        d.mkdir(parents=True)
    assert tracing.sweep_instances(tmp_path) == [dead.name]
    assert not dead.exists()
    assert alive.exists()
    assert other.exists()


# -- the blocking rule, on a real run ----------------------------------------------------


@pytest.mark.slow
def test_every_blocking_send_follows_the_kernels_rule(tmp_path: Path) -> None:
    """Acceptance 2: at its start wmem_queued >= sndbuf; at its end the free space is at
    least half of wmem_queued (the wake-up rule, sk_stream_write_space).

    The headline set-up: a slow receiver (its window is closed when a send blocks, so no
    ACK frees send-buffer memory between the failed attempt and the probe after it) and
    the autotuned send buffer (~4 MB: one loopback segment, up to 64 KiB of truesize, is
    a small step of it). With a forced small SO_SNDBUF both break down: a 64 KiB segment
    is half the buffer, and a send whose rest fits after one ACK never sleeps, so the end
    probe reads the queue above the wake-up line (measured: see docs/run-format.md)."""
    cfg = RunConfig(messages=6000, recv_delay=0.001, out=tmp_path, plot=False)
    result = bufdemo.run_experiment(cfg)
    assert result.complete, result.reason
    b = pd.read_csv(result.run_dir / runformat.BLOCKING_SENDS.file)
    assert len(b) >= 1
    assert b["wmem_queued_start"].notna().all()
    assert (b["wmem_queued_start"] >= b["sk_sndbuf_start"]).all()
    free = b["sk_sndbuf_end"] - b["wmem_queued_end"]
    at_the_line = free >= b["wmem_queued_end"] / 2
    # The kernel's other way out of the wait: autotuning grew SO_SNDBUF during it (the
    # first stall, while it grows from 3,939,840 to 4,194,304 here), so the queue fits
    # under the larger buffer without draining to the line. Seen once in 7 CI runs.
    grown = b["sk_sndbuf_end"] > b["sk_sndbuf_start"]
    grown &= b["wmem_queued_end"] < b["sk_sndbuf_end"]
    assert (at_the_line | grown).all()
    assert at_the_line.any()  # once the buffer stops growing, every wake is at the line
    s = pd.read_csv(result.run_dir / runformat.SENDER_SAMPLES.file)
    assert s["wmem_queued"].max() >= s["sk_sndbuf"].min()  # the samples see the limit reached


# -- real witnesses (root, tracefs, tcpdump) ---------------------------------------------


def _need_witnesses() -> None:
    require_root("tracefs and packet capture")
    require_tool("tcpdump", "tcpdump")
    try:
        from bufdemo.experiment.tracing import find_tracefs

        find_tracefs()
    except Exception as exc:  # TracingUnavailable: say why
        missing(str(exc))


def _bufdemo(out: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "bufdemo", "run", "--no-plot", "--out", str(out), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _only_run(out: Path) -> Path:
    (run,) = out.iterdir()
    return run


def _check_own_cookies(run: Path) -> None:
    meta = json.loads((run / "meta.json").read_text())
    own = {meta["sender"]["cookie"], meta["receiver"]["cookie"]}
    events = pd.read_csv(run / runformat.KERNEL_EVENTS.file)
    assert len(events) > 0
    assert set(events.loc[events["sock_cookie"] >= 0, "sock_cookie"]) <= own
    assert set(events["side"]) <= {"sender", "receiver"}


@pytest.mark.slow
def test_a_traced_and_captured_run_sees_the_closed_window_at_every_stall(
    tmp_path: Path,
) -> None:
    _need_witnesses()
    # Autotuned buffers: the receiver limits the sender (a forced small SO_SNDBUF makes
    # stalls with room in the window, which the cross-check reports as such: next test).
    cfg = RunConfig(
        messages=6000, recv_delay=0.001, out=tmp_path, plot=False, trace=True, capture=True
    )
    result = bufdemo.run_experiment(cfg)
    assert result.complete, result.reason
    assert result.notes == ()
    run = bufdemo.analysis.load_run(result.run_dir)
    from bufdemo.analysis.witness import cross_check

    cc = cross_check(run)
    assert cc.stalls >= 1
    # Closed, or full (less than one MSS left): the receiver's window stopped the sender.
    stall_list = bufdemo.analysis.stalls(run)[["start", "end", "outq_start"]].to_string()
    assert cc.both_closed == cc.stalls, f"{cc}\n{stall_list}"
    # tcp_probe fires before the segment is processed: the sender's event at each window
    # update still shows the closed window (analysis.witness places it one event back).
    from bufdemo.analysis.witness import _sender_probe, kernel_events, wire_events

    kev, wev = kernel_events(run), wire_events(run)
    assert kev is not None
    assert wev is not None
    sp = _sender_probe(kev)
    t = sp["t"].to_numpy()
    details = run.meta["witnesses"]["capture"]["details"]
    tol = max(50e-6, 2 * details["clock_offset_uncertainty_ns"] / 1e9)  # the two clocks
    at_update = []  # snd_wnd of the sender's event that is the update's arrival
    for tu in wev.loc[wev["event"] == "window_update", "t"]:
        near = np.flatnonzero(abs(t - tu) < tol)
        if len(near) == 1:  # that ACK, unambiguously (the drain's updates have no event)
            at_update.append(int(sp["snd_wnd"].iloc[near[0]]))
    assert at_update
    assert set(at_update) == {0}, at_update
    _check_own_cookies(result.run_dir)
    wire = pd.read_csv(result.run_dir / runformat.WIRE_EVENTS.file)
    assert (wire["event"] == "zero_window").any()
    assert (result.run_dir / runformat.CAPTURE_FILE).stat().st_size > 0


@pytest.mark.slow
def test_a_stall_with_room_in_the_window_is_not_called_the_receivers(tmp_path: Path) -> None:
    """A send buffer far smaller than the receive window: the sender blocks with room
    left in the window, and neither witness may call the window closed or full."""
    _need_witnesses()
    cfg = RunConfig(
        messages=1500,
        recv_delay=0.0002,
        sndbuf=16384,
        rcvbuf=4194304,  # a window of MBs: 1.5 MB never fills it
        out=tmp_path,
        plot=False,
        trace=True,
        capture=True,
    )
    result = bufdemo.run_experiment(cfg)
    assert result.complete, result.reason
    from bufdemo.analysis.witness import cross_check, report_lines

    cc = cross_check(bufdemo.analysis.load_run(result.run_dir))
    assert cc.stalls >= 1
    assert (cc.trace_closed, cc.wire_closed) == (0, 0), cc
    assert any("stalls with room in the window" in line for line in report_lines(cc))


@pytest.mark.slow
def test_two_traced_runs_at_once_each_keep_only_their_own_sockets(tmp_path: Path) -> None:
    """Acceptance 4."""
    _need_witnesses()
    args = ("--messages", "2000", "--recv-delay", "0.0005", "--sndbuf", "65536")
    outs = [tmp_path / "a", tmp_path / "b"]
    procs = [_bufdemo(out, *args, "--trace", "--capture") for out in outs]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()
    cookies = []
    for out in outs:
        run = _only_run(out)
        _check_own_cookies(run)
        meta = json.loads((run / "meta.json").read_text())
        cookies.append({meta["sender"]["cookie"], meta["receiver"]["cookie"]})
    assert not cookies[0] & cookies[1]


@pytest.mark.slow
def test_a_killed_traced_run_leaves_an_instance_the_next_run_removes(tmp_path: Path) -> None:
    """Acceptance 5: SIGKILL leaves the tracefs instance (and no tcpdump); the next
    --trace run removes it and says so in its meta.json."""
    _need_witnesses()
    victim = _bufdemo(tmp_path / "killed", "--messages", "1000000", "--trace", "--capture")
    prefix = f"bufdemo-{victim.pid}-"
    roots = [r / "instances" for r in TRACEFS_ROOTS if (r / "instances").is_dir()]
    deadline = time.monotonic() + 120
    left: list[Path] = []
    while time.monotonic() < deadline and not left:
        left = [p for r in roots for p in r.iterdir() if p.name.startswith(prefix)]
        time.sleep(0.1)
    assert left, "the run never created its tracefs instance"
    while time.monotonic() < deadline and not _tcpdumps_writing_under(tmp_path / "killed"):
        time.sleep(0.1)
    assert _tcpdumps_writing_under(tmp_path / "killed"), "the run never started tcpdump"
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    assert left[0].exists()  # SIGKILL: nobody removed it
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _tcpdumps_writing_under(tmp_path / "killed"):
        time.sleep(0.1)
    assert not _tcpdumps_writing_under(
        tmp_path / "killed"
    )  # PR_SET_PDEATHSIG: tcpdump went with its parent
    nxt = _bufdemo(tmp_path / "next", "--messages", "200", "--recv-delay", "0", "--trace")
    _, err = nxt.communicate(timeout=300)
    assert nxt.returncode == 0, err.decode()
    assert not left[0].exists()
    meta = json.loads((_only_run(tmp_path / "next") / "meta.json").read_text())
    assert left[0].name in meta["witnesses"]["trace"]["details"]["stale_instances_removed"]


def _tcpdumps_writing_under(directory: Path) -> list[int]:
    """tcpdump processes writing a capture under ``directory`` (an orphan keeps running)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if comm == "tcpdump" and str(directory) in cmdline:
            found.append(int(entry.name))
    return found


# -- a witness that cannot run -----------------------------------------------------------


@pytest.mark.slow
def test_without_tcpdump_the_run_goes_on_and_says_why_in_one_line(tmp_path: Path) -> None:
    """Acceptance 3 (no tcpdump): a PATH without tcpdump, as on a machine without it."""
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "bufdemo", "run", "--messages", "300", "--recv-delay", "0"),
            *("--capture", "--no-plot", "--out", str(tmp_path)),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    line = "--capture skipped: tcpdump is not installed (apt-get install tcpdump)"
    assert proc.stderr.count(line) == 1
    meta = json.loads((_only_run(tmp_path) / "meta.json").read_text())
    capture = meta["witnesses"]["capture"]
    assert capture["active"] is False
    assert capture["reason"] == line
    assert meta["outcome"]["complete"] is True
    assert not (_only_run(tmp_path) / runformat.CAPTURE_FILE).exists()


def test_without_tracefs_tracing_is_refused_in_one_line(tmp_path: Path) -> None:
    """Acceptance 3 (no tracefs): a root without ``instances`` is not a tracefs."""
    from bufdemo.experiment.tracing import TraceSession, TracingUnavailable

    with pytest.raises(TracingUnavailable, match=r"^--trace skipped: cannot create") as info:
        TraceSession(5000, root=tmp_path).start()
    assert "\n" not in str(info.value)


# -- the options ---------------------------------------------------------------------------


@pytest.mark.parametrize("setting", ["trace", "capture"])
def test_a_witness_setting_must_be_a_boolean(setting: str) -> None:
    from bufdemo.errors import ConfigError

    with pytest.raises(ConfigError, match="must be true or false") as info:
        RunConfig(**{setting: "yes"})  # type: ignore[arg-type]
    assert info.value.setting == setting


@pytest.mark.parametrize("flag", ["--trace=yes", "--capture=1"])
def test_a_witness_flag_takes_no_value_usage_error_exit_2(
    flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from bufdemo.cli import main

    assert main(["run", flag]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert flag.split("=")[0] in err


def test_cleanup_says_what_it_removed_or_that_there_was_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from bufdemo.cli import main

    assert main(["cleanup"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(("removed tracefs instance bufdemo-", "nothing to clean up"))


def test_a_tcpdump_that_cannot_capture_is_one_line_with_its_own_reason(tmp_path: Path) -> None:
    """tcpdump refusing (here: no such interface; for a user: no permission) is a skip."""
    require_tool("tcpdump", "tcpdump")
    from bufdemo.experiment.capture import Capture, CaptureUnavailable

    cap = Capture(5000, tmp_path / "capture.pcap", interface="bufdemo-none0")
    with pytest.raises(CaptureUnavailable, match=r"^--capture skipped: tcpdump: ") as info:
        cap.start()
    assert "\n" not in str(info.value)
    assert cap.proc is None  # stopped: nothing left running


def _fake_tcpdump(tmp_path: Path, body: str) -> dict[str, str]:
    """A ``tcpdump`` on PATH that runs ``body`` (sh): no root, no tcpdump needed, and
    one that never says it listens holds bufdemo's wait open. Returns the environment
    that finds it first."""
    fake = tmp_path / "bin" / "tcpdump"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\n{body}\n")
    fake.chmod(0o755)
    return {**os.environ, "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}"}


# Run first in each script below: the pids of the processes it starts, printed at its end.
_RECORD_PIDS = """
import subprocess
started = []
class _Recorded(subprocess.Popen):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        started.append(self.pid)
subprocess.Popen = _Recorded
"""


def _run_script(tmp_path: Path, text: str, env: dict[str, str], *args: str) -> str:
    """Run ``text`` as a script (its arguments: where the capture goes, then ``args``);
    what it printed, less its last line: the pids it started, each of which must be
    gone (ended and reaped)."""
    script = tmp_path / "script.py"
    script.write_text(_RECORD_PIDS + text + "\nprint(*started)\n")
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "capture.pcap"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.stderr == "", done.stderr
    *printed, pids = done.stdout.strip().splitlines()
    assert pids.split(), "no process was started"
    for pid in map(int, pids.split()):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # not left running, nor a zombie
    return "\n".join(printed)


_STOP_AS_TCPDUMP_STARTS = """
import os, signal, sys, time
from pathlib import Path
from bufdemo.experiment.capture import Capture
from bufdemo.signals import StopSignals

stops = StopSignals().install()

def after_in_parent():  # as logging's lock release: Python code run right after fork()
    os.kill(os.getpid(), signal.SIGINT)
    deadline = time.monotonic() + 1.0
    while stops.count == 0 and time.monotonic() < deadline:
        pass  # handled here, inside the handler, where Python ignores what it raises

os.register_at_fork(after_in_parent=after_in_parent)
cap = Capture(5999, Path(sys.argv[1]))
try:
    cap.start()
    print("not stopped", flush=True)
    cap.stop()
except KeyboardInterrupt:
    print("stopped", cap.proc is None, flush=True)
"""


def test_a_stop_as_tcpdump_starts_stops_the_capture_and_leaves_no_tcpdump(
    tmp_path: Path,
) -> None:
    """tcpdump starts with a preexec_fn, so Python's at-fork handlers run in bufdemo's
    process as it starts: a stop handled inside one, where Python ignores what a handler
    raises, is raised as the start returns (signals.stops_deferred), and the tcpdump just
    started is stopped and reaped at once, not left to run until the process ends."""
    env = _fake_tcpdump(tmp_path, "exec sleep 60")
    assert _run_script(tmp_path, _STOP_AS_TCPDUMP_STARTS, env) == "stopped True"


_STOP_BEFORE_TCPDUMP_LISTENS = """
import signal, sys, threading, time
from pathlib import Path
from bufdemo.experiment import capture
from bufdemo.signals import StopSignals

StopSignals().install()
capture.READY_TIMEOUT, capture.STOP_TIMEOUT = float(sys.argv[2]), 3.0
cap = capture.Capture(5999, Path(sys.argv[1]))

def stop_in(seconds):  # seconds after bufdemo begins to wait for tcpdump to listen
    while cap.reader is None or not cap.reader.is_alive():
        time.sleep(0.01)
    time.sleep(seconds)
    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

threading.Thread(target=stop_in, args=(float(sys.argv[3]),), daemon=True).start()
try:
    cap.start()
    print("not stopped", flush=True)
except KeyboardInterrupt:
    print("stopped", cap.proc is None, flush=True)
"""


@pytest.mark.parametrize(
    ("ready_timeout", "stop_after", "body"),
    [
        (30.0, 0.5, "exec sleep 60"),  # while bufdemo waits for tcpdump to listen
        # tcpdump never listens, and ignores SIGINT: the stop comes while bufdemo waits
        # for it to end (stop() inside start()); the second stop() kills it
        (0.5, 2.0, "trap '' INT\nexec sleep 60"),
    ],
    ids=["waiting to listen", "waiting for it to end"],
)
def test_a_stop_while_tcpdump_starts_stops_it(
    tmp_path: Path, ready_timeout: float, stop_after: float, body: str
) -> None:
    """Ctrl-C while `bufdemo run --capture` starts tcpdump: the tcpdump started is
    stopped and reaped as the stop unwinds, not left to the end of the process, also
    when the stop cuts short the wait for a tcpdump being stopped (``Capture.stop``
    forgets it only once it has ended)."""
    env = _fake_tcpdump(tmp_path, body)
    out = _run_script(
        tmp_path, _STOP_BEFORE_TCPDUMP_LISTENS, env, str(ready_timeout), str(stop_after)
    )
    assert out == "stopped True"


@pytest.mark.slow
def test_without_root_the_run_goes_on_and_says_why_for_each_witness() -> None:
    """Acceptance 3 (not root): the same command as an unprivileged user (nobody)."""
    import shutil
    import tempfile

    require_root("running a command as another user (runuser)")
    runuser = require_tool("runuser", "util-linux")
    as_nobody = [runuser, "-u", "nobody", "--", sys.executable]
    probe = subprocess.run([*as_nobody, "-c", "import bufdemo"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"user nobody cannot run {sys.executable} with bufdemo (a private install)")
    out = Path(tempfile.mkdtemp(prefix="bufdemo-nobody-"))
    try:
        out.chmod(0o777)
        proc = subprocess.run(
            [
                *(*as_nobody, "-m", "bufdemo", "run", "--messages", "300", "--recv-delay", "0"),
                *("--trace", "--capture", "--no-plot", "--out", str(out / "runs")),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            env={**os.environ, "MPLCONFIGDIR": str(out / "mpl"), "HOME": str(out)},
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr.count("--trace skipped: tracefs needs root") == 1
        assert proc.stderr.count("--capture skipped: tcpdump") <= 1
        meta = json.loads((_only_run(out / "runs") / "meta.json").read_text())
        assert meta["witnesses"]["trace"]["active"] is False
        assert meta["outcome"]["complete"] is True
    finally:
        shutil.rmtree(out, ignore_errors=True)
