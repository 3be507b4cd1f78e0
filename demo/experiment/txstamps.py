"""Transmit timestamps from the kernel: when each byte was sent and when it was ACKed.

``SO_TIMESTAMPING`` (SOL_SOCKET 37) with TX_SCHED | TX_SOFTWARE | TX_ACK | SOFTWARE |
OPT_ID | OPT_TSONLY makes the kernel report, for the last skb of each ``send()``, three
moments: *scheduled* (entered the qdisc), *sent* (handed to the device; on loopback the
moment it leaves the send queue for the wire) and *ACKed* (the cumulative ACK covering
its last byte arrived). Each report arrives on the socket's *error queue* with:

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

**Read as it goes.** The error queue is charged to the socket's receive buffer; reports
that do not fit are dropped. A thread polls the descriptor for POLLERR and drains it
with ``recvmsg(MSG_ERRQUEUE | MSG_DONTWAIT)``, then sleeps :data:`BATCH_SLEEP` so that
it wakes the GIL a thousand times a second at most, not once per report: the send loop
never waits for it.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import threading
import time
from array import array
from pathlib import Path
from typing import Any

from bufdemo import runformat

__all__ = ["KINDS", "TxStampReader", "disabled_record", "enable"]

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


def enable(sock: socket.socket) -> str | None:
    """Ask for transmit timestamps on a connected TCP socket; None, or why not (one line)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, FLAGS)
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
        self.kind = array("b")
        self.offset = array("q")
        self.t_ns = array("q")  # CLOCK_MONOTONIC
        self.offset_ns = _clock_offset_ns()
        self.drift_ns: int | None = None
        self.errors = 0
        self._last = {k: -1 for k in KINDS}  # unwrapped raw offset per kind
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
        return {
            "enabled": True,
            "reason": None,
            "notifications": self.counts(),
            "last_acked_offset": last_ack,
            "realtime_minus_monotonic_ns": self.offset_ns,
            "clock_drift_ns": self.drift_ns,
            "read_errors": self.errors,
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


def disabled_record(reason: str) -> dict[str, Any]:
    """The ``timestamping`` record of a run without transmit timestamps."""
    return {"enabled": False, "reason": reason, "notifications": None}
