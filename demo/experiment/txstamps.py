"""Transmit timestamps from the kernel: when each byte was sent and when it was ACKed.

``SO_TIMESTAMPING`` (SOL_SOCKET 37) with TX_SCHED | TX_SOFTWARE | TX_ACK | SOFTWARE |
OPT_ID | OPT_TSONLY makes the kernel report, for the last skb of each ``send()``, three
moments: *scheduled* (entered the qdisc), *sent* (handed to the device; on loopback the
moment it leaves the send queue for the wire) and *ACKed* (the cumulative ACK covering
its last byte arrived). On a connection through ``lo`` (a peer on this host), whose
device has no qdisc, *scheduled* is not asked for: it would be *sent*'s moment
(:func:`sched_reason`). Each report arrives on the socket's *error queue* with:

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

:class:`TxStampProcess` does that in a child process (``python -I -S errqueue.py FD``,
:mod:`bufdemo.experiment.errqueue`: the standard library only, so it starts in ~30 ms)
that shares the socket's descriptor, and hands the rows back when asked to stop. A
reader *thread* in the sender's process (:class:`TxStampReader`) costs the send loop far
more than the reports cost the kernel: every ``recvmsg`` releases and retakes the GIL,
once per report, and each time the busy send loop has to hand it over. ``python -m
bench.floor --pin``, all three kinds asked for (the reports then measured by
``write+ts`` are today's ``write+ts+sched``): ``os.write`` at 1.075 / 1.085 of bare (64
B / 1 KiB), with the flags set and the reports left queued 0.954 / 1.021, with the
thread draining them 0.533 / 0.567. The child starts before the data (it says when it is
ready), stops when its stdin closes (on :meth:`~TxStampProcess.stop`, or with the sender
however it ends), and is stopped before the socket is closed (it holds the descriptor
too). If it cannot start, the thread reads the reports instead and ``reader`` in the
record says so.
"""

from __future__ import annotations

import ipaddress
import os
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bufdemo import runformat
from bufdemo.experiment import errqueue

__all__ = [
    "KINDS",
    "TxStampProcess",
    "TxStampReader",
    "disabled_record",
    "enable",
    "sched_reason",
    "sched_reason_of",
]

SO_TIMESTAMPING = errqueue.SO_TIMESTAMPING
# SOF_TIMESTAMPING_* (include/uapi/linux/net_tstamp.h)
TX_SOFTWARE = 1 << 1
SOFTWARE = 1 << 4
OPT_ID = 1 << 7
TX_SCHED = 1 << 8
TX_ACK = 1 << 9
OPT_TSONLY = 1 << 11
FLAGS = TX_SCHED | TX_SOFTWARE | TX_ACK | SOFTWARE | OPT_ID | OPT_TSONLY
KINDS = errqueue.KINDS
BATCH_SLEEP = errqueue.BATCH_SLEEP
POLL_MS = 50  # how often the thread checks whether it was asked to stop
# The reader process: how long it may take to start (an interpreter, no site, errqueue),
# and to hand its rows back once asked to stop (a final drain and one write).
READY_TIMEOUT = 10.0
STOP_TIMEOUT = 30.0


NO_QDISC = (
    "not asked for: the peer is on this host, reached through lo, which queues nothing "
    "(noqueue), so a SCHED report would only come before SND by its own cost"
)


def sched_reason(peer_host: str, local_host: str | None = None) -> str | None:
    """Why a connection to ``peer_host`` asks for no SCHED reports (None: it asks).

    SCHED is stamped as a packet enters the device's queueing layer, SND as the device
    takes it. ``lo`` has no queue (noqueue), so the two are one moment there, apart from
    the cost of the SCHED report itself: every report is a further allocation and
    error-queue entry in the send path, for each skb. A connection goes through ``lo``
    when the peer is a loopback address, or this host's own address (then the local
    address is the peer's: ``local_host``). Any other peer keeps SCHED: a veth with
    ``--link-rate``'s tbf, a real NIC's qdisc. A ``--netns`` link without
    ``--link-rate`` still asks for SCHED where it equals SND (a veth queues nothing
    either), and a qdisc put on ``lo`` by hand is not looked for: SCHED is then not
    asked for where it would differ.
    """
    peer = _ip(peer_host)
    if peer is None:
        return None
    if peer.is_loopback or (local_host is not None and _ip(local_host) == peer):
        return NO_QDISC
    return None


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``host`` as an address (IPv4-mapped IPv6 as IPv4, a scope id dropped), or None."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def sched_reason_of(sock: socket.socket) -> str | None:
    """:func:`sched_reason` for a connected socket (None if it cannot tell: SCHED asked)."""
    try:
        return sched_reason(sock.getpeername()[0], sock.getsockname()[0])
    except OSError:  # reset already: the first send will say so
        return None


def enable(sock: socket.socket, sched: bool = True) -> str | None:
    """Ask for transmit timestamps on a connected TCP socket; None, or why not (one line).

    ``sched``: ask for SCHED reports too (see :func:`sched_reason`).
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, FLAGS if sched else FLAGS & ~TX_SCHED)
    except OSError as exc:
        return f"SO_TIMESTAMPING refused by the kernel: {exc.strerror or exc}"
    return None


class TxStampReader(errqueue.Reports):
    """A thread that drains the error queue into growing columns (kind, offset, t_ns).

    ``base`` is the stream offset of the first message byte (the hello's length, plus
    whatever the sender writes before the data: it may be raised until then).
    ``sched_reason``: why SCHED reports were not asked for (:func:`sched_reason`), for
    the record.
    """

    def __init__(self, sock: socket.socket, base: int, sched_reason: str | None = None) -> None:
        super().__init__(sock)
        self.base = base
        # Bytes of messages the sender wrote, once known: reports past them are of the
        # clock frames a by-hand sender writes after the data.
        self.data_bytes: int | None = None
        self.reader = "thread"  # where the reports are read: "thread" or "process"
        self.reader_error: str | None = None  # why the reader process was not used/failed
        self.start_s: float | None = None  # how long start() took (the process's start-up)
        self.sched_reason = sched_reason
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
        self.drift_ns = errqueue.clock_offset_ns() - self.offset_ns

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
            "reader_start_s": self.start_s,
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

    def __init__(self, sock: socket.socket, base: int, sched_reason: str | None = None) -> None:
        super().__init__(sock, base, sched_reason)
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        t0 = time.perf_counter()
        try:
            self._start_process()
        finally:
            self.start_s = time.perf_counter() - t0

    def _start_process(self) -> None:
        fd = self.sock.fileno()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", errqueue.__file__, str(fd)],
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
        except ValueError as exc:
            self.errors += 1
            self.reader_error = (
                f"the reader process exited with {proc.returncode} and its reports are lost: "
                f"{_last_line(err) if err.strip() else exc}"
            )

    def _take(self, out: bytes) -> None:
        """The child's rows: a line of rows, offset_ns, drift_ns and errors (integers),
        then its kind, offset and t_ns columns."""
        head, _, body = out.partition(b"\n")
        n, offset_ns, drift_ns, errors = map(int, head.split())
        sizes = (n, 8 * n, 8 * n)
        if len(body) != sum(sizes):
            raise ValueError(f"{len(body)} bytes of rows for {n} reports")
        self.kind.frombytes(body[:n])
        self.offset.frombytes(body[n : 9 * n])
        self.t_ns.frombytes(body[9 * n :])
        self.offset_ns = offset_ns
        self.drift_ns = drift_ns
        self.errors += errors


def _last_line(err: bytes) -> str:
    lines = err.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else "no message"


def disabled_record(reason: str) -> dict[str, Any]:
    """The ``timestamping`` record of a run without transmit timestamps."""
    return {"enabled": False, "reason": reason, "notifications": None}
