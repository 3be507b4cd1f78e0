"""One slow client: a broadcast server's three designs against a client that stops reading.

A publisher sends fixed-size messages to a broadcast server at a fixed rate; the server
forwards each to every subscriber: FAST_CLIENTS that read at once, and one slow client
that stops reading for SLOW_PAUSE seconds (then reads again, so that every design can
finish). Before the schedule starts, PREROLL unmeasured messages fill the kernel's
buffers on the way to the slow client, so that from the first scheduled message on every
design meets a slow client that is full. Each message carries its *scheduled* send
time, so a subscriber's latency is measured from when the message should have left, also
while the publisher itself was held up (no coordinated omission).

The three designs (all one thread, one select() loop, as in the lecture):

- ``a-blocking``: the lecture's select() server with blocking sends: ``sendall`` to each
  subscriber in turn. Once the slow client's receive buffer and the server's send buffer
  for it are full, ``sendall`` sleeps in the kernel, and the whole loop with it: the other
  clients get nothing until the slow client reads again.
- ``b-queues``: non-blocking sockets, a per-client output queue in user space, and
  select()'s *writable* event to send from it. The others are served on time; the slow
  client's queue grows by everything it does not read: server memory without bound.
- ``c-limit``: as (b), plus a per-client output limit (the policy Redis calls
  client-output-buffer-limit): a client whose queue exceeds OUTPUT_LIMIT is
  disconnected; the server's memory stays bounded by the limit per client.

Measured per design: the fast clients' latency (p50, p99, max), the bytes the server
held in its output queues (peak: the user-space memory the design spends on clients),
the process's RSS change (psutil; noisier, it is the whole lab process), whether the
slow client was cut off, and for (a) how long the server sat in a blocked send.

Bounded: the server's socket to the slow client gets a small SO_SNDBUF and the slow
client a small SO_RCVBUF, so the kernel's part is ~100 KiB (the pre-roll fills it), and
the run lasts RUN_SECONDS; (b)'s queue holds at most rate x pause, a few MiB. Every
socket has TCP_NODELAY: a 4 KiB message is below loopback's MSS, and Nagle with the
peer's delayed ACK would hold one back up to 40 ms, which is not what is measured.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import multiprocessing as mp
import select
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from bufdemo.lecture.lab._core import LabResult
from bufdemo.signals import stop_when_orphaned

if TYPE_CHECKING:  # matplotlib is imported by whoever plots, not by the lab
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes

__all__ = [
    "DESIGNS",
    "SLOW_CLIENT_CLAIM",
    "DesignResult",
    "percentile",
    "plot_latency",
    "plot_server_memory",
    "run_design",
    "slow_client",
    "verdict",
]

MESSAGE = 4096  # bytes per message: at the rate below, a pause of 1 s queues ~2 MB
PERIOD = 0.002  # one message every 2 ms from the publisher: 2 MB/s
RUN_SECONDS = 1.6  # the publisher's schedule: 800 messages, ~3.3 MB
SLOW_PAUSE = 1.0  # seconds the slow client does not read, from the first message on
FAST_CLIENTS = 2
# Small kernel buffers on the server's sockets and the slow client: the kernel's share
# fills within ~20 ms, so what follows is the design's doing, not the kernel's.
SERVER_SNDBUF = 128 * 1024  # the server's sockets (a fast client gets big chunks per pass)
SLOW_SNDBUF = 16 * 1024  # the server's socket to the slow client
SLOW_RCVBUF = 16 * 1024
# Messages sent before the schedule starts (not measured): more than the kernel holds on
# the way to the slow client (~100 KiB with the buffers above), so its path is full when
# the schedule begins and every design meets a full slow client from the first message.
PREROLL = 64
# (c)'s per-client limit: 64 messages. Far above what a reading client ever has queued
# (a message is sent on the next writable event), far below (b)'s growth in SLOW_PAUSE.
OUTPUT_LIMIT = 256 * 1024
# The verdict's bound on the other clients' p99 under (b) and (c): 20 ms is 20 message
# periods, an order of magnitude above one pass of the loop even on a loaded 2-core host.
P99_BOUND = 0.020
SEND_BATCH = 64  # messages offered per sendmsg(): 256 KiB, more than a send buffer takes
# Seconds between setting the schedule's start and its first message: the readers start
# and the pre-roll fills the slow client's path.
LEAD_IN = 0.2
START_TIMEOUT = 10.0  # seconds for the server process to start (spawn) or to report
FINISH_TIMEOUT = 6.0  # seconds for the subscribers to get everything after the schedule

DESIGNS = ("a-blocking", "b-queues", "c-limit")
_HEADER = struct.Struct("!qq")  # sequence number, scheduled send time (perf_counter_ns)

SLOW_CLIENT_CLAIM = (
    "one client that stops reading freezes a select() server with blocking sends for "
    "everyone; per-client output queues keep the others on time but grow the server's "
    "memory; an output limit that disconnects the slow client keeps both bounded"
)


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-quantile (0..1) by the nearest-rank rule; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q * len(ordered))))
    return ordered[rank - 1]


@dataclass
class DesignResult:
    design: str
    latencies: list[float] = field(default_factory=list)  # seconds, every fast delivery
    due: list[float] = field(default_factory=list)  # its scheduled time, s since the first
    received: int = 0  # messages the fast clients received (all of them)
    expected: int = 0
    queued_peak: int = 0  # bytes in the server's output queues, at most
    # (seconds since the first message, bytes queued, server RSS or None), every 10 ms
    queued_series: list[tuple[float, int, int | None]] = field(default_factory=list)
    others_disconnected: int = 0  # fast clients a design cut off (none should be)
    rss_delta: int | None = None
    slow_disconnected: bool = False
    slow_disconnected_at: float | None = None  # seconds after the first message
    blocked_seconds: float = 0.0  # (a): time inside sends that could not complete at once
    blocked_longest: float = 0.0  # (a): the longest of those sends: the server's freeze
    passes: int = 0  # the server's select() loop passes
    cpu_seconds: float = 0.0  # the server's CPU time
    slow_paused: float = 0.0  # seconds the slow client did not read

    def summary(self) -> dict[str, Any]:
        def ms(v: float | None) -> float | None:
            return None if v is None else round(v * 1000, 2)

        return {
            "latency_p50_ms": ms(percentile(self.latencies, 0.50)),
            "latency_p99_ms": ms(percentile(self.latencies, 0.99)),
            "latency_max_ms": ms(max(self.latencies, default=None)),
            "fast_messages_received": self.received,
            "fast_messages_expected": self.expected,
            "server_queued_peak_bytes": self.queued_peak,
            "server_rss_growth_bytes": self.rss_delta,
            "slow_client_disconnected": self.slow_disconnected,
            "slow_client_disconnected_at_s": self.slow_disconnected_at,
            "other_clients_disconnected": self.others_disconnected,
            "server_blocked_in_send_ms": round(self.blocked_seconds * 1000, 1),
            "server_longest_blocked_send_ms": round(self.blocked_longest * 1000, 1),
            "slow_client_pause_ms": round(self.slow_paused * 1000, 1),
            "server_loop_passes": self.passes,
            "server_cpu_ms": round(self.cpu_seconds * 1000, 1),
        }


class _Queue:
    """A client's output queue: whole messages in a deque, the first maybe half sent."""

    def __init__(self) -> None:
        self.parts: deque[memoryview] = deque()
        self.size = 0  # bytes queued

    def put(self, message: bytes) -> None:
        self.parts.append(memoryview(message))
        self.size += len(message)

    def head(self) -> list[memoryview]:
        """What one sendmsg() offers: up to SEND_BATCH messages (gathered, not copied)."""
        return list(itertools.islice(self.parts, SEND_BATCH))

    def consume(self, n: int) -> None:
        self.size -= n
        parts = self.parts
        while n:
            first = parts[0]
            if len(first) <= n:
                n -= len(first)
                parts.popleft()
            else:
                parts[0] = first[n:]
                n = 0


class _Server:
    """The broadcast server, one select() loop; ``design`` picks how it sends.

    It runs in a process of its own (:func:`_serve`): its memory is its own RSS, and no
    reader thread of the lab competes with it for a GIL.
    """

    def __init__(self, listener: socket.socket, design: str, conn: Connection) -> None:
        self.listener = listener
        self.design = design
        self.conn = conn  # the lab's end: "start" (t0_ns), "stop"; the report goes back
        self.t0_ns = 0
        self.slow: socket.socket | None = None  # the first subscriber
        self.report: dict[str, Any] = {
            "queued_peak": 0,
            "queued_series": [],
            "blocked_seconds": 0.0,
            "blocked_longest": 0.0,
            "slow_disconnected": False,
            "slow_disconnected_at": None,
            "others_disconnected": 0,
            "rss_start": None,
            "rss_peak": None,
            "passes": 0,  # select() loop passes, from the first message on
            "cpu_seconds": 0.0,  # the server process's CPU time over the same span
        }

    def loop(self) -> dict[str, Any]:
        clients: list[socket.socket] = []  # subscribers, in connection order
        queues: dict[socket.socket, _Queue] = {}
        inbox = bytearray()
        publisher: socket.socket | None = None
        blocking = self.design == "a-blocking"
        limit = OUTPUT_LIMIT if self.design == "c-limit" else None
        rep = self.report
        next_rss = 0.0
        cpu0 = 0.0
        while True:
            if self.conn.poll():
                msg = self.conn.recv()
                if msg == "stop":
                    break
                self.t0_ns = int(msg)
                cpu0 = time.process_time()
                rep["rss_start"] = rep["rss_peak"] = _rss()
            readable = [self.listener, *([publisher] if publisher else [])]
            writable = [c for c in clients if queues[c].size]
            r, w, _ = select.select(readable, writable, [], 0.02)
            if self.listener in r:
                conn, _ = self.listener.accept()
                # No Nagle: a 4 KiB message is below loopback's MSS, and Nagle with the
                # peer's delayed ACK holds one back up to 40 ms, which is not the design.
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                role = conn.recv(1)  # b"p": the publisher, b"s": a subscriber
                if role == b"p":
                    publisher = conn
                else:
                    conn.setblocking(blocking)
                    clients.append(conn)
                    queues[conn] = _Queue()
                    if self.slow is None:  # the first subscriber: the slow one
                        self.slow = conn
                        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SLOW_SNDBUF)
            for c in w:
                if c in queues:
                    self._send_queued(c, queues, clients)
            if publisher is not None and publisher in r:
                data = publisher.recv(1 << 16)
                if not data:
                    publisher.close()
                    publisher = None
                    continue
                inbox += data
                whole = len(inbox) - len(inbox) % MESSAGE
                for pos in range(0, whole, MESSAGE):
                    message = bytes(inbox[pos : pos + MESSAGE])
                    for c in list(clients):
                        if blocking:
                            self._send_blocking(c, message)
                        else:
                            queues[c].put(message)
                            if limit is not None and queues[c].size > limit:
                                self._disconnect(c, queues, clients)
                del inbox[:whole]
            held = sum(q.size for q in queues.values())
            rep["queued_peak"] = max(rep["queued_peak"], held)
            if self.t0_ns:
                rep["passes"] += 1
                t = (time.perf_counter_ns() - self.t0_ns) / 1e9
                if t >= next_rss:  # RSS and the queues' size every 10 ms
                    next_rss = t + 0.01
                    rss = _rss()
                    if rss is not None:
                        rep["rss_peak"] = max(rep["rss_peak"] or 0, rss)
                    rep["queued_series"].append((round(t, 4), held, rss))
        if self.t0_ns:
            rep["cpu_seconds"] = time.process_time() - cpu0
        for c in clients:
            c.close()
        if publisher is not None:
            publisher.close()
        return rep

    def _send_blocking(self, c: socket.socket, message: bytes) -> None:
        """sendall, timing how long it sat in the kernel when it could not finish at once."""
        try:
            n = c.send(message, socket.MSG_DONTWAIT)
        except BlockingIOError:
            n = 0
        if n < len(message):
            t = time.monotonic()
            c.sendall(message[n:])
            waited = time.monotonic() - t
            self.report["blocked_seconds"] += waited
            self.report["blocked_longest"] = max(self.report["blocked_longest"], waited)

    def _send_queued(
        self, c: socket.socket, queues: dict[socket.socket, _Queue], clients: list[socket.socket]
    ) -> None:
        q = queues[c]
        try:
            n = c.sendmsg(q.head())
        except BlockingIOError:
            return
        except OSError:
            self._disconnect(c, queues, clients)
            return
        q.consume(n)

    def _disconnect(
        self, c: socket.socket, queues: dict[socket.socket, _Queue], clients: list[socket.socket]
    ) -> None:
        clients.remove(c)
        del queues[c]
        if c is not self.slow:
            self.report["others_disconnected"] += 1
        elif self.t0_ns:
            self.report["slow_disconnected"] = True
            self.report["slow_disconnected_at"] = (time.perf_counter_ns() - self.t0_ns) / 1e9
        c.close()


def _serve(design: str, conn: Connection) -> None:
    """The server process: listen, say the port, run the loop, send the report back."""
    stop_when_orphaned()
    _rss()  # imports psutil now: an import at the first message would delay it
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SERVER_SNDBUF)  # inherited
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        conn.send(listener.getsockname()[1])
        conn.send(_Server(listener, design, conn).loop())


def _subscribe(address: tuple[str, int], rcvbuf: int | None = None) -> socket.socket:
    s = socket.socket()
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(address)
    s.sendall(b"s")
    return s


def _rss() -> int | None:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except (ImportError, OSError):
        return None


def run_design(design: str) -> DesignResult:
    """Run one server design against FAST_CLIENTS readers and one slow client."""
    out = DesignResult(design)
    count = round(RUN_SECONDS / PERIOD)
    out.expected = (PREROLL + count) * FAST_CLIENTS
    ctx = mp.get_context("spawn")
    here, there = ctx.Pipe()
    server = ctx.Process(target=_serve, args=(design, there), name=f"slow-client-{design}")
    with ExitStack() as stack:
        server.start()
        stack.callback(_end, server)
        if not here.poll(START_TIMEOUT):
            raise RuntimeError(f"{design} server did not start within {START_TIMEOUT} s")
        address = ("127.0.0.1", int(here.recv()))
        # The slow client first: the server serves subscribers in connection order, so a
        # message that blocks on it has not yet gone to the others.
        slow = stack.enter_context(_subscribe(address, SLOW_RCVBUF))
        fast = [stack.enter_context(_subscribe(address)) for _ in range(FAST_CLIENTS)]
        publisher = stack.enter_context(socket.create_connection(address))
        publisher.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        publisher.sendall(b"p")
        time.sleep(0.1)  # let the server accept everyone before the schedule starts
        # The schedule starts a little later, once the readers run and the server knows.
        t0 = time.perf_counter_ns() + round(LEAD_IN * 1e9)
        reader = threading.Thread(
            target=_read_fast, args=(fast, PREROLL + count, t0, out), daemon=True
        )
        slow_reader = threading.Thread(target=_read_slow, args=(slow, t0, out), daemon=True)
        reader.start()
        slow_reader.start()
        here.send(t0)
        _publish(publisher, t0, count)
        reader.join(RUN_SECONDS + FINISH_TIMEOUT)
        here.send("stop")
        if not here.poll(START_TIMEOUT):
            raise RuntimeError(f"{design} server did not report within {START_TIMEOUT} s")
        rep = here.recv()
        with contextlib.suppress(OSError):
            slow.shutdown(socket.SHUT_RDWR)
        slow_reader.join(2.0)
    out.queued_peak = rep["queued_peak"]
    out.queued_series = rep["queued_series"]
    out.blocked_seconds = rep["blocked_seconds"]
    out.blocked_longest = rep["blocked_longest"]
    out.passes = rep["passes"]
    out.cpu_seconds = rep["cpu_seconds"]
    out.slow_disconnected = rep["slow_disconnected"]
    out.slow_disconnected_at = rep["slow_disconnected_at"]
    out.others_disconnected = rep["others_disconnected"]
    if rep["rss_start"] is not None and rep["rss_peak"] is not None:
        out.rss_delta = rep["rss_peak"] - rep["rss_start"]
    return out


def _end(proc: mp.process.BaseProcess) -> None:
    proc.join(START_TIMEOUT)
    if proc.is_alive():
        proc.kill()
        proc.join()


def _publish(sock: socket.socket, t0: int, count: int) -> None:
    """PREROLL unmeasured messages (negative numbers) at once, then ``count`` messages on
    schedule from ``t0`` (each stamped with its scheduled time)."""
    pad = bytes(MESSAGE - _HEADER.size)
    period_ns = round(PERIOD * 1e9)
    for seq in range(-PREROLL, 0):
        sock.sendall(_HEADER.pack(seq, time.perf_counter_ns()) + pad)
    for seq in range(count):
        due = t0 + seq * period_ns
        delay = (due - time.perf_counter_ns()) / 1e9
        if delay > 0:
            time.sleep(delay)
        sock.sendall(_HEADER.pack(seq, due) + pad)


def _read_fast(socks: list[socket.socket], count: int, t0: int, out: DesignResult) -> None:
    """Read every fast client until each has ``count`` messages; record each latency."""
    buffers = {s: bytearray() for s in socks}
    got = dict.fromkeys(socks, 0)
    deadline = time.monotonic() + RUN_SECONDS + FINISH_TIMEOUT
    pending = list(socks)
    while pending and time.monotonic() < deadline:
        r, _, _ = select.select(pending, [], [], 0.1)
        for s in r:
            data = s.recv(1 << 16)
            now = time.perf_counter_ns()
            if not data:
                pending.remove(s)
                continue
            buf = buffers[s]
            buf += data
            whole = len(buf) - len(buf) % MESSAGE
            for pos in range(0, whole, MESSAGE):
                seq, due = _HEADER.unpack_from(buf, pos)
                if seq >= 0:  # the pre-roll is not measured
                    out.latencies.append((now - due) / 1e9)
                    out.due.append((due - t0) / 1e9)
            got[s] += whole // MESSAGE
            del buf[:whole]
            if got[s] >= count:
                pending.remove(s)
    out.received = sum(got.values())


def _read_slow(sock: socket.socket, t0: int, out: DesignResult) -> None:
    """Read nothing for SLOW_PAUSE seconds after the schedule began, then everything."""
    pause_end = t0 + round(SLOW_PAUSE * 1e9)
    time.sleep(max(0.0, (pause_end - time.perf_counter_ns()) / 1e9))
    out.slow_paused = (time.perf_counter_ns() - t0) / 1e9
    with contextlib.suppress(OSError):
        while sock.recv(1 << 16):
            pass


def slow_client() -> LabResult:
    """The lab experiment: run the three designs, then judge them (:func:`verdict`)."""
    return verdict({design: run_design(design) for design in DESIGNS})


def verdict(results: dict[str, DesignResult]) -> LabResult:
    """The claim judged from the three designs' measurements."""
    a, b, c = (results[d] for d in DESIGNS)
    s = {d: r.summary() for d, r in results.items()}

    def p99(r: DesignResult) -> float:
        v = percentile(r.latencies, 0.99)
        return float("inf") if v is None else v

    complete = all(r.received == r.expected for r in (a, b, c))
    # (a): the others wait as long as the server sat blocked on the slow client, which
    # is the slow client's pause once its buffers were full.
    a_frozen = max(a.latencies, default=0.0) >= a.slow_paused >= SLOW_PAUSE
    b_on_time = p99(b) < P99_BOUND and not b.slow_disconnected and not b.others_disconnected
    c_on_time = p99(c) < P99_BOUND and not c.others_disconnected
    # (c)'s bound: every client's queue at most the limit plus the message that crossed it.
    bound = (1 + FAST_CLIENTS) * (OUTPUT_LIMIT + MESSAGE)
    b_grows = b.queued_peak > bound
    c_bounded = c.slow_disconnected and c.queued_peak <= bound
    holds = complete and a_frozen and b_on_time and c_on_time and b_grows and c_bounded
    evidence: dict[str, Any] = {
        **s,
        "setup": {
            "message_bytes": MESSAGE,
            "messages_per_s": round(1 / PERIOD),
            "fast_clients": FAST_CLIENTS,
            "slow_pause_ms": round(SLOW_PAUSE * 1000),
            "server_sndbuf_requested": SERVER_SNDBUF,
            "slow_rcvbuf_requested": SLOW_RCVBUF,
            "output_limit_bytes": OUTPUT_LIMIT,
        },
    }

    def line(d: str) -> str:
        v = s[d]
        return (
            f"{d}: others' latency p50 {v['latency_p50_ms']} ms, p99 {v['latency_p99_ms']} "
            f"ms, max {v['latency_max_ms']} ms; server queues peak "
            f"{v['server_queued_peak_bytes']:,} B; slow client cut off: "
            f"{str(v['slow_client_disconnected']).lower()}"
        )

    explanation = (
        line("a-blocking"),
        f"(a) sat up to {s['a-blocking']['server_longest_blocked_send_ms']} ms in one "
        "sendall() to the slow client (its pause: "
        f"{s['a-blocking']['slow_client_pause_ms']} ms): one blocked send stops the loop, "
        "so every other client waited at least as long",
        line("b-queues"),
        "(b) the slow client's bytes wait in the server's memory instead: the others are "
        "on time, the queue grows with the pause (rate x pause)",
        line("c-limit"),
        f"(c) the queue is capped at {OUTPUT_LIMIT:,} B: the slow client is disconnected "
        "and the server's memory stays bounded",
    )
    return LabResult("slow-client", SLOW_CLIENT_CLAIM, holds, evidence, explanation)


def plot_latency(ax: Axes, results: Sequence[DesignResult]) -> list[Artist]:
    """The other clients' latency (ms) against each message's scheduled time, per design."""
    artists: list[Artist] = []
    for r in results:
        artists += ax.plot(
            r.due, [v * 1000 for v in r.latencies], ".", markersize=2, label=r.design
        )
    ax.set_yscale("symlog", linthresh=1.0)
    ax.axvspan(0, SLOW_PAUSE, color="0.9", zorder=0, label="slow client not reading")
    ax.set_xlabel("message scheduled at (s)")
    ax.set_ylabel("other clients' latency (ms)")
    return artists


def plot_server_memory(ax: Axes, results: Sequence[DesignResult]) -> list[Artist]:
    """Bytes in the server's output queues over time, per design (MiB)."""
    artists: list[Artist] = []
    for r in results:
        t = [row[0] for row in r.queued_series]
        held = [row[1] / (1 << 20) for row in r.queued_series]
        artists += ax.plot(t, held, label=r.design)
    ax.axvspan(0, SLOW_PAUSE, color="0.9", zorder=0)
    ax.set_xlabel("time since the first message (s)")
    ax.set_ylabel("server output queues (MiB)")
    return artists
