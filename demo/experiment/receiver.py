"""The receiver: a slow consumer with an exact, honest pace.

Service model (``recv_delay`` D): each message costs exactly D seconds of work.
Message i's service starts at ``max(target_end[i-1], arrival[i])`` and its target end
is ``start + D`` (the rule is :class:`~bufdemo.experiment.pacing.Pacer`'s). When the
frame was already waiting in the kernel, its arrival is not later than the previous
target end, so the start is that target: sleep overshoot is absorbed, not carried
forward, and the achieved mean service time is D. When the receiver had to wait for the
frame, the start is the moment it arrived: a receiver that was idle does not "catch up"
with a burst.

With a delay, the receiver reads exactly one frame at a time (one ``recv_into`` of the
announced frame size, no more), so every byte not yet consumed stays in the kernel's
receive queue, where SIOCINQ and the advertised window can see it. At ``--recv-delay 0``
nothing is meant to wait in the kernel, so it reads every frame the kernel has (up to
BULK_BYTES per call) and checks them as a block with numpy
(:mod:`~bufdemo.experiment.framecheck`): the receiver's own cost per message then falls
from ~5 us to well under 1 us, and a run at delay 0 shows the sender's ceiling, not the
receiver's. Either way every frame's sequence number and checksum are checked and the
consumed log has one row per message.

What reaches the loop: only the connection that presented a valid hello (and the run's
token, if one is set) within HELLO_TIMEOUT; strays are closed and counted. Then the
listener is closed. The consumed log is checkpointed to ``consumed.csv`` every 0.5 s by
the sampler thread, so even a SIGKILLed receiver leaves what it consumed.
"""

from __future__ import annotations

import contextlib
import hmac
import socket
import time
from collections.abc import Callable, MutableSequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bufdemo import probes, runformat
from bufdemo.errors import BufdemoError, PeerError, PeerTimeout, ProtocolError
from bufdemo.experiment import fastcsv
from bufdemo.experiment.config import MAX_MESSAGES, MAX_SIZE, RunConfig
from bufdemo.experiment.fastcsv import FastTableCheckpoint
from bufdemo.experiment.framecheck import BLOCK_MIN_FRAMES, BlockCheck, FrameChecker
from bufdemo.experiment.pacing import WAITING, Pacer
from bufdemo.experiment.recorder import (
    PROGRESS_DONE,
    PROGRESS_INTACT,
    ConsumedLog,
    Sampler,
    pack_int64s,
)
from bufdemo.experiment.wire import (
    CLOCK_SIZE,
    HEADER_SIZE,
    HELLO_SIZE,
    KIND_CLOCK,
    KIND_DATA,
    ClockReading,
    Decoder,
    Hello,
    Message,
    decode_clock,
    decode_hello,
    encode_clock,
)
from bufdemo.net import Address, timeval
from bufdemo.runformat import ReceiverRecord
from bufdemo.signals import cleanup_begins, stops_deferred

__all__ = ["ReceiverResult", "listen", "receive_loop", "run_receiver"]

# How long a new connection may take to present its hello frame before it is dropped:
# our sender sends it right after connect(); a port scanner or a stray client does not.
HELLO_TIMEOUT = 2.0
# Sleep until this close to a target, then spin: time.sleep overshoots ~80 us here.
SPIN_NS = 100_000
MAX_REJECTED = 100  # stray connections remembered in receiver.json (the count is exact)
# Rows preallocated from the hello's announced count; beyond this the log grows as
# messages actually arrive, so a hello cannot make the receiver allocate gigabytes.
PREALLOC_LIMIT = 1_000_000


@dataclass
class ReceiverResult:
    address: str = ""
    peer: str = ""
    t_connected_ns: int | None = None
    t_done_ns: int | None = None
    messages_expected: int | None = None
    messages: int = 0
    intact: int = 0
    corrupt: int = 0
    out_of_order: int = 0
    truncated_bytes: int = 0
    rejected: int = 0
    rejected_peers: list[str] = field(default_factory=list)
    buffers: dict[str, Any] = field(default_factory=dict)
    complete: bool = False
    error: str | None = None
    cookie: int | None = None  # SO_COOKIE of the connected socket (the trace's id)
    # The clock frames this receiver answered ({"seq", "t1", "t2", "t3"}), and the test
    # hook's shift of its clock (bufdemo.experiment.clocksync), 0 in normal use.
    clock: list[dict[str, int]] = field(default_factory=list)
    clock_shift_ns: int = 0

    def as_dict(self) -> ReceiverRecord:
        """The receiver's record in meta.json (and receiver.json)."""
        return {
            "address": self.address,
            "peer": self.peer,
            "t_connected_ns": self.t_connected_ns,
            "t_done_ns": self.t_done_ns,
            "messages_expected": self.messages_expected,
            "messages": self.messages,
            "intact": self.intact,
            "corrupt": self.corrupt,
            "out_of_order": self.out_of_order,
            "truncated_bytes": self.truncated_bytes,
            "rejected": self.rejected,
            "rejected_peers": list(self.rejected_peers),
            "buffers": self.buffers,
            "complete": self.complete,
            "error": self.error,
            "cookie": self.cookie,
            "clock": list(self.clock),
        }


def listen(cfg: RunConfig, address: Address) -> socket.socket:
    """A listening socket; SO_RCVBUF is set before listen() so the window scale fits it."""
    try:
        infos = socket.getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise BufdemoError(
            f"cannot resolve listen address {address.host!r}: {exc.strerror}"
        ) from exc
    family, socktype, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, socktype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if cfg.rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, cfg.rcvbuf)
        sock.bind(sockaddr)
        sock.listen(8)
    except OSError as exc:
        sock.close()
        raise BufdemoError(f"cannot listen on {address}: {exc.strerror or exc}") from exc
    return sock


def _read_hello(conn: socket.socket, max_size: int) -> Hello:
    """Read and check the hello; the whole frame must arrive within HELLO_TIMEOUT."""
    decoder = Decoder(max_length=HELLO_SIZE)
    deadline = time.monotonic() + HELLO_TIMEOUT
    while (msg := decoder.next_message()) is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:  # a peer trickling bytes must not hold the door open
            raise TimeoutError("no complete hello in time")
        conn.settimeout(remaining)
        data = conn.recv(decoder.bytes_needed())
        if not data:
            raise ProtocolError("connection closed before a hello frame")
        decoder.receive_data(data)
    hello = decode_hello(msg)
    if not HEADER_SIZE <= hello.size <= max_size:
        raise ProtocolError(f"hello announces frames of {hello.size} bytes (max {max_size})")
    if not 1 <= hello.messages <= MAX_MESSAGES:
        raise ProtocolError(f"hello announces {hello.messages} messages (max {MAX_MESSAGES})")
    return hello


def accept_sender(
    lsock: socket.socket,
    token: bytes | None,
    result: ReceiverResult,
    *,
    max_size: int = MAX_SIZE,
    timeout: float | None = None,
) -> tuple[socket.socket, Hello]:
    """Accept connections until one presents a valid hello (and ``token``, if given).

    Anything else (random bytes, a wrong token, silence) is closed and counted in
    ``result.rejected``; it never reaches the experiment.
    """
    lsock.settimeout(timeout)
    while True:
        try:
            conn, peer = lsock.accept()
        except TimeoutError as exc:
            raise PeerTimeout(f"no sender connected within {timeout} s") from exc
        try:
            hello = _read_hello(conn, max_size)
            if token is not None and not hmac.compare_digest(hello.token, token):
                raise ProtocolError("wrong run token")
        except (ProtocolError, OSError) as exc:
            conn.close()
            result.rejected += 1
            if len(result.rejected_peers) < MAX_REJECTED:
                reason = "silent" if isinstance(exc, TimeoutError) else str(exc)
                result.rejected_peers.append(f"{peer[0]}:{peer[1]}: {reason}")
            continue
        conn.settimeout(None)
        return conn, hello


def receive_loop(
    sock: socket.socket,
    hello: Hello,
    recv_delay: float,
    log: ConsumedLog,
    result: ReceiverResult,
    timeout: float | None = None,
    sampler: Sampler | None = None,
) -> None:
    """Consume frames at the configured pace until the sender's FIN.

    ``timeout`` only names the SO_RCVTIMEO the caller set, for the error message.
    ``sampler``, if given, is a gated one: the loops take its samples inline when due
    (between frames, and in the pacing's sleeps) and open its gate only while they wait
    in the kernel for data, as the sender's loop does (see
    :class:`~bufdemo.experiment.recorder.Sampler`).
    The service model is a :class:`Pacer`'s: the loop tells it when each frame was ready
    and sleeps until the target end it returns.

    Frames of the announced size are read whole and checked by a
    :class:`~bufdemo.experiment.framecheck.FrameChecker`: with a delay, one frame per
    ``recv_into`` (the rest stays in the kernel); at delay 0, as many as the kernel has
    (up to BULK_BYTES) per ``recv_into``, checked as a block. A frame that is not a
    well-formed data frame of that size (a clock frame, or an anomaly) hands the stream
    to the incremental :class:`Decoder` (which reads one frame at a time, answers a
    clock frame, and raises the precise error), which hands it back as soon as it holds
    nothing more after a clock frame or a data frame of the announced size.
    """
    delay_ns = round(recv_delay * 1e9)
    # Ready to serve from now on: a first frame already waiting starts here.
    pacer = Pacer(delay_ns, origin_ns=time.perf_counter_ns())
    checker = FrameChecker(hello.size)
    loop = _bulk_loop if delay_ns == 0 else _frame_loop
    # A clock frame (a by-hand sender's, before and after the data) is not a data frame:
    # the fast loops hand it to the decoder, which answers it and hands back.
    decoder = Decoder(max_length=max(hello.size - HEADER_SIZE, CLOCK_SIZE))
    inline = _Inline(sampler)
    while True:
        rest = loop(sock, hello, pacer, checker, log, result, timeout, inline)
        if rest is None:
            return
        decoder.receive_data(rest)
        with inline.waiting():  # the rare general loop: the thread samples throughout
            resume = _decoder_loop(
                sock, hello, pacer, decoder, checker.expected, log, result, timeout
            )
        if resume is None:
            return
        checker.expected = resume


NEVER = 1 << 62  # a sample due time that never comes (no sampler)


class _Inline:
    """A gated sampler as the receive loops use it (or none: then nothing is ever due).

    The loops keep :attr:`due` in a local, compare it with a clock reading they take
    anyway, and call :meth:`sample` when it is reached; :meth:`nap` sleeps as the
    pacing asks, waking for the samples that fall due meanwhile; :meth:`waiting` opens
    the thread's gate around a wait in the kernel.
    """

    def __init__(self, sampler: Sampler | None) -> None:
        self._sampler = sampler

    @property
    def due(self) -> int:
        return NEVER if self._sampler is None else self._sampler.next_due_ns

    def sample(self) -> int:
        """The sample that is due (unless the thread took it); return when the next is."""
        if self._sampler is None:
            return NEVER
        self._sampler.sample_if_due(time.perf_counter_ns())
        return self._sampler.next_due_ns

    def nap(self, until_ns: int) -> None:
        """Sleep until ``until_ns``, taking each sample that falls due before it."""
        now, sleep = time.perf_counter_ns, time.sleep
        while (t := now()) < until_ns:
            due = self.due
            if due <= t:
                self.sample()  # the next is due an interval later: the loop goes on
            else:
                sleep((min(due, until_ns) - t) / 1e9)

    def waiting(self) -> contextlib.AbstractContextManager[None]:
        """The thread's gate open around a wait in the kernel (:meth:`Sampler.waiting`)."""
        return contextlib.nullcontext() if self._sampler is None else self._sampler.waiting()


def _foreign(buf: bytearray, n: int, size: int) -> bool:
    """The first ``n`` bytes of ``buf`` (at least a header) start a frame that is not a
    data frame of ``size`` bytes: a clock frame, or garbage for the decoder to name."""
    kind = buf[4]
    length = int.from_bytes(buf[16:20], "big")
    return kind != KIND_DATA or length != size - HEADER_SIZE


# At --recv-delay 0, bytes asked of the kernel per recv_into: many frames per syscall
# (64 B frames: 4,096). Larger reads gain nothing once the per-call cost is amortised.
BULK_BYTES = 1 << 18


def _stuck(timeout: float | None, log: ConsumedLog, hello: Hello) -> PeerTimeout:
    return PeerTimeout(
        f"sender stuck: no data for {timeout} s after {log.rows} of "
        f"{hello.messages} messages; the sender is not sending"
    )


def _record(
    log: ConsumedLog,
    result: ReceiverResult,
    seq: int,
    t_read: int,
    start: int,
    t_end: int,
    ok: bool,
    in_order: bool,
    whole: bool = True,
) -> None:
    """One consumed row; ``ok``: the checksum matched, ``whole``: the announced length."""
    i = log.rows
    if i == log.capacity:
        log.grow()
    intact = ok and in_order and whole
    log.seq[i] = seq
    log.t_read_ns[i] = t_read
    log.t_start_ns[i] = start
    log.t_end_ns[i] = t_end
    log.intact[i] = intact
    log.rows = i + 1
    result.messages = i + 1
    result.t_done_ns = t_end
    if intact:
        result.intact += 1
    else:
        result.corrupt += not ok
        result.out_of_order += not in_order


def _frame_loop(
    sock: socket.socket,
    hello: Hello,
    pacer: Pacer,
    checker: FrameChecker,
    log: ConsumedLog,
    result: ReceiverResult,
    timeout: float | None,
    inline: _Inline,
) -> bytearray | None:
    """One frame per recv_into, paced; the rest stays in the kernel.

    Each frame is read into the next slot of a batch; its times are noted as it is
    served, and the batch is checked and recorded at once when it is full or before
    the receiver waits for data (see BATCH_NS). Per message the loop does one
    ``recv_into``, two clock reads (three or more when it waits for the target end), the
    pacing rule and three list stores, nothing else: that cost bounds the shortest delay
    it can honour. Returns None at the sender's FIN, or the bytes from the first
    anomalous frame on (those frames are not recorded here).
    """
    size = hello.size
    delay = pacer.interval_ns
    batch = max(1, min(BATCH_FRAMES, BATCH_NS // max(delay, 1)))
    buf = bytearray(size * batch)
    view = memoryview(buf)
    views = _slots(view, size, batch)  # (a comprehension here would make size a cell)
    # The batch's times, stored per message into lists (a list store is a few
    # instructions, an array("q") store ~500: it parses the int) and packed per batch.
    reads, starts, ends = [0] * batch, [0] * batch, [0] * batch
    recv_into = sock.recv_into
    now = time.perf_counter_ns
    dontwait = socket.MSG_DONTWAIT
    start, end = pacer.start_ns, pacer.end_ns
    due, nap = inline.due, inline.nap
    j = 0
    # The first frame read after entering (the start, or back from the decoder) may be
    # a clock frame: a by-hand sender's come right before its data, which fills the
    # slot. It is checked before it is paced, once per entry: else a batch of misread
    # slots would be served before the check found them, and the answers held up.
    entering = True
    try:
        while True:
            try:
                n = recv_into(views[j], size, dontwait)
                waited = n < size
            except BlockingIOError:
                n, waited = 0, True
            if waited:  # about to wait in the kernel (or at the FIN): record what we have
                if j:
                    with stops_deferred():  # recorded and j cleared, or neither
                        rest = _flush(buf, j, n, checker, log, result, reads, starts, ends)
                        flushed, j = j, 0
                    if rest is not None:
                        pacer.start_ns, pacer.end_ns = start, end
                        return rest
                    buf[:n] = buf[flushed * size : flushed * size + n]
                if n == 0:
                    try:
                        with inline.waiting():
                            n = recv_into(views[0], size)
                    except (TimeoutError, BlockingIOError) as exc:  # SO_RCVTIMEO expired
                        raise _stuck(timeout, log, hello) from exc
                    due = inline.due
                    if n == 0:
                        return None
                # Not MSG_WAITALL: a shorter frame (a clock frame, which its sender
                # waits to have answered) must not wait for bytes that never come.
                while n < size:
                    if n >= HEADER_SIZE and _foreign(buf, n, size):
                        pacer.start_ns, pacer.end_ns = start, end
                        return buf[:n]
                    try:
                        with inline.waiting():
                            got = recv_into(views[0][n:], size - n)
                    except (TimeoutError, BlockingIOError) as exc:
                        raise _stuck(timeout, log, hello) from exc
                    due = inline.due
                    if got == 0:
                        result.truncated_bytes = n
                        return None
                    n += got
            if entering:
                entering = False
                if _foreign(buf, n, size):  # slot 0: j is 0 on entry
                    pacer.start_ns, pacer.end_ns = start, end
                    return buf[:n]
            t_read = now()
            # The pacing rule (Pacer.pace), inline: a frame we had to wait for starts when
            # it was read, one already in the kernel at the previous target end.
            start = t_read if waited and t_read > end else end
            end = start + delay
            reads[j] = t_read
            starts[j] = start
            t_end = now()
            if t_end < end:  # else behind schedule (catching up): served already
                if end - t_end > SPIN_NS:
                    nap(end - SPIN_NS)
                    due = inline.due
                while (t_end := now()) < end:
                    pass
            ends[j] = t_end
            if t_end >= due:
                due = inline.sample()
            j += 1
            if j == batch:
                with stops_deferred():  # else the handler below would record it twice
                    rest = _flush(buf, j, 0, checker, log, result, reads, starts, ends)
                    j = 0
                if rest is not None:
                    pacer.start_ns, pacer.end_ns = start, end
                    return rest
    except BaseException:  # served frames are recorded also when the run breaks off
        if j:
            _flush(buf, j, 0, checker, log, result, reads, starts, ends)
        raise


def _slots(view: memoryview, size: int, count: int) -> list[memoryview]:
    """``count`` consecutive ``size``-byte slices of ``view``."""
    return [view[j * size : (j + 1) * size] for j in range(count)]


# The one-at-a-time loop checks and records its frames in batches: at most BATCH_FRAMES,
# and at most BATCH_NS of service, so the counts the sampler and the live display read
# lag by ~2 ms at most (and not at all while the receiver waits for data).
BATCH_FRAMES = 256
BATCH_NS = 2_000_000


def _flush(
    buf: bytearray,
    frames: int,
    partial: int,
    checker: FrameChecker,
    log: ConsumedLog,
    result: ReceiverResult,
    reads: list[int],
    starts: list[int],
    ends: list[int],
) -> bytearray | None:
    """Check and record the batch's ``frames`` frames; the bytes from an anomaly on."""
    block = checker.check(buf, frames)
    k = block.frames
    _record_block(log, result, block, reads, starts, ends)
    if block.anomaly:
        size = checker.size
        return buf[k * size : frames * size + partial]
    return None


def _bulk_loop(
    sock: socket.socket,
    hello: Hello,
    pacer: Pacer,
    checker: FrameChecker,
    log: ConsumedLog,
    result: ReceiverResult,
    timeout: float | None,
    inline: _Inline,
) -> bytearray | None:
    """Delay 0: every frame the kernel has, up to BULK_BYTES per recv_into, checked at once.

    Every frame read by one call shares its t_read, t_start and t_end (service time
    0 by definition; t_end is when the block was checked). Returns None at the
    sender's FIN, or the unconsumed bytes from the first anomalous frame on.
    """
    size = hello.size
    cap = max(size, BULK_BYTES // size * size)
    buf = bytearray(cap)
    view = memoryview(buf)
    recv_into = sock.recv_into
    now = time.perf_counter_ns
    dontwait = socket.MSG_DONTWAIT
    due = inline.due
    filled = 0
    while True:
        try:
            got = recv_into(view[filled:], cap - filled, dontwait)
            waited = False
        except BlockingIOError:
            waited = True
            try:
                with inline.waiting():
                    got = recv_into(view[filled:], cap - filled)
            except (TimeoutError, BlockingIOError) as exc:  # SO_RCVTIMEO expired
                raise _stuck(timeout, log, hello) from exc
            due = inline.due
        if got == 0:
            result.truncated_bytes = filled
            return None
        filled += got
        frames = filled // size
        if frames == 0:
            if filled >= HEADER_SIZE and _foreign(buf, filled, size):
                return buf[:filled]  # a clock frame: the decoder answers it
            continue
        t_read = now()
        start = pacer.pace(t_read if waited else WAITING)
        if frames < BLOCK_MIN_FRAMES:
            for j in range(frames):
                checked = checker.check_one(buf, j * size)
                if checked is None:
                    return buf[j * size : filled]
                seq, ok, in_order = checked
                _record(log, result, seq, t_read, start, now(), ok, in_order)
        else:
            block = checker.check_block(buf, frames)  # a bytearray: one memcmp
            with stops_deferred():  # the rows and the counts together (32 frames or more)
                _record_block(log, result, block, t_read, start, now())
            if block.anomaly:
                return buf[block.frames * size : filled]
        used = frames * size
        buf[: filled - used] = buf[used:filled]
        filled -= used
        if t_read >= due:
            due = inline.sample()
        if filled >= HEADER_SIZE and _foreign(buf, filled, size):
            # A clock frame read with the last messages: its sender waits for the answer
            # and sends nothing more until then.
            return buf[:filled]


def _record_block(
    log: ConsumedLog,
    result: ReceiverResult,
    block: BlockCheck,
    t_read: int | list[int],
    start: int | list[int],
    t_end: int | list[int],
) -> None:
    """Record the block's frames as the next rows. Each time is one for all of them (an
    int) or one per frame (a list, at least ``block.frames`` long, packed straight into
    its column by :func:`pack_int64s`)."""
    k = block.frames
    if k == 0:
        return
    i = log.rows
    while log.capacity < i + k:
        log.grow()
    for column, values in ((log.seq, block.seq), (log.intact, block.intact)):
        np.frombuffer(column, dtype=column.typecode)[i : i + k] = values
    for column, times in ((log.t_read_ns, t_read), (log.t_start_ns, start), (log.t_end_ns, t_end)):
        if isinstance(times, int):
            np.frombuffer(column, dtype=column.typecode)[i : i + k] = times
        else:
            pack_int64s(column, i, times[:k] if len(times) > k else times)
    intact = int(np.count_nonzero(block.intact))
    log.rows = i + k
    result.messages = i + k
    result.t_done_ns = t_end if isinstance(t_end, int) else t_end[k - 1]
    result.intact += intact
    result.corrupt += block.corrupt
    result.out_of_order += block.out_of_order


def _decoder_loop(
    sock: socket.socket,
    hello: Hello,
    pacer: Pacer,
    decoder: Decoder,
    expected: int,
    log: ConsumedLog,
    result: ReceiverResult,
    timeout: float | None,
) -> int | None:
    """The general loop: one frame at a time through the incremental Decoder.

    Returns None at the sender's FIN, or the next expected sequence number as soon as
    it holds nothing more, after a clock frame answered or a data frame of the announced
    size recorded: the fast loop takes over again (a by-hand sender's data follows its
    clock frames at once, and would otherwise all go through here). Frames of another
    length stay here: the fast loops would only hand each back."""
    plen = hello.size - HEADER_SIZE
    delay_ns = pacer.interval_ns
    now = time.perf_counter_ns
    sleep = time.sleep
    recv = sock.recv
    dontwait = socket.MSG_DONTWAIT
    pace = pacer.pace
    while True:
        waited = False
        while (msg := decoder.next_message()) is None:
            need = decoder.bytes_needed()
            try:
                data = recv(need, dontwait)
            except BlockingIOError:
                waited = True
                try:
                    data = recv(need)
                except (TimeoutError, BlockingIOError) as exc:  # SO_RCVTIMEO expired
                    raise _stuck(timeout, log, hello) from exc
            if not data:
                result.truncated_bytes = decoder.buffered
                return None
            decoder.receive_data(data)
        t_read = now()
        if msg.kind == KIND_CLOCK:  # answered at once, outside the service model
            _answer_clock(sock, msg, t_read, result)
            if not decoder.buffered:
                return expected  # back to the fast loop, from the next frame on
            continue
        if msg.kind != KIND_DATA:
            raise ProtocolError(f"unexpected frame kind {msg.kind} after the hello")
        target = pace(t_read if waited else WAITING)
        start = pacer.start_ns
        if delay_ns:
            remaining = target - now()
            if remaining > SPIN_NS:
                sleep((remaining - SPIN_NS) / 1e9)
            while now() < target:
                pass
        t_end = now()
        in_order = msg.seq == expected
        expected = msg.seq + 1
        whole = len(msg.payload) == plen
        _record(log, result, msg.seq, t_read, start, t_end, msg.intact, in_order, whole)
        if whole and not decoder.buffered:
            return expected  # back to the fast loop, from the next frame on


def _answer_clock(sock: socket.socket, msg: Message, t_read: int, result: ReceiverResult) -> None:
    """Answer a clock frame with t2 (read) and t3 (now), on this side's clock (+ the
    test hook's shift, bufdemo.experiment.clocksync); keep the three readings."""
    shift = result.clock_shift_ns
    asked = decode_clock(msg)
    reading = ClockReading(asked.seq, asked.t1, t_read + shift, time.perf_counter_ns() + shift)
    sock.sendall(encode_clock(reading))
    result.clock.append(reading._asdict())


_ACCEPT_TIMEOUT_FROM_CONFIG = -1.0  # sentinel: "use cfg.timeout" (None means no limit)


def run_receiver(
    cfg: RunConfig,
    address: Address,
    run_dir: Path | Callable[[], Path],
    *,
    token: bytes | None,
    on_listening: Callable[[Address], None] = lambda a: None,
    progress: MutableSequence[int] | None = None,
    max_size: int = MAX_SIZE,
    accept_timeout: float | None = _ACCEPT_TIMEOUT_FROM_CONFIG,
    result: ReceiverResult | None = None,
) -> ReceiverResult:
    """Listen, accept our sender, consume until its FIN, write the receiver's tables.

    ``run_dir`` may be a callable that creates it: it is then called only once a sender
    has been accepted, so a receiver that fails before (port in use, no sender within
    ``accept_timeout``, Ctrl-C while waiting) leaves no run directory behind.
    ``accept_timeout`` defaults to ``cfg.timeout``; None waits for ever. Pass ``result``
    to keep the record when this raises: it is filled as the run goes.
    """
    result = result if result is not None else ReceiverResult()
    if accept_timeout == _ACCEPT_TIMEOUT_FROM_CONFIG:
        accept_timeout = cfg.timeout
    lsock = listen(cfg, address)
    try:
        host, port = lsock.getsockname()[:2]
        result.address = str(Address(host, port))
        on_listening(Address(host, port))
        conn, hello = accept_sender(lsock, token, result, max_size=max_size, timeout=accept_timeout)
    finally:
        lsock.close()  # one sender per run: later connections are refused by the kernel
    try:
        result.t_connected_ns = time.perf_counter_ns()
        peer = conn.getpeername()
        result.peer = f"{peer[0]}:{peer[1]}"
        result.cookie = probes.so_cookie(conn)
        result.messages_expected = hello.messages
        if cfg.timeout is not None:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval(cfg.timeout))
        if callable(run_dir):
            run_dir = run_dir()
    except BaseException:
        conn.close()
        raise
    log = ConsumedLog(min(hello.messages, PREALLOC_LIMIT))
    consumed_path = run_dir / runformat.CONSUMED.file
    samples_path = run_dir / runformat.RECEIVER_SAMPLES.file

    def rows_to_checkpoint() -> int:
        n = log.rows
        sampler.count_at_least(n)  # the live count is never behind consumed.csv
        return n

    # consumed.csv formatted by numpy: the checkpoint thread shares this process's GIL.
    checkpoint = FastTableCheckpoint(consumed_path, log.columns, rows_to_checkpoint)
    sampler = Sampler(
        conn,
        cfg.sample_interval,
        count=lambda: log.rows,
        progress=progress,
        counters={PROGRESS_INTACT: lambda: result.intact},
        checkpoints=[checkpoint],
        checkpoint_samples=samples_path,
        gated=True,  # the receive loops sample inline while they run (see Sampler)
    )
    start_sizes = probes.buffer_sizes(conn)
    try:
        sampler.start()
        try:
            receive_loop(
                conn, hello, cfg.recv_delay, log, result, timeout=cfg.timeout, sampler=sampler
            )
        except KeyboardInterrupt:
            result.error = f"interrupted after {log.rows} of {hello.messages} messages"
            raise
        except ConnectionResetError as exc:
            result.error = (
                f"the sender reset the connection after {log.rows} of {hello.messages} "
                f"messages; message {log.rows} never arrived whole"
            )
            raise PeerError(result.error) from exc
        except BufdemoError as exc:
            result.error = str(exc)
            raise
        finally:
            cleanup_begins()  # a stop signal now cannot cut the tables short
            sampler.stop()
            result.buffers = {
                "requested": {"sndbuf": None, "rcvbuf": cfg.rcvbuf},
                "granted_start": start_sizes.as_dict(),
                "granted_end": probes.buffer_sizes(conn).as_dict(),
            }
        if result.messages < hello.messages:
            cut = (
                f"message {result.messages} arrived only in part "
                f"({result.truncated_bytes} of {hello.size} bytes)"
                if result.truncated_bytes
                else f"message {result.messages} never arrived"
            )
            result.error = (
                f"truncated stream: the sender closed the connection after "
                f"{result.messages} of {hello.messages} messages; {cut}"
            )
        else:
            result.complete = result.messages == hello.messages
    finally:
        if progress is not None:
            progress[PROGRESS_DONE] = 1
        conn.close()
        if checkpoint.written and sampler.checkpoint_error is None:
            checkpoint.flush()  # the checkpoints wrote the rest: only the last rows are new
        else:
            fastcsv.write_table(consumed_path, log.columns(), log.rows)
        sampler.write(samples_path)
    return result
