"""`--capture`: the wire. tcpdump records the run's connection; dpkt reads it back.

The mechanism. Once the receiver listens (its port known) and before the sender
connects, ``tcpdump -i lo -s 128 -U -w capture.pcap 'tcp port P'`` starts; the run
waits for its "listening on" line, so the SYN is on the record (the SYN carries the
window scale every later window is multiplied by). At the end it is stopped with SIGINT
(tcpdump flushes and closes the file), on every exit path. Headers only (128 bytes a
packet): the payload is the run's own test pattern, and a 20,000-message run stays a
few MB.

The pcap's times are CLOCK_REALTIME; the run's clock is CLOCK_MONOTONIC. The offset
between them is measured at the run (:func:`clock_offset`: the tightest of a few
back-to-back readings), and its uncertainty (half the bracket) is stored in meta.json.

Reading uses dpkt (PyPI ``dpkt``): a maintained, pure-Python pcap and TCP/IP decoder,
so no hand-written parser and no compiled dependency. :func:`wire_events` is sans-IO
over (time, IP bytes) records and never raises on a packet it cannot decode: it counts
it. The events, per direction:

- ``zero_window``: the receiver advertises a window of 0;
- ``window_update``: its first non-zero window after a zero one;
- ``window_full``: the sender's data reached the receiver's window: less than one MSS of
  it is left (``ack + window - highest byte sent < MSS``), so the next full-sized segment
  may not go (what the kernel counts as rwnd-limited); ``window_open``: the first ACK
  after that leaves room for one again. Needs the MSS, from the SYN-ACK's MSS option
  (less the 12-byte timestamp option when both SYNs carry it); without it, none;
- ``zero_window_probe``: the sender, facing a zero window, sends a segment of at most
  one byte at ``snd_una - 1`` (Linux's probe) or at the window's edge;
- ``retransmission``: a data segment that ends at or before what was already sent;
- ``fin`` / ``rst``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from struct import error as struct_error  # dpkt raises it on short headers
from typing import Any

from bufdemo.signals import stops_deferred

__all__ = [
    "SNAPLEN",
    "Capture",
    "CaptureUnavailable",
    "WireParse",
    "clock_offset",
    "read_pcap",
    "wire_events",
]

SNAPLEN = 128  # bytes kept per packet: IPv4/IPv6 + TCP headers with options fit
READY_TIMEOUT = 10.0  # tcpdump's start: opening the interface, compiling the filter
STOP_TIMEOUT = 5.0  # after SIGINT, tcpdump flushes and exits well within this

_SEQ = 1 << 32


class CaptureUnavailable(Exception):
    """Capture cannot be done here; the message is the one line meta.json and the CLI show."""


def clock_offset(tries: int = 20) -> tuple[int, int]:
    """(CLOCK_REALTIME - CLOCK_MONOTONIC, uncertainty), nanoseconds: the tightest bracket."""
    best: tuple[int, int] | None = None
    for _ in range(tries):
        a = time.perf_counter_ns()
        r = time.time_ns()
        b = time.perf_counter_ns()
        half = (b - a) // 2
        if best is None or half < best[1]:
            best = (r - (a + half), max(half, 1))
    assert best is not None
    return best


@dataclass
class Capture:
    """tcpdump on the run's port: :meth:`start` (waits until it captures), :meth:`stop`."""

    port: int
    path: Path
    interface: str = "lo"
    proc: subprocess.Popen[bytes] | None = None
    stderr_tail: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    def start(self) -> None:
        exe = shutil.which("tcpdump")
        if exe is None:
            raise CaptureUnavailable(
                "--capture skipped: tcpdump is not installed (apt-get install tcpdump)"
            )
        argv = [
            exe,
            "-i",
            self.interface,
            "-s",
            str(SNAPLEN),
            "-U",  # write each packet as it comes: a killed run keeps its capture
            "-n",
            "--time-stamp-precision=nano",
            "-w",
            str(self.path),
            f"tcp port {self.port}",
        ]
        if os.geteuid() == 0:
            argv[1:1] = ["-Z", "root"]  # keep the file ours (no privilege drop to tcpdump)
        try:
            # A preexec_fn runs Python's at-fork handlers in this process: a stop is
            # raised as the block ends (signals.stops_deferred), tcpdump's process known.
            with stops_deferred():
                self.proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    preexec_fn=_stop_with_parent,
                )
        except OSError as exc:
            raise CaptureUnavailable(f"--capture skipped: cannot start tcpdump: {exc}") from exc
        except BaseException:
            self.stop()  # stopped as tcpdump started: it ends here, not with the run
            raise
        try:
            self._until_listening(self.proc)
        except BaseException:
            self.stop()
            raise

    def _until_listening(self, proc: subprocess.Popen[bytes]) -> None:
        """Wait until tcpdump says it is listening; stop it and raise CaptureUnavailable
        if it ends or stays silent."""
        assert proc.stderr is not None
        ready = threading.Event()  # set at "listening on", or when tcpdump's stderr ends
        listening = threading.Event()  # set at "listening on" only
        stderr = proc.stderr

        def read_stderr() -> None:
            for raw in stderr:
                line = raw.decode(errors="replace").strip()
                self.stderr_tail = [*self.stderr_tail[-4:], line]
                if "listening on" in line:
                    listening.set()
                    ready.set()
            ready.set()  # EOF: tcpdump ended

        reader = threading.Thread(target=read_stderr, name="bufdemo-tcpdump", daemon=True)
        with stops_deferred():  # stop() joins it: known only once started
            reader.start()
            self.reader = reader
        ready.wait(READY_TIMEOUT)
        if not listening.is_set() or proc.poll() is not None:
            self.stop()  # first: the reader then has all tcpdump said
            # tcpdump's own error line ("tcpdump: lo: You don't have permission ..."),
            # not the detail it prints after it.
            said = [line for line in self.stderr_tail if line.startswith("tcpdump:")]
            why = (said or self.stderr_tail or ["tcpdump: did not start"])[0]
            if not why.startswith("tcpdump:"):
                why = f"tcpdump: {why}"
            raise CaptureUnavailable(f"--capture skipped: {why}")

    def stop(self) -> None:
        """SIGINT (tcpdump flushes and closes the file), then insist; idempotent."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.reader is not None:
            # tcpdump's exit closed the pipe: the reader is at EOF, or nearly
            self.reader.join(STOP_TIMEOUT)
        if proc.stderr is not None:
            proc.stderr.close()
        self.proc = None  # last: stopped part-way, a second call does it all again


def _stop_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """In tcpdump's process before exec: SIGINT it when the run's process dies, even by
    SIGKILL (prctl PR_SET_PDEATHSIG), so a killed run leaves no tcpdump behind."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGINT, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG


# -- reading (sans-IO below read_pcap) -----------------------------------------------


class PcapError(Exception):
    """The file is not a pcap this reader knows (one line)."""


def read_pcap(path: Path) -> Iterator[tuple[int, bytes]]:
    """(realtime ns, IP packet bytes) per record; raises PcapError if not a pcap.

    A file cut short ends the iteration where it is cut (dpkt stops at a partial record).
    """
    import dpkt

    with path.open("rb") as f:
        try:
            reader = dpkt.pcap.Reader(f)
        except (ValueError, dpkt.dpkt.Error, EOFError) as exc:
            raise PcapError(f"{path.name}: not a pcap file this reader knows ({exc})") from exc
        linktype = reader.datalink()
        try:
            for ts, buf in reader:
                yield round(float(ts) * 1e9), _ip_bytes(linktype, buf)
        except (ValueError, dpkt.dpkt.Error, EOFError) as exc:
            raise PcapError(f"{path.name}: corrupt record: {exc}") from exc


def _ip_bytes(linktype: int, buf: bytes) -> bytes:
    # DLT_EN10MB (loopback on Linux is Ethernet-framed), DLT_NULL/LOOP, DLT_RAW.
    if linktype == 1:
        return buf[14:]
    if linktype in (0, 108):
        return buf[4:]
    if linktype == 113:  # Linux cooked (SLL)
        return buf[16:]
    if linktype == 276:  # SLL2
        return buf[20:]
    return buf


@dataclass
class WireParse:
    """What :func:`wire_events` found."""

    rows: list[dict[str, object]] = field(default_factory=list)
    packets: int = 0  # TCP packets of the run's connection
    undecodable: int = 0  # records that are not an IP/TCP packet dpkt could read
    foreign: int = 0  # TCP packets of another connection
    window_scale: dict[str, int | None] = field(default_factory=dict)
    saw_syn: bool = False
    mss: int | None = None  # the sender's segment size, from the SYNs (window_full needs it)


def wire_events(
    records: Iterable[tuple[int, bytes]],
    sender_port: int | None,
    receiver_port: int,
    offset_ns: int = 0,
) -> WireParse:
    """wire_events rows from (realtime ns, IP bytes) records of the run's connection.

    ``sender_port`` None: any client of ``receiver_port`` (the first one seen). Times
    become the run's clock: ``t - offset_ns``. Never raises on a bad packet.
    """
    import dpkt

    out = WireParse()
    scale = {"to_receiver": 0, "to_sender": 0}  # shift each side applies to its windows
    isn: dict[str, int] = {}
    highest: dict[str, int] = {}  # per direction: highest relative seq end sent
    zero = False  # the receiver's last advertised window was 0
    full = False  # less than one MSS of the receiver's open window was left
    last_ack_to_sender: int | None = None  # relative to the sender's ISN
    last_window = 0  # the receiver's last advertised window, scaled
    mss_option: int | None = None  # the receiver's MSS option (SYN-ACK)
    timestamps: dict[str, bool] = {}  # per direction: the SYN carried the timestamp option
    for t_real, raw in records:
        try:
            ip: dpkt.ip.IP | dpkt.ip6.IP6
            version = raw[0] >> 4 if raw else 0
            ip = dpkt.ip6.IP6(raw) if version == 6 else dpkt.ip.IP(raw)
            tcp = ip.data
            if not isinstance(tcp, dpkt.tcp.TCP):
                raise ValueError("not TCP")
        except (dpkt.dpkt.Error, ValueError, IndexError, struct_error):
            out.undecodable += 1
            continue
        if tcp.dport == receiver_port and sender_port in (None, tcp.sport):
            sender_port = tcp.sport
            direction = "to_receiver"
        elif tcp.sport == receiver_port and tcp.dport == sender_port:
            direction = "to_sender"
        else:
            out.foreign += 1
            continue
        out.packets += 1
        flags = tcp.flags
        if flags & dpkt.tcp.TH_SYN:
            out.saw_syn = True
            isn[direction] = tcp.seq
            ws = None
            timestamps[direction] = False
            try:
                for kind, data in dpkt.tcp.parse_opts(tcp.opts):
                    if kind == dpkt.tcp.TCP_OPT_WSCALE and data:
                        ws = min(data[0], 14)
                    elif (
                        kind == dpkt.tcp.TCP_OPT_MSS and len(data) == 2 and direction == "to_sender"
                    ):
                        mss_option = int.from_bytes(data, "big")
                    elif kind == dpkt.tcp.TCP_OPT_TIMESTAMP:
                        timestamps[direction] = True
            except (dpkt.dpkt.Error, ValueError, IndexError, TypeError):
                ws = None
            out.window_scale[direction] = ws
            scale[direction] = ws or 0
            if mss_option and direction == "to_sender":
                both_ts = timestamps.get("to_receiver", False) and timestamps[direction]
                out.mss = mss_option - (12 if both_ts else 0)
        base = isn.setdefault(direction, tcp.seq)
        other = "to_sender" if direction == "to_receiver" else "to_receiver"
        seq = (tcp.seq - base) % _SEQ
        length = _payload_length(ip, tcp)
        syn = bool(flags & dpkt.tcp.TH_SYN)
        window = tcp.win if syn else tcp.win << scale[direction]
        ack = (tcp.ack - isn[other]) % _SEQ if other in isn and flags & dpkt.tcp.TH_ACK else None
        t_ns = t_real - offset_ns

        row = {
            "t_ns": t_ns,
            "direction": direction,
            "seq": seq,
            "ack": ack,
            "window": window,
            "len": length,
        }

        def emit(event: str, row: dict[str, object] = row) -> None:
            out.rows.append({**row, "event": event})

        if flags & dpkt.tcp.TH_RST:
            emit("rst")
        if flags & dpkt.tcp.TH_FIN:
            emit("fin")
        if direction == "to_sender" and not syn and flags & dpkt.tcp.TH_ACK:
            last_ack_to_sender, last_window = ack, window
            if window == 0 and not flags & dpkt.tcp.TH_RST:
                if not zero:
                    emit("zero_window")
                zero, full = True, False
            else:
                if zero:
                    emit("window_update")
                    zero = False
                room = _room(ack, window, highest.get("to_receiver"), out.mss)
                if room is True and full:
                    emit("window_open")
                    full = False
                elif room is False and not full:
                    emit("window_full")
                    full = True
        if direction == "to_receiver" and not syn:
            top = highest.get(direction)
            if (
                zero
                and length <= 1
                and last_ack_to_sender is not None
                and seq in ((last_ack_to_sender - 1) % _SEQ, last_ack_to_sender)
                and not flags & (dpkt.tcp.TH_FIN | dpkt.tcp.TH_RST)
                and (length == 1 or seq == (last_ack_to_sender - 1) % _SEQ)
            ):
                emit("zero_window_probe")
            elif length > 0 and top is not None and (seq + length) % _SEQ <= top:
                emit("retransmission")
            if length > 0:
                end = seq + length
                highest[direction] = max(top or 0, end)
                room = _room(last_ack_to_sender, last_window, highest[direction], out.mss)
                if not zero and not full and room is False:
                    emit("window_full")
                    full = True
    return out


def _payload_length(ip: Any, tcp: Any) -> int:
    """The segment's TCP payload from the IP header's length: the capture keeps only the
    first SNAPLEN bytes of each packet, so the payload it holds is cut short. (IPv6: no
    extension headers on a TCP loopback or veth path.)"""
    import dpkt

    ip_header = 0 if isinstance(ip, dpkt.ip6.IP6) else ip.hl * 4
    total = (ip.plen if ip_header == 0 else ip.len - ip_header) - tcp.off * 4
    return max(int(total), len(tcp.data))


def _room(ack: int | None, window: int, sent: int | None, mss: int | None) -> bool | None:
    """Does the receiver's window leave room for one more full-sized segment? None: unknown."""
    if ack is None or sent is None or mss is None or mss <= 0:
        return None
    left = (ack + window - sent) % _SEQ
    return mss <= left < _SEQ // 2  # past the edge (a shrunk window) is no room either
