"""The sender: push messages as fast as the kernel accepts them, and record every send.

What a *blocking send* is, exactly (no duration threshold, no guessing):

- mode ``blocking``: each message is first offered with ``send(msg, MSG_DONTWAIT)``.
  If that raises EAGAIN or accepts only part of the message, the send buffer is full;
  the queue is probed, the rest goes out with an ordinary blocking ``sendall`` (the
  kernel puts the process to sleep in ``sk_stream_wait_memory`` and wakes it when the
  queue has drained to about 2/3 of SO_SNDBUF), and the queue is probed again.
- mode ``select``: the socket is non-blocking; a send that cannot complete waits for
  select()'s *writable* event (the lecture's fourth event), which follows the same
  kernel rule.

With ``--send-rate R`` the sender is paced: message i may not be handed over before its
slot's start, by the receiver's no-drift rule (:class:`~bufdemo.experiment.pacing.Pacer`,
slots of 1/R from when sending began; every message counts as waiting, like the
receiver's backlog, so slot i starts at exactly ``i/R``); it sleeps, then spins, until
then. A message late for its slot (a busy machine, a wait in the kernel) goes at once,
and those behind it follow until the pace is caught up: the sender offers R messages a
second on average, as an application producing them at that rate would (iperf3 -b).
A paced sender sets TCP_NODELAY: its writes are small and spaced out, and Nagle's rule
would hold each one until the previous one is ACKed, which an idle receiver delays by
up to 40 ms (delayed ACK). An unpaced sender fills whole segments; Nagle is moot there.
``--notsent-lowat`` sets TCP_NOTSENT_LOWAT on the socket; both modes wait on it (the
kernel's ``tcp_stream_memory_free``). Transmit timestamps (SO_TIMESTAMPING) are asked
for right after connect() and read by a process of their own
(:mod:`bufdemo.experiment.txstamps`).

When the last message has been handed to the kernel the sender shuts down its writing
side (FIN after the data) and waits until the receiver has consumed everything and
closed: the drain phase is still sampled.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import struct
import threading
import time
from array import array
from collections.abc import Callable, MutableSequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bufdemo import probes, runformat
from bufdemo.errors import BufdemoError, PeerError, PeerTimeout
from bufdemo.experiment import clocksync, errqueue, txstamps
from bufdemo.experiment.config import ASYNCIO_MODES, Mode, RunConfig
from bufdemo.experiment.pacing import WAITING, Pacer
from bufdemo.experiment.recorder import (
    PROGRESS_BLOCKED_SINCE,
    PROGRESS_BLOCKING,
    PROGRESS_DONE,
    BlockingLog,
    Sampler,
    SendLog,
)
from bufdemo.experiment.wire import (
    CLOCK_SIZE,
    HEADER_SIZE,
    ClockReading,
    Decoder,
    FrameBlock,
    Hello,
    decode_clock,
    encode_clock,
    encode_hello,
)
from bufdemo.net import Address, timeval
from bufdemo.runformat import AsyncioRecord, SenderRecord
from bufdemo.signals import cleanup_begins

__all__ = ["SenderResult", "connect", "identify", "open_connection", "run_sender", "send_loop"]


@dataclass
class SenderResult:
    address: str = ""
    peer: str = ""
    t_connected_ns: int | None = None
    t_done_ns: int | None = None
    messages: int = 0
    blocking_sends: int = 0
    nodelay: bool = False
    notsent_lowat: int | None = None
    timestamping: dict[str, Any] | None = None
    buffers: dict[str, Any] = field(default_factory=dict)
    complete: bool = False
    error: str | None = None
    asyncio: AsyncioRecord | None = None  # the asyncio modes' transport record
    cookie: int | None = None  # SO_COOKIE of the connected socket (the trace's id)
    # The clock exchanges, each {"seq", "t1", "t2", "t3", "t4"} (clocksync): by-hand only.
    clock: list[dict[str, int]] = field(default_factory=list)

    def as_dict(self) -> SenderRecord:
        """The sender's record in meta.json (and sender.json)."""
        return {
            "address": self.address,
            "peer": self.peer,
            "t_connected_ns": self.t_connected_ns,
            "t_done_ns": self.t_done_ns,
            "messages": self.messages,
            "blocking_sends": self.blocking_sends,
            "nodelay": self.nodelay,
            "notsent_lowat": self.notsent_lowat,
            "timestamping": self.timestamping,
            "buffers": self.buffers,
            "complete": self.complete,
            "error": self.error,
            "asyncio": self.asyncio,
            "cookie": self.cookie,
            "clock": list(self.clock),
        }


def connect(cfg: RunConfig, to: Address) -> socket.socket:
    """Connect to the receiver; SO_SNDBUF is set before connect, as it must be."""
    try:
        infos = socket.getaddrinfo(to.host, to.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise PeerError(f"cannot resolve {to.host!r}: {exc.strerror}") from exc
    family, socktype, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, socktype, proto)
    try:
        if cfg.sndbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, cfg.sndbuf)
        if cfg.timeout is not None:
            # The kernel's own wait gives up after this long (SO_SNDTIMEO/SO_RCVTIMEO),
            # so a stuck peer ends the run instead of hanging it.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval(cfg.timeout))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval(cfg.timeout))
            sock.settimeout(cfg.timeout)
        try:
            sock.connect(sockaddr)
        finally:
            sock.settimeout(None)  # blocking: the send loop relies on real blocking sends
    except ConnectionRefusedError as exc:
        sock.close()
        raise PeerError(f"connection refused by {to}: is the receiver running?") from exc
    except TimeoutError as exc:
        sock.close()
        raise PeerTimeout(f"connecting to {to} timed out after {cfg.timeout} s") from exc
    except OSError as exc:
        sock.close()
        raise PeerError(f"cannot connect to {to}: {exc.strerror or exc}") from exc
    return sock


Probe = tuple[int, int, int, int, int]  # _probe's answer: the queues and sizes around a wait


def _probe(sock: socket.socket) -> Probe:
    def val(v: int | None) -> int:
        return -1 if v is None else v

    # SO_MEMINFO after the probes that were there first: their timing stays as it was.
    # An ACK that arrives in between frees truesize; with a slow receiver (its window
    # closed) none does.
    outq, outq_nsd, sndbuf = (
        val(probes.queue_out(sock)),
        val(probes.queue_out_unsent(sock)),
        val(probes.buffer_sizes(sock).sndbuf),
    )
    mem = probes.sk_meminfo(sock)
    return (
        outq,
        outq_nsd,
        sndbuf,
        -1 if mem is None else mem["wmem_queued"],
        -1 if mem is None else mem["sndbuf"],
    )


def log_wait(
    blocking: BlockingLog,
    seq: int,
    t0: int,
    t1: int,
    accepted: int,
    after_wait: int,
    waits: int,
    before: Probe,
    after: Probe,
) -> None:
    """One row of blocking_sends.csv: message ``seq`` waited from t0 to t1; ``accepted``
    bytes went before the wait, ``after_wait`` after it; the probes at both ends."""
    outq0, outq_nsd0, sndbuf0, wq0, sk0 = before
    outq1, outq_nsd1, sndbuf1, wq1, sk1 = after
    blocking.append(
        seq=seq,
        t_start_ns=t0,
        t_end_ns=t1,
        accepted_first=accepted,
        bytes_after_wait=after_wait,
        outq_start=outq0,
        outq_nsd_start=outq_nsd0,
        sndbuf_start=sndbuf0,
        outq_end=outq1,
        outq_nsd_end=outq_nsd1,
        sndbuf_end=sndbuf1,
        waits=waits,
        wmem_queued_start=wq0,
        sk_sndbuf_start=sk0,
        wmem_queued_end=wq1,
        sk_sndbuf_end=sk1,
    )


def send_loop(
    sock: socket.socket,
    cfg: RunConfig,
    log: SendLog,
    blocking: BlockingLog,
    sent: MutableSequence[int],
    block: FrameBlock | None = None,
    sampler: Sampler | None = None,
    *,
    progress: MutableSequence[int] | None = None,
) -> None:
    """Send ``cfg.messages`` frames, recording each; ``sent[0]`` counts completed ones.

    The hot path per message is one ``os.write`` on the non-blocking descriptor (the
    kernel's answer is the same as ``send(msg, MSG_DONTWAIT)``: all, part, or EAGAIN),
    one clock read and one list append. Framing happens per block of frames
    (:class:`~bufdemo.experiment.wire.FrameBlock`); timestamps move into the preallocated column per
    block (:meth:`SendLog.store`); ``sent[0]`` (read by the sampler) is updated per block
    and before every wait.
    A gated ``sampler`` samples inline between blocks while the loop runs, and from its
    thread only while the loop waits in the kernel (see
    :class:`~bufdemo.experiment.recorder.Sampler`).
    A write that cannot hand over the whole message is a blocking send: probed, finished
    with a real wait (:func:`_finish`), probed again, logged in ``blocking``. While it
    waits, ``progress[PROGRESS_BLOCKED_SINCE]`` (if given) holds when the wait began, and
    0 again once it is over: only this slow path touches it.

    Raises :class:`PeerError` if the connection breaks, :class:`PeerTimeout` if a wait
    times out; what was recorded until then stays in ``log`` and ``blocking``.
    """
    size = cfg.size
    block = block or FrameBlock(size, frames_per_block(size))
    views, fill = block.views, block.fill
    per_block = block.count
    last_full = cfg.messages - per_block  # blocks from here on are sent whole
    store = log.store
    now = time.perf_counter_ns
    write = os.write
    fd = sock.fileno()
    use_select = cfg.mode is Mode.SELECT
    pacer: Pacer | None = None
    sock.setblocking(False)
    first = 0
    stamps: list[int] = []

    def blocked(view: memoryview, n: int, seq: int) -> None:
        """A write that handed over ``n`` < size bytes: probe, wait, probe, log.

        (It names neither ``now`` nor ``size``: the hot loop's variables stay plain
        locals, not cells a closure shares, which cost more to read.)
        """
        sent[0] = seq  # the sampler sees the count while we wait
        clock = time.perf_counter_ns
        t0 = clock()
        if progress is not None:
            progress[PROGRESS_BLOCKED_SINCE] = t0
        before = _probe(sock)
        try:
            with contextlib.nullcontext() if sampler is None else sampler.waiting():
                waits = _finish(sock, view[n:], use_select, cfg.timeout)
        finally:
            if progress is not None:
                progress[PROGRESS_BLOCKED_SINCE] = 0
        log_wait(blocking, seq, t0, clock(), n, cfg.size - n, waits, before, _probe(sock))

    try:
        log.t_start_ns = now()
        if cfg.send_rate is not None:
            pacer = Pacer.per_second(cfg.send_rate, log.t_start_ns)
        for first in range(0, cfg.messages, per_block):
            fill(first)
            stamps = []
            stamp = stamps.append
            block_views = views if first <= last_full else views[: cfg.messages - first]
            try:
                # Two copies of the per-message loop: the unpaced one is the hot path, and
                # one test fewer per message there is measurable (docs/benchmarks.md).
                if pacer is None:
                    for view in block_views:
                        try:
                            n = write(fd, view)
                        except BlockingIOError:
                            n = 0
                        if n != size:
                            blocked(view, n, first + len(stamps))
                        stamp(now())
                else:
                    for view in block_views:
                        sent[0] = first + len(stamps)
                        _wait_for_slot(pacer, sampler)
                        try:
                            n = write(fd, view)
                        except BlockingIOError:
                            n = 0
                        if n != size:
                            blocked(view, n, first + len(stamps))
                        stamp(now())
            finally:
                # Stored whole even when the first stop signal cuts the store short: the
                # retry writes the same rows, and StopSignals only counts later signals.
                try:
                    sent[0] = store(first, stamps)
                except KeyboardInterrupt:
                    sent[0] = store(first, stamps)
                    raise
            if sampler is not None:
                sampler.sample_if_due(now())
    except (BrokenPipeError, ConnectionResetError) as exc:
        raise PeerError(
            f"the receiver closed the connection ({errno.errorcode.get(exc.errno or 0, exc)}) "
            f"after {log.rows} of {cfg.messages} messages"
        ) from exc
    except (TimeoutError, BlockingIOError) as exc:
        raise PeerTimeout(
            f"receiver stuck: no buffer space for {cfg.timeout} s at message {log.rows} "
            f"({log.rows} of {cfg.messages} sent); the receiver is not reading"
        ) from exc
    finally:
        sock.setblocking(True)


# Sleep until this close to a slot's start, then spin (as the receiver does):
# time.sleep overshoots ~80 us here.
SPIN_NS = 200_000


def _wait_for_slot(pacer: Pacer, sampler: Sampler | None) -> None:
    """Wait until the next message's slot starts (its start: max(previous end, now))."""
    now = time.perf_counter_ns
    pacer.pace(WAITING)  # the next message is always ready: slot i starts at i/R
    start = pacer.start_ns
    remaining = start - now()
    if remaining > SPIN_NS:
        if sampler is None:
            time.sleep((remaining - SPIN_NS) / 1e9)
        else:
            sampler.sample_if_due(now())
            with sampler.waiting():  # the thread samples while this one sleeps
                time.sleep((remaining - SPIN_NS) / 1e9)
    while now() < start:
        pass


def set_notsent_lowat(sock: socket.socket, lowat: int) -> int | None:
    """setsockopt(TCP_NOTSENT_LOWAT); return what getsockopt then reports (None: absent)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, lowat)
        return sock.getsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT)
    except OSError as exc:
        raise PeerError(f"TCP_NOTSENT_LOWAT {lowat} refused: {exc.strerror or exc}") from exc


TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)  # include/uapi/linux/tcp.h


def frames_per_block(size: int) -> int:
    """Frames framed per numpy step: up to 1024 (measured best), within 1 MiB of buffer.

    Per block of 1,024 the loop pays ~10-20 us of framing (two strided copies from the
    precomputed headers) and ~16-35 us storing the block's timestamps, measured alone;
    inside the loop, its caches cold after a thousand sends, 25-35 and 42-48 us, 3.4 -
    4.4% of the sending time with the inline sample at 2.1 - 2.4% more (``bench.floor
    --breakdown --pin --messages 1000000``). Smaller blocks, for cache, measured no better
    at 1 KiB (``bench.floor --pin --blocks 1024 512 256 128``).
    """
    return max(1, min(1024, (1 << 20) // size))


def _finish(sock: socket.socket, rest: memoryview, use_select: bool, timeout: float | None) -> int:
    """Send the rest of a message, waiting as the mode says; return the waits taken."""
    if not use_select:
        # A real blocking send: the kernel sleeps in sk_stream_wait_memory and wakes us
        # when the queue has drained to ~2/3 of SO_SNDBUF. SO_SNDTIMEO (if --timeout)
        # bounds the wait; an expired wait raises EAGAIN.
        sock.setblocking(True)
        try:
            sock.sendall(rest)
        finally:
            sock.setblocking(False)
        return 1
    waits = 0
    while rest:
        _, writable, _ = select.select([], [sock], [], timeout)
        waits += 1
        if not writable:
            raise TimeoutError("no writable event")
        try:
            n = sock.send(rest)
        except BlockingIOError:
            continue
        rest = rest[n:]
    return waits


def _buffers(cfg: RunConfig, start: probes.BufferSizes, end: probes.BufferSizes) -> dict[str, Any]:
    return {
        "requested": {"sndbuf": cfg.sndbuf, "rcvbuf": None},
        "granted_start": start.as_dict(),
        "granted_end": end.as_dict(),
    }


def open_connection(
    cfg: RunConfig, to: Address, run_dir: Path | Callable[[], Path], result: SenderResult
) -> tuple[socket.socket, Path]:
    """Connect, create the run directory (``run_dir`` may be a callable that does, called
    only once the connection stands) and set the sender's socket options from ``cfg``
    (TCP_NOTSENT_LOWAT; TCP_NODELAY for a paced sender). The socket is closed if any of
    it fails. Shared by every sender mode."""
    result.peer = str(to)
    sock = connect(cfg, to)
    try:
        if callable(run_dir):
            run_dir = run_dir()
        if cfg.notsent_lowat is not None:
            result.notsent_lowat = set_notsent_lowat(sock, cfg.notsent_lowat)
        if cfg.send_rate is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            result.nodelay = True
    except BaseException:
        sock.close()
        raise
    return sock, run_dir


def identify(sock: socket.socket, result: SenderResult) -> probes.BufferSizes:
    """Record the connected socket's address and SO_COOKIE; return its buffer sizes."""
    local = sock.getsockname()
    result.address = f"{local[0]}:{local[1]}"
    result.cookie = probes.so_cookie(sock)
    return probes.buffer_sizes(sock)


def run_sender(
    cfg: RunConfig,
    to: Address,
    run_dir: Path | Callable[[], Path],
    progress: MutableSequence[int] | None = None,
    result: SenderResult | None = None,
    clock_sync: bool = False,
) -> SenderResult:
    """Connect, send, drain, and write the sender's tables into ``run_dir``.

    Always writes what it recorded, also when the connection fails part-way or the
    process is interrupted; the returned result says whether the run was complete.
    ``run_dir`` may be a callable that creates it: it is then called only once the
    connection stands, so a sender that cannot connect leaves no run directory behind.
    Pass ``result`` to keep the record when this raises: it is filled as the run goes.
    ``clock_sync``: exchange clock readings with the receiver before and after the
    data (bufdemo.experiment.clocksync), for a run across two hosts.
    """
    result = result if result is not None else SenderResult()
    if cfg.mode in ASYNCIO_MODES:  # the transport's buffer above the kernel's
        from bufdemo.experiment.asyncio_sender import run_asyncio_sender

        return run_asyncio_sender(cfg, to, run_dir, progress, result)
    # Framing is set up before connecting: nothing between the connection and the
    # first send but the hello, so the fill phase starts at the connection's t0.
    block = FrameBlock(cfg.size, frames_per_block(cfg.size))
    sock, run_dir = open_connection(cfg, to, run_dir, result)
    # Asked for before the hello: the offsets then count from the stream's first byte.
    no_sched = txstamps.sched_reason_of(sock) if cfg.timestamps else None
    stamp_reason = (
        txstamps.enable(sock, sched=no_sched is None)
        if cfg.timestamps
        else "not asked for (--timestamps; off by default: a timestamp wakes a blocked send())"
    )
    stamp_reader: txstamps.TxStampProcess | None = None
    log = SendLog(cfg.messages, cfg.size)
    blocking = BlockingLog()
    sent = array("q", [0])
    # The first clock frames go before the data; their answers are read as the samples
    # find them in the receive queue, and after the data.
    early = EarlyClockAnswers(sock, result.clock) if clock_sync else None
    sampler = Sampler(
        sock,
        cfg.sample_interval,
        count=lambda: sent[0],
        progress=progress,
        counters={PROGRESS_BLOCKING: lambda: len(blocking)},
        gated=True,  # the send loop samples inline while it runs (see Sampler)
        on_unread=None if early is None else early.poll,
    )
    try:
        result.t_connected_ns = time.perf_counter_ns()
        start_sizes = identify(sock, result)
        sampler.start()
        hello = encode_hello(Hello(cfg.token, cfg.messages, cfg.size))
        if stamp_reason is None:
            stamp_reader = txstamps.TxStampProcess(sock, len(hello), no_sched)
            stamp_reader.start()
        try:
            sock.sendall(hello)
            if early is not None:
                early.send_frames()
                if stamp_reader is not None:  # the clock frames precede the first message
                    stamp_reader.base += (HEADER_SIZE + CLOCK_SIZE) * len(clocksync.BEFORE)
            send_loop(sock, cfg, log, blocking, sent, block, sampler, progress=progress)
            result.t_done_ns = time.perf_counter_ns()
            sampler.resume()  # the drain is a wait in the kernel: the thread samples it
            if early is not None and early.finish():  # a bufdemo receiver: it answered
                _clock_exchanges(sock, cfg, result.clock, clocksync.AFTER)
            _drain(sock, cfg, log.rows)
            result.complete = True
        except BufdemoError as exc:
            result.error = str(exc)
            raise
        except KeyboardInterrupt:
            result.error = f"interrupted after {log.rows} of {cfg.messages} messages"
            raise
        finally:
            cleanup_begins()  # a stop signal now cannot cut the tables short
            sampler.stop()
            if stamp_reader is not None:
                stamp_reader.stop()
                stamp_reader.data_bytes = log.rows * cfg.size
                result.timestamping = stamp_reader.record()
            else:
                result.timestamping = txstamps.disabled_record(stamp_reason or "not started")
            result.buffers = _buffers(cfg, start_sizes, probes.buffer_sizes(sock))
    finally:
        result.messages = log.rows
        result.blocking_sends = len(blocking)
        if progress is not None:
            progress[PROGRESS_DONE] = 1
        sock.close()
        log.write(run_dir / runformat.SENDS.file, blocking)
        blocking.write(run_dir / runformat.BLOCKING_SENDS.file)
        sampler.write(run_dir / runformat.SENDER_SAMPLES.file)
        if stamp_reader is not None:
            stamp_reader.write(run_dir / runformat.TX_TIMESTAMPS.file)
    return result


# A bufdemo receiver answers the clock frames sent before the data as soon as it reads
# them, right after the hello: within a round trip plus creating its run directory. A
# peer that is not one (nc, a socket that never reads) never does: the run goes on
# without clock readings once this long has passed since the first frame (a wait only
# for a run shorter than that, and only after its last message).
FIRST_ANSWER_WAIT = 2.0
CLOCK_TIMEOUT = 30.0  # any later answer: the receiver has shown it answers


class EarlyClockAnswers:
    """The clock exchanges before the data (clocksync.BEFORE), without holding it up.

    :meth:`send_frames` sends the frames back to back right after the hello, and the data
    follows at once: waiting for the answers would cost a user whose peer is not a
    bufdemo receiver (nc, a plain reader) FIRST_ANSWER_WAIT before the first message.
    The answers are read by :meth:`poll`, which the sender's sampler calls when a sample
    finds bytes in the receive queue (the reverse direction carries nothing else), and
    by :meth:`finish` after the data. An answer's t4 is when the kernel stamped its
    arrival (SO_TIMESTAMPNS: CLOCK_REALTIME, moved onto this process's CLOCK_MONOTONIC),
    not when it was read. Where the kernel gives no stamp, t4 is the time of the read:
    a longer round trip, from which the estimate (the exchange with the shortest one)
    states a larger error.

    No thread is started for them: with a second thread alive, even asleep, every
    system call of the send loop takes the kernel's and the C library's multi-threaded
    paths (docs/benchmarks.md, "The clock answers without a thread"). They are not left
    unread either: a socket closed with unread bytes resets the connection, and a
    sender killed mid-run would then lose what its send queue still held.
    """

    def __init__(self, sock: socket.socket, clock: list[dict[str, int]]) -> None:
        self._sock = sock
        self.clock = clock  # answers, appended as they are read
        self.t_first_ns = 0
        self.eof = False
        self.error: str | None = None
        self.stamped = False  # SO_TIMESTAMPNS is on: arrivals are stamped by the kernel
        self._decoder = Decoder(CLOCK_SIZE)
        self._lock = threading.Lock()  # poll() from the sampler's thread, finish() here
        self._deadline = 0.0  # perf_counter() seconds: the next answer is given up after
        self._finished = False  # finish() has returned: later bytes are not ours to read
        # Asked for here, right after the connection, not with the frames: the kernel
        # switches receive stamping on a moment after the first socket on the machine
        # asks for it (a deferred work item), and an answer that arrives before that
        # carries no stamp (docs/two-hosts.md, "t4").
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            self.stamped = True
        except OSError:
            self.stamped = False  # not Linux: t4 is the time of the read

    def send_frames(self) -> None:
        self.t_first_ns = time.perf_counter_ns()
        self._deadline = self.t_first_ns / 1e9 + FIRST_ANSWER_WAIT
        for seq in clocksync.BEFORE:
            self._sock.sendall(encode_clock(ClockReading(seq, time.perf_counter_ns())))

    @property
    def done(self) -> bool:
        """Every answer is in, or none will be taken (end of file, not an answer)."""
        return len(self.clock) >= len(clocksync.BEFORE) or self.eof or self.error is not None

    def poll(self) -> None:
        """Read the answers already there, without waiting."""
        if self._finished or self.done or not self._lock.acquire(blocking=False):
            return  # finish() is reading them, or has given up on them
        try:
            self._read()
        finally:
            self._lock.release()

    def finish(self) -> bool:
        """Read the answers still due, and say whether the receiver answers clock frames.
        The first is waited for up to FIRST_ANSWER_WAIT after the first frame was sent (a
        wait only if the data took less), each later one up to CLOCK_TIMEOUT."""
        with self._lock:
            try:
                while not self._read():
                    left = self._deadline - time.perf_counter()
                    if left <= 0:
                        break
                    ready, _, _ = select.select([self._sock], [], [], left)
                    if not ready:
                        break
                    if probes.queue_in(self._sock) == 0:  # woke for the error queue only:
                        time.sleep(0.001)  # transmit timestamps, which their reader drains
            finally:
                self._finished = True  # what comes later is the exchanges' after the data
                with contextlib.suppress(OSError):  # later exchanges stamp t4 as they read
                    self._sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 0)
        return bool(self.clock) and self.error is None

    def _read(self) -> bool:
        """Take every answer in the receive queue; whether that made us :attr:`done`."""
        try:
            while not self.done:
                try:  # one answer a read: the kernel reports the last arrival a read takes
                    data, anc, _, _ = self._sock.recvmsg(
                        HEADER_SIZE + CLOCK_SIZE, errqueue.ANC_SIZE, socket.MSG_DONTWAIT
                    )
                except BlockingIOError:
                    return False
                t_read = time.perf_counter_ns()
                if not data:
                    self.eof = True
                    break
                self._decoder.receive_data(data)
                while (msg := self._decoder.next_message()) is not None:
                    reading = decode_clock(msg)
                    offset_ns = errqueue.clock_offset_ns()
                    t4 = arrival_ns(anc, offset_ns, reading.t1, t_read)
                    self.clock.append({**reading._asdict(), "t4": t4})
                    self._deadline = time.perf_counter() + CLOCK_TIMEOUT
        except (OSError, BufdemoError) as exc:  # not a bufdemo receiver's answer: no clocks
            self.error = str(exc)
        return True


# SOL_SOCKET's SO_TIMESTAMPNS (and SCM_TIMESTAMPNS) on Linux; not in Python's socket module.
SO_TIMESTAMPNS = 35


def arrival_ns(anc: list[tuple[int, int, bytes]], offset_ns: int, t1: int, t_read: int) -> int:
    """An answer's t4: the kernel's SCM_TIMESTAMPNS in ``anc`` (CLOCK_REALTIME) less
    ``offset_ns`` (CLOCK_REALTIME - CLOCK_MONOTONIC), or ``t_read`` where there is no
    such stamp or it falls outside [t1, t_read] (the clock stepped): never before the
    question was sent, never after the answer was read."""
    for level, ctype, data in anc:
        if level == socket.SOL_SOCKET and ctype == SO_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = struct.unpack_from("qq", data, 0)
            t4 = int(sec) * 1_000_000_000 + int(nsec) - offset_ns
            if t1 <= t4 <= t_read:
                return t4
    return t_read


def _clock_exchanges(
    sock: socket.socket, cfg: RunConfig, clock: list[dict[str, int]], seqs: range
) -> None:
    """Clock exchanges ``seqs``, one after the other: send t1, wait for the answer
    (t2, t3), note t4. The first after the data is only a marker: it waits behind the
    data, and its answer says the pipe is empty (clocksync.AFTER)."""
    decoder = Decoder(CLOCK_SIZE)
    for seq in seqs:
        sock.sendall(encode_clock(ClockReading(seq, time.perf_counter_ns())))
        wait: float | None = CLOCK_TIMEOUT
        if seq == seqs[0]:  # the marker waits until all the data was read: --timeout
            wait = cfg.timeout
        deadline = None if wait is None else time.monotonic() + wait
        while not clock or clock[-1]["seq"] != seq:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([sock], [], [], left)
            if not ready:
                raise PeerTimeout(f"the receiver did not answer clock frame {seq} within {wait} s")
            try:  # select() also wakes for the error queue (transmit timestamps): not data
                data = sock.recv(4096, socket.MSG_DONTWAIT)
            except BlockingIOError:
                time.sleep(0.001)  # the timestamp reader drains the error queue
                continue
            t4 = time.perf_counter_ns()
            if not data:
                raise PeerError("the receiver closed the connection during the clock exchange")
            decoder.receive_data(data)
            while (msg := decoder.next_message()) is not None:
                clock.append({**decode_clock(msg)._asdict(), "t4": t4})


def _drain(sock: socket.socket, cfg: RunConfig, sent: int) -> None:
    """FIN after the data, then wait until the receiver has read it all and closed."""
    try:
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(4096):
            pass  # the receiver sends nothing; anything else is ignored
    except (TimeoutError, BlockingIOError) as exc:
        raise drain_stuck(sent, cfg.timeout) from exc
    except ConnectionResetError as exc:
        raise drain_reset(sent) from exc


def drain_stuck(sent: int, timeout: float | None) -> PeerTimeout:
    """The error of a drain that outlived --timeout (every sender mode says it so)."""
    return PeerTimeout(
        f"receiver stuck: all {sent} messages sent, but the receiver has not finished "
        f"reading them within {timeout} s"
    )


def drain_reset(sent: int) -> PeerError:
    return PeerError(f"the receiver reset the connection before reading all {sent} messages")
