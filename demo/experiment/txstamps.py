"""Transmit timestamps from the kernel: when each byte was sent and when it was ACKed.

``SO_TIMESTAMPING`` (SOL_SOCKET 37) with TX_SCHED | TX_SOFTWARE | TX_ACK | SOFTWARE |
OPT_ID | OPT_TSONLY makes the kernel report, for the last skb of each ``send()``, three
moments: *scheduled* (entered the qdisc), *sent* (handed to the device; on loopback the
moment it leaves the send queue for the wire) and *ACKed* (the cumulative ACK covering
its last byte arrived). To a peer on loopback, whose device has no qdisc, *scheduled*
is not asked for: it would be *sent*'s moment (:func:`sched_reason`). Each report
arrives on the socket's *error queue* with:

- ``ee_info``: 0 SND, 1 SCHED, 2 ACK (the kind);
- ``ee_data``: with OPT_ID on TCP, the byte offset of the skb's last byte counted from
  ``snd_una`` when the option was set. It is set right after ``connect()``, before the
  hello, so offset 0 is the stream's first byte; :class:`TxStampReader` subtracts the
  hello's length, so the table's offsets count from the first message's first byte
  (message ``seq`` ends at ``(seq + 1) * size - 1``). ``ee_data`` is 32 bits: it is
  unwrapped per kind (offsets of one kind only grow);
- ``scm_timestamping``: software timestamps are CLOCK_REALTIME. The reader converts them
  to CLOCK_MONOTONIC (the clock of every other ``*_ns`` column) with the offset between
  the two clocks read when it starts, and records that offset and its drift at the end.

One report per skb, not per send: a send appended to an skb that already carries a
request moves the request on. So "message ``seq`` was sent at T" means "the first report
of that kind whose offset reaches the message's last byte": TCP sends and ACKs in order.

**Read as it goes, in a process of its own.** The error queue is charged to the
socket's receive buffer; reports that do not fit are dropped. A reader polls the
descriptor for POLLERR and drains it with ``recvmsg(MSG_ERRQUEUE | MSG_DONTWAIT)``, then
sleeps :data:`BATCH_SLEEP`, so that it wakes a thousand times a second at most.

:class:`TxStampProcess` does that in a child process (``python -m
bufdemo.experiment.txstamps FD``) that shares the socket's descriptor, and hands the
rows back when asked to stop. A reader *thread* in the sender's process
(:class:`TxStampReader`) costs the send loop far more than the reports cost the kernel:
every ``recvmsg`` releases and retakes the GIL, once per report, and each time the
busy send loop has to hand it over. ``python -m bench.floor --pin``: ``os.write`` at
1.075 / 1.085 of bare (64 B / 1 KiB), with the flags set and the reports left queued
0.954 / 1.021, with the thread draining them 0.533 / 0.567. The child starts before
the data (it says when it is ready: ~0.1 s), stops when its stdin closes (on
:meth:`~TxStampProcess.stop`, or with the sender however it ends), and is stopped
before the socket is closed (it holds the descriptor too). If it cannot start, the
thread reads the reports instead and ``reader`` in the record says so.
"""

from __future__ import annotations

import ipaddress
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from array import array
from pathlib import Path
from typing import Any

from bufdemo import runformat

__all__ = [
    "KINDS",
    "TxStampProcess",
    "TxStampReader",
    "disabled_record",
    "enable",
    "sched_reason",
]

SO_TIMESTAMPING = 37  # SOL_SOCKET; not in Python's socket module
SCM_TIMESTAMPING = SO_TIMESTAMPING
# SOF_TIMESTAMPING_* (include/uapi/linux/net_tstamp.h)
TX_SOFTWARE = 1 << 1
SOFTWARE = 1 << 4
OPT_ID = 1 << 7
TX_SCHED = 1 << 8
TX_ACK = 1 << 9
OPT_TSONLY = 1 << 11
FLAGS = TX_SCHED | TX_SOFTWARE | TX_ACK | SOFTWARE | OPT_ID | OPT_TSONLY
KINDS = {0: "SND", 1: "SCHED", 2: "ACK"}  # ee_info -> name (SCM_TSTAMP_*)
IP_RECVERR, IPV6_RECVERR = 11, 25  # the cmsg types that carry sock_extended_err
# Ancillary buffer per report: scm_timestamping (3 x 16 B) + sock_extended_err with its
# offender address, each with a cmsg header; 512 B holds both with room.
ANC_SIZE = 512
# Sleep after each drain: at most ~1,000 wake-ups a second. The fastest phase (the
# fill, ~300 MB/s on loopback in 64 KiB skbs) makes ~15 reports a millisecond, far
# below what the default receive buffer's error queue holds (hundreds).
BATCH_SLEEP = 0.001
POLL_MS = 50  # how often the thread checks whether it was asked to stop
# The reader process: how long it may take to start (an interpreter and two modules),
# and to hand its rows back once asked to stop (a final drain and one write).
READY_TIMEOUT = 10.0
STOP_TIMEOUT = 30.0


NO_QDISC = (
    "not asked for: the peer is on loopback, whose device queues nothing (noqueue), so a "
    "SCHED report would only come before SND by its own cost"
)


def sched_reason(peer_host: str) -> str | None:
    """Why a connection to ``peer_host`` asks for no SCHED reports (None: it asks).

    SCHED is stamped as a packet enters the device's queueing layer, SND as the device
    takes it. ``lo`` has no queue (noqueue), so the two are one moment there, apart from
    the cost of the SCHED report itself (waking the reader): every report is a further
    allocation and error-queue entry in the send path, for each skb. A peer off loopback
    (a veth with ``--link-rate``'s tbf, a real NIC's qdisc) keeps them. A qdisc put on
    ``lo`` by hand is not looked for.
    """
    try:
        ip = ipaddress.ip_address(peer_host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return NO_QDISC if ip.is_loopback else None


def enable(sock: socket.socket, sched: bool = True) -> str | None:
    """Ask for transmit timestamps on a connected TCP socket; None, or why not (one line).

    ``sched``: ask for SCHED reports too (see :func:`sched_reason`).
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, FLAGS if sched else FLAGS & ~TX_SCHED)
    except OSError as exc:
        return f"SO_TIMESTAMPING refused by the kernel: {exc.strerror or exc}"
    return None


def _clock_offset_ns() -> int:
    """CLOCK_REALTIME - CLOCK_MONOTONIC, read between two monotonic reads."""
    a = time.perf_counter_ns()
    real = time.clock_gettime_ns(time.CLOCK_REALTIME)
    b = time.perf_counter_ns()
    return real - (a + b) // 2


class TxStampReader:
    """A thread that drains the error queue into growing columns (kind, offset, t_ns).

    ``base`` is the stream offset of the first message byte (the hello's length, plus
    whatever the sender writes before the data: it may be raised until then).
    """

    def __init__(self, sock: socket.socket, base: int) -> None:
        self.sock = sock
        self.base = base
        # Bytes of messages the sender wrote, once known: reports past them are of the
        # clock frames a by-hand sender writes after the data.
        self.data_bytes: int | None = None
        self.kind = array("b")
        self.offset = array("q")
        self.t_ns = array("q")  # CLOCK_MONOTONIC
        self.offset_ns = _clock_offset_ns()
        self.drift_ns: int | None = None
        self.errors = 0
        self._last = {k: -1 for k in KINDS}  # unwrapped raw offset per kind
        self.reader = "thread"  # where the reports are read: "thread" or "process"
        self.reader_error: str | None = None  # why the reader process was not used/failed
        self.sched_reason: str | None = None  # why SCHED was not asked for (sched_reason)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bufdemo-txstamps", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread after one last drain (call while the socket is still open)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.drain()
        self.drift_ns = _clock_offset_ns() - self.offset_ns

    def _loop(self) -> None:
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLERR)
        while not self._stop.is_set():
            try:
                if poller.poll(POLL_MS):
                    self.drain()
                    time.sleep(BATCH_SLEEP)
            except OSError:
                self.errors += 1
                return

    def drain(self) -> int:
        """Read every report queued now; return how many."""
        n = 0
        recvmsg = self.sock.recvmsg
        flags = socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT
        while True:
            try:
                _, ancdata, _, _ = recvmsg(0, ANC_SIZE, flags)
            except (BlockingIOError, InterruptedError):
                return n
            except OSError:
                self.errors += 1
                return n
            stamp: int | None = None
            kind = offset = -1
            for level, ctype, data in ancdata:
                if level == socket.SOL_SOCKET and ctype == SCM_TIMESTAMPING and len(data) >= 16:
                    sec, nsec = struct.unpack_from("qq", data, 0)  # ts[0]: software
                    stamp = sec * 1_000_000_000 + nsec
                elif ctype in (IP_RECVERR, IPV6_RECVERR) and len(data) >= 16:
                    kind, offset = struct.unpack_from("II", data, 8)  # ee_info, ee_data
            if stamp is None or kind not in KINDS:
                continue
            self._append(kind, offset, stamp)
            n += 1

    def _append(self, kind: int, raw: int, real_ns: int) -> None:
        last = self._last[kind]
        if last >= 0:  # unwrap the 32-bit offset: this kind's offsets only grow
            full = (last & ~0xFFFFFFFF) | raw
            if full < last - (1 << 31):
                full += 1 << 32
        else:
            full = raw
        self._last[kind] = full
        self.kind.append(kind)
        self.offset.append(full)  # the stream's offset: ``base`` is subtracted on output
        self.t_ns.append(real_ns - self.offset_ns)

    def counts(self) -> dict[str, int]:
        return {name: self.kind.count(k) for k, name in KINDS.items()}

    def record(self) -> dict[str, Any]:
        """The sender's ``timestamping`` record in meta.json."""
        last_ack = max(
            (o - self.base for k, o in zip(self.kind, self.offset, strict=True) if k == 2),
            default=None,
        )
        if last_ack is not None and self.data_bytes is not None:
            last_ack = min(last_ack, self.data_bytes - 1)  # the last message byte ACKed
        return {
            "enabled": True,
            "reason": None,
            "notifications": self.counts(),
            "last_acked_offset": last_ack,
            "realtime_minus_monotonic_ns": self.offset_ns,
            "clock_drift_ns": self.drift_ns,
            "read_errors": self.errors,
            "reader": self.reader,
            "reader_error": self.reader_error,
            "sched_reason": self.sched_reason,
        }

    def write(self, path: Path) -> None:
        """Write tx_timestamps.csv (offsets from the first message byte, monotonic ns)."""
        tmp = path.with_name(path.name + ".part")
        base = self.base  # may have grown after the start (clock frames before the data)
        with tmp.open("w") as f:
            f.write(",".join(runformat.TX_TIMESTAMPS.columns) + "\n")
            f.writelines(
                f"{k},{o - base},{t}\n"
                for k, o, t in zip(self.kind, self.offset, self.t_ns, strict=True)
            )
        os.replace(tmp, path)


class TxStampProcess(TxStampReader):
    """A :class:`TxStampReader` whose reading is done by a child process.

    :meth:`start` returns once the child is ready (or has fallen back to the thread);
    :meth:`stop` (call it before closing the socket) collects the child's rows. Either
    way the rows, :meth:`record` and :meth:`write` are a TxStampReader's.
    """

    def __init__(self, sock: socket.socket, base: int) -> None:
        super().__init__(sock, base)
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        fd = self.sock.fileno()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", __name__, str(fd)],
                pass_fds=(fd,),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except OSError as exc:
            self._fall_back(f"could not start the reader process: {exc.strerror or exc}")
            return
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], READY_TIMEOUT)
        line = proc.stdout.readline() if ready else b""
        if line != b"ready\n":
            proc.kill()
            _, err = proc.communicate()
            self._fall_back(f"the reader process did not start: {_last_line(err)}")
            return
        self._proc = proc
        self.reader = "process"

    def _fall_back(self, why: str) -> None:
        self.reader_error = why + "; read by a thread instead"
        super().start()

    def stop(self) -> None:
        proc = self._proc
        if proc is None:
            super().stop()
            return
        self._proc = None
        try:
            out, err = proc.communicate(input=b"", timeout=STOP_TIMEOUT)  # EOF: stop
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        try:
            self._take(out)
        except (ValueError, KeyError) as exc:
            self.errors += 1
            self.reader_error = (
                f"the reader process exited with {proc.returncode} and its reports are lost: "
                f"{_last_line(err) or exc}"
            )

    def _take(self, out: bytes) -> None:
        """The child's rows: a JSON line, then its kind, offset and t_ns columns."""
        head, _, body = out.partition(b"\n")
        meta = json.loads(head)
        n = int(meta["rows"])
        sizes = (n, 8 * n, 8 * n)
        if len(body) != sum(sizes):
            raise ValueError(f"{len(body)} bytes of rows for {n} reports")
        self.kind.frombytes(body[:n])
        self.offset.frombytes(body[n : 9 * n])
        self.t_ns.frombytes(body[9 * n :])
        self.offset_ns = int(meta["offset_ns"])
        self.drift_ns = meta["drift_ns"]
        self.errors += int(meta["errors"])


def _last_line(err: bytes) -> str:
    lines = err.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else "no message"


def _child(fd: int) -> None:
    """The reader process: drain ``fd``'s error queue until stdin closes, then hand back.

    Its stdin is a pipe from the sender, closed by :meth:`TxStampProcess.stop` or by
    the sender's death, however it dies. That is its only way to stop: a Ctrl-C (sent to
    the whole process group) or a SIGTERM is the sender's to handle, and the sender then
    collects the rows recorded so far, as it keeps its own tables.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sock = socket.socket(fileno=fd)
    reader = TxStampReader(sock, 0)
    poller = select.poll()
    poller.register(fd, select.POLLERR)
    poller.register(sys.stdin.fileno(), select.POLLIN)
    out = sys.stdout.buffer
    out.write(b"ready\n")
    out.flush()
    stdin = sys.stdin.fileno()
    try:
        while not any(f == stdin for f, _ in poller.poll()):
            reader.drain()
            time.sleep(BATCH_SLEEP)
        reader.drain()
    except OSError:
        reader.errors += 1
    reader.drift_ns = _clock_offset_ns() - reader.offset_ns
    meta = {
        "rows": len(reader.kind),
        "offset_ns": reader.offset_ns,
        "drift_ns": reader.drift_ns,
        "errors": reader.errors,
    }
    sock.detach()  # the parent's socket: closing it is the parent's business
    try:
        out.write(json.dumps(meta).encode() + b"\n")
        for column in (reader.kind, reader.offset, reader.t_ns):
            out.write(column.tobytes())
        out.flush()
    except BrokenPipeError:  # the sender died: nobody to hand the rows to
        os._exit(0)


def disabled_record(reason: str) -> dict[str, Any]:
    """The ``timestamping`` record of a run without transmit timestamps."""
    return {"enabled": False, "reason": reason, "notifications": None}


if __name__ == "__main__":
    _child(int(sys.argv[1]))
