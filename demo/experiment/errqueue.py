"""Transmit-timestamp reports from a socket's error queue, with the standard library only.

The reading core of :mod:`bufdemo.experiment.txstamps` and its reader process. It
imports nothing of bufdemo (nor anything outside the standard library), so that the
reader process can run as ``python -I -S errqueue.py FD``: ready in ~30 ms, where
``python -m bufdemo.experiment.txstamps`` took ~100 ms, nearly all of it importing the
package. The sender waits for it to be ready after connecting, so that wait is part of
every ``--timestamps`` run's sending time. ``-I -S`` also keep the user's environment
and the directory of this file out of its ``sys.path``.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import struct
import sys
import time
from array import array

__all__ = ["ANC_SIZE", "BATCH_SLEEP", "KINDS", "Reports", "child", "clock_offset_ns"]

SO_TIMESTAMPING = 37  # SOL_SOCKET; not in Python's socket module
SCM_TIMESTAMPING = SO_TIMESTAMPING
KINDS = {0: "SND", 1: "SCHED", 2: "ACK"}  # ee_info -> name (SCM_TSTAMP_*)
IP_RECVERR, IPV6_RECVERR = 11, 25  # the cmsg types that carry sock_extended_err
# Ancillary buffer per report: scm_timestamping (3 x 16 B) + sock_extended_err with its
# offender address, each with a cmsg header; 512 B holds both with room.
ANC_SIZE = 512
# Sleep after each drain: at most ~1,000 wake-ups a second. The fastest phase (the
# fill, ~300 MB/s on loopback in 64 KiB skbs) makes ~15 reports a millisecond, far
# below what the default receive buffer's error queue holds (hundreds).
BATCH_SLEEP = 0.001


def clock_offset_ns() -> int:
    """CLOCK_REALTIME - CLOCK_MONOTONIC, read between two monotonic reads; of three
    tries, the one whose two reads lie closest (a try the scheduler cut in two would be
    off by up to half the cut)."""
    tries = []
    for _ in range(3):
        a = time.perf_counter_ns()
        real = time.clock_gettime_ns(time.CLOCK_REALTIME)
        b = time.perf_counter_ns()
        tries.append((b - a, real - (a + b) // 2))
    return min(tries)[1]


class Reports:
    """Growing columns (kind, offset, t_ns) of the reports drained from ``sock``.

    ``offset`` is the kernel's 32-bit ``ee_data`` unwrapped per kind; ``t_ns`` is on
    CLOCK_MONOTONIC (the kernel's CLOCK_REALTIME less ``offset_ns``).
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.kind = array("b")
        self.offset = array("q")
        self.t_ns = array("q")  # CLOCK_MONOTONIC
        self.offset_ns = clock_offset_ns()
        self.drift_ns: int | None = None
        self.errors = 0
        self._last = {k: -1 for k in KINDS}  # unwrapped raw offset per kind

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


def child(fd: int) -> None:
    """The reader process: drain ``fd``'s error queue until stdin closes, then hand back.

    Its stdin is a pipe from the sender, closed by ``TxStampProcess.stop`` (in
    :mod:`bufdemo.experiment.txstamps`) or by the sender's death, however it dies. That
    is its only way to stop: a Ctrl-C (sent to the whole process group) or a SIGTERM is
    the sender's to handle, and the sender then collects the rows recorded so far, as it
    keeps its own tables.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sock = socket.socket(fileno=fd)
    reader = Reports(sock)
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
    reader.drift_ns = clock_offset_ns() - reader.offset_ns
    # A line of four integers (json would add ~18 ms of imports to the start-up).
    meta = (len(reader.kind), reader.offset_ns, reader.drift_ns, reader.errors)
    sock.detach()  # the parent's socket: closing it is the parent's business
    try:
        out.write(" ".join(map(str, meta)).encode() + b"\n")
        for column in (reader.kind, reader.offset, reader.t_ns):
            out.write(column.tobytes())
        out.flush()
    except BrokenPipeError:  # the sender died: nobody to hand the rows to
        os._exit(0)


if __name__ == "__main__":
    child(int(sys.argv[1]))
