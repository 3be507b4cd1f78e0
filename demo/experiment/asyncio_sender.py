"""The asyncio sender: the buffer above the kernel's.

Most Python code that meets backpressure never calls ``send()``: it calls
``StreamWriter.write()``, and the bytes wait in the transport's user-space buffer (a
``bytearray`` in the selector transport) above the kernel's send queue. The mechanism,
as CPython's ``asyncio/selector_events.py`` and ``streams.py`` implement it:

- ``write(data)`` never blocks and never refuses. With an empty buffer it tries
  ``sock.send()`` at once; whatever the kernel does not take is *copied* into the buffer,
  and the event loop sends it later, when the socket is writable.
- When the buffer grows above the *high-water mark* (64 KiB by default) the transport
  calls the protocol's ``pause_writing()``; when the loop has sent it down to the
  *low-water mark* (16 KiB by default, high/4) it calls ``resume_writing()``.
- ``await drain()`` returns at once unless the protocol is paused; then it waits for
  ``resume_writing()``: down to the low-water mark, not to an empty buffer.

So there are two modes:

- ``asyncio``: ``write()`` then ``await drain()`` for every message. A *blocking send*
  in this mode is a ``drain()`` that had to wait (the protocol was paused: the buffer
  was above the high-water mark right after the ``write()``, which is exactly the
  condition under which asyncio pauses it). Its row in blocking_sends.csv spans the wait,
  from pause to resume, with the kernel's queue probed at both ends; ``accepted_first``
  is the whole message (``write()`` always takes it) and ``bytes_after_wait`` 0.
- ``asyncio-nodrain``: ``write()`` only, yielding to the loop once per block of frames.
  The sender is far faster than the receiver, so almost every message waits in the
  transport's buffer: the process's memory grows by the bytes the kernel could not hold.
  Bounded by ``--messages``; the run then waits until the loop has sent everything.

Besides the tables every mode writes, a thread samples ``transport_samples.csv`` on the
run's clock (``time.perf_counter_ns``): the transport's buffered bytes
(``get_write_buffer_size()``, ``len()`` of a bytearray, safe to read from a thread), the
kernel's send queue of the same socket, and the process's RSS (psutil). Both sampler
threads spool their rows to disk every half second and drop them from memory (unlike the
blocking sender's, whose thread must stay parked while its loop runs): the RSS then
measures the program, with the recording's own bytes (the ``recorder`` column) about one
interval of rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import threading
import time
import weakref
from array import array
from collections.abc import Callable, MutableSequence
from dataclasses import dataclass
from pathlib import Path

from bufdemo import probes, runformat
from bufdemo.errors import BufdemoError, PeerError, PeerTimeout
from bufdemo.experiment import txstamps
from bufdemo.experiment.config import Mode, RunConfig
from bufdemo.experiment.recorder import (
    CHECKPOINT_INTERVAL,
    MISSING,
    PROGRESS_BLOCKED_SINCE,
    PROGRESS_BLOCKING,
    PROGRESS_DONE,
    BlockingLog,
    Sampler,
    SendLog,
    SpoolTable,
    next_sample_ns,
)
from bufdemo.experiment.sender import (
    SenderResult,
    _buffers,
    _probe,
    drain_reset,
    drain_stuck,
    frames_per_block,
    identify,
    log_wait,
    open_connection,
)
from bufdemo.experiment.wire import FrameBlock, Hello, encode_hello
from bufdemo.net import Address
from bufdemo.runformat import AsyncioRecord
from bufdemo.signals import cleanup_begins, run_coroutine

__all__ = [
    "TransportSampler",
    "TransportState",
    "rss_reader",
    "run_asyncio_sender",
]

# asyncio's own defaults (selector transports): the numbers a user gets without
# set_write_buffer_limits, recorded as in effect from get_write_buffer_limits().
ASYNCIO_DEFAULT_HIGH = 64 * 1024


STATM = "/proc/self/statm"  # size, resident, shared, ... in pages (proc(5))


def rss_reader() -> tuple[Callable[[], int | None], str | None]:
    """A function returning this process's RSS in bytes, and why it is None if it is.

    On Linux it reads the resident pages from /proc/self/statm with one ``pread`` of a
    descriptor kept open (closed with the function): ~2 us, where psutil's
    ``memory_info()``, which reads the same file, opens it each time and takes ~29 us
    (``python -m timeit``). The sampling thread reads it every millisecond in the
    sending process, so that is ~3% of the asyncio loop's CPU. Elsewhere, psutil.
    """
    try:
        fd = os.open(STATM, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return _psutil_rss_reader()
    page = os.sysconf("SC_PAGE_SIZE")

    def read() -> int | None:
        try:
            return int(os.pread(fd, 256, 0).split()[1]) * page
        except (OSError, ValueError, IndexError):
            return None

    weakref.finalize(read, os.close, fd)
    return read, None


def _psutil_rss_reader() -> tuple[Callable[[], int | None], str | None]:
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a dependency
        return (lambda: None), "psutil is not installed: rss not recorded"
    proc = psutil.Process()

    def read() -> int | None:
        try:
            return int(proc.memory_info().rss)
        except psutil.Error:
            return None

    return read, None


@dataclass
class TransportState:
    """What the loop shares with the sampling thread: plain attributes, GIL-atomic."""

    transport: asyncio.WriteTransport | None = None
    high: int = ASYNCIO_DEFAULT_HIGH
    low: int = ASYNCIO_DEFAULT_HIGH // 4
    buffered_peak: int = 0
    drain_waits: int = 0

    def buffered(self) -> int:
        t = self.transport
        return 0 if t is None else t.get_write_buffer_size()


class TransportSampler(threading.Thread):
    """Sample the transport's buffer, the kernel's send queue and RSS every ``interval``.

    With a ``path``, the rows are spooled to it every ``checkpoint_interval`` from this
    thread (:class:`~bufdemo.experiment.recorder.SpoolTable`, as the Sampler's): the
    sampler holds about one interval of rows, and the peaks of ``buffered`` and ``rss``
    are kept as running values. A spool that fails (disk full) is given up and its error
    kept in ``checkpoint_error``; the rows stay in memory and :meth:`write` appends them.
    """

    def __init__(
        self,
        sock: socket.socket,
        interval: float,
        state: TransportState,
        count: Callable[[], int],
        rss: Callable[[], int | None],
        recorder: Callable[[], int] = lambda: 0,
        path: Path | None = None,
        checkpoint_interval: float = CHECKPOINT_INTERVAL,
    ) -> None:
        super().__init__(name="bufdemo-transport-sampler", daemon=True)
        self._recorder = recorder
        self._sock = sock
        self._interval = interval
        self._state = state
        self._count = count
        self._rss = rss
        self._stop_event = threading.Event()
        self._lock = threading.Lock()
        self.table = SpoolTable(runformat.TRANSPORT_SAMPLES.columns, path, self._lock)
        self.columns = self.table.columns  # the rows not yet spooled
        self._spooling = path is not None
        self._checkpoint_ns = max(1, round(checkpoint_interval * 1e9))
        self.checkpoint_error: OSError | None = None
        # Running peaks (the spooled rows are no longer in memory); None: never sampled.
        self._peaks: dict[str, int | None] = {"buffered": None, "rss": None}

    def sample(self) -> None:
        with self._lock:
            c = self.columns
            t = time.perf_counter_ns()
            buffered = self._state.buffered()
            outq = probes.queue_out(self._sock)
            rss = self._rss()
            c["t_ns"].append(t)
            c["count"].append(self._count())
            c["buffered"].append(buffered)
            c["outq"].append(MISSING if outq is None else outq)
            c["rss"].append(MISSING if rss is None else rss)
            c["recorder"].append(self._recorder() + self.held())
            for name, value in (("buffered", buffered), ("rss", rss)):
                peak = self._peaks[name]
                if value is not None and (peak is None or value > peak):
                    self._peaks[name] = value

    def checkpoint(self) -> None:
        """Spool the rows sampled since the last checkpoint (this thread only)."""
        try:
            self.table.spool()
        except OSError as exc:  # disk full: the final write will say so
            self.checkpoint_error = exc
            self._spooling = False

    def run(self) -> None:
        interval_ns = max(1, round(self._interval * 1e9))
        next_t = time.perf_counter_ns() + interval_ns
        next_checkpoint = next_t + self._checkpoint_ns
        with contextlib.suppress(OSError):
            # On a schedule, as the Sampler beside it: a sample every interval, not an
            # interval after each sample (which would drift and take fewer rows).
            while not self._stop_event.wait(max(0, next_t - time.perf_counter_ns()) / 1e9):
                self.sample()
                if self._spooling and time.perf_counter_ns() >= next_checkpoint:
                    self.checkpoint()
                    next_checkpoint = time.perf_counter_ns() + self._checkpoint_ns
                next_t = next_sample_ns(next_t, interval_ns, time.perf_counter_ns())

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join()
        with contextlib.suppress(OSError):
            self.sample()

    @property
    def rows(self) -> int:
        """Samples taken: on disk (spooled) and in memory."""
        return self.table.rows

    def held(self) -> int:
        """Bytes this sampler's own columns hold (the rows not yet spooled)."""
        return self.table.held()

    def peak(self, name: str) -> int | None:
        """The largest ``buffered`` or ``rss`` sampled (None: none sampled)."""
        return self._peaks[name]

    def write(self, path: Path) -> None:
        """Write the table (after spooling: append the rows not on disk yet)."""
        self.table.write(path)


async def _session(
    sock: socket.socket,
    cfg: RunConfig,
    log: SendLog,
    blocking: BlockingLog,
    sent: MutableSequence[int],
    block: FrameBlock,
    state: TransportState,
    result: SenderResult,
    progress: MutableSequence[int] | None,
) -> None:
    # The transport gets a duplicate descriptor of the same socket: closing the transport
    # leaves the samplers' descriptor valid until the run has written its tables.
    reader, writer = await asyncio.open_connection(sock=sock.dup())
    transport = writer.transport
    try:
        if cfg.write_buffer_limits is not None:
            high, low = cfg.write_buffer_limits
            transport.set_write_buffer_limits(high=high, low=low)
        state.low, state.high = transport.get_write_buffer_limits()
        state.transport = transport
        await _write_all(writer, transport, cfg, log, blocking, sent, block, state, progress)
        result.t_done_ns = time.perf_counter_ns()
        await _flush_and_close(reader, writer, transport, cfg, log.rows)
    finally:
        if not transport.is_closing():  # failed or interrupted: drop the rest, close
            transport.abort()


async def _write_all(
    writer: asyncio.StreamWriter,
    transport: asyncio.WriteTransport,
    cfg: RunConfig,
    log: SendLog,
    blocking: BlockingLog,
    sent: MutableSequence[int],
    block: FrameBlock,
    state: TransportState,
    progress: MutableSequence[int] | None,
) -> None:
    high = state.high
    views, fill, per_block = block.views, block.fill, block.count
    store = log.store
    now = time.perf_counter_ns
    use_drain = cfg.mode is Mode.ASYNCIO
    buffered = transport.get_write_buffer_size
    task = asyncio.current_task()
    log.t_start_ns = now()
    for first in range(0, cfg.messages, per_block):
        fill(first)
        stamps: list[int] = []
        stamp = stamps.append
        try:
            for view in views[: min(per_block, cfg.messages - first)]:
                writer.write(view)  # copied into the transport's buffer if not sent now
                if use_drain:
                    held = buffered()
                    if held > state.buffered_peak:
                        state.buffered_peak = held
                    if held > high:  # paused: this drain() waits for resume_writing()
                        await _timed_drain(
                            writer, cfg, blocking, first + len(stamps), sent, progress
                        )
                        state.drain_waits += 1
                    else:
                        await writer.drain()  # returns at once (not paused)
                stamp(now())
        finally:
            # No stop signal cuts this short: under signals.run_coroutine it cancels the
            # task, which happens at an await or below, never inside the store.
            sent[0] = store(first, stamps)
        state.buffered_peak = max(state.buffered_peak, buffered())
        if task is not None and task.cancelling():
            # Stopped (signals.run_coroutine) while the block ran: in asyncio mode a drain
            # that is not paused never yields, so the cancellation is taken here.
            raise asyncio.CancelledError
        if transport.is_closing():  # write() after a lost connection drops data silently
            raise PeerError(
                f"the receiver closed the connection after {log.rows} of {cfg.messages} "
                "messages were written to the transport"
            )
        if not use_drain:
            await asyncio.sleep(0)  # one pass of the loop per block: it sends what it can


async def _timed_drain(
    writer: asyncio.StreamWriter,
    cfg: RunConfig,
    blocking: BlockingLog,
    seq: int,
    sent: MutableSequence[int],
    progress: MutableSequence[int] | None,
) -> None:
    sock = writer.get_extra_info("socket")
    sent[0] = seq
    t0 = time.perf_counter_ns()
    if progress is not None:
        progress[PROGRESS_BLOCKED_SINCE] = t0
    before = _probe(sock)
    try:
        await asyncio.wait_for(writer.drain(), cfg.timeout)
    except TimeoutError as exc:
        raise PeerTimeout(
            f"receiver stuck: drain() waited {cfg.timeout} s at message {seq} "
            f"({seq} of {cfg.messages} written); the receiver is not reading"
        ) from exc
    except (BrokenPipeError, ConnectionResetError) as exc:
        raise PeerError(
            f"the receiver closed the connection ({errno.errorcode.get(exc.errno or 0, exc)}) "
            f"after {seq} of {cfg.messages} messages"
        ) from exc
    finally:
        if progress is not None:
            progress[PROGRESS_BLOCKED_SINCE] = 0
    # write() takes every byte; the wait is drain()'s
    log_wait(blocking, seq, t0, time.perf_counter_ns(), cfg.size, 0, 1, before, _probe(sock))


async def _flush_and_close(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    transport: asyncio.WriteTransport,
    cfg: RunConfig,
    sent: int,
) -> None:
    """Let the loop send the transport's buffer, FIN after it, wait for the receiver."""
    poll = max(cfg.sample_interval, 0.001)
    last, since = transport.get_write_buffer_size(), time.monotonic()
    while (held := transport.get_write_buffer_size()) > 0:
        if transport.is_closing():
            raise PeerError(
                f"the receiver closed the connection with {held} bytes still in the "
                f"transport's buffer ({sent} messages written)"
            )
        if held != last:
            last, since = held, time.monotonic()
        elif cfg.timeout is not None and time.monotonic() - since > cfg.timeout:
            raise PeerTimeout(
                f"receiver stuck: {held} bytes left in the transport's buffer for "
                f"{cfg.timeout} s; the receiver is not reading"
            )
        await asyncio.sleep(poll)
    writer.write_eof()
    try:
        await asyncio.wait_for(reader.read(), cfg.timeout)
    except TimeoutError as exc:
        raise drain_stuck(sent, cfg.timeout) from exc
    except ConnectionResetError as exc:
        raise drain_reset(sent) from exc
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


def run_asyncio_sender(
    cfg: RunConfig,
    to: Address,
    run_dir: Path | Callable[[], Path],
    progress: MutableSequence[int] | None,
    result: SenderResult,
    *,
    sample_transport: bool = True,
) -> SenderResult:
    """:func:`bufdemo.experiment.sender.run_sender` for the asyncio modes: the same
    connection, hello, tables and record, plus transport_samples.csv and
    ``result.asyncio``. Writes what it recorded also when it fails or is interrupted.

    ``sample_transport=False`` does not start the transport sampler's thread (the table
    then has its last row only): ``bench.floor`` measures what that sampling costs."""
    block = FrameBlock(cfg.size, frames_per_block(cfg.size))
    # TCP_NOTSENT_LOWAT, if asked for, is the kernel's mark under the transport's.
    sock, run_dir = open_connection(cfg, to, run_dir, result)
    # The transport writes from the event loop: per-byte transmit timestamps are not
    # collected here (latency.csv keeps end-to-end and service).
    result.timestamping = txstamps.disabled_record("not collected in the asyncio modes")
    log = SendLog(cfg.messages, cfg.size)
    blocking = BlockingLog()
    sent = array("q", [0])
    state = TransportState()
    rss, rss_missing = rss_reader()
    rss_start = rss()
    # Both samplers spool their rows to their tables as they go: they hold about one
    # checkpoint interval of rows, so the RSS measures the program, not its recording.
    sampler = Sampler(
        sock,
        cfg.sample_interval,
        count=lambda: sent[0],
        progress=progress,
        counters={PROGRESS_BLOCKING: lambda: len(blocking)},
        checkpoint_samples=run_dir / runformat.SENDER_SAMPLES.file,
    )
    tsampler = TransportSampler(
        sock,
        cfg.sample_interval,
        state,
        lambda: sent[0],
        rss,
        recorder=sampler.table.held,
        path=run_dir / runformat.TRANSPORT_SAMPLES.file,
    )
    try:
        result.t_connected_ns = time.perf_counter_ns()
        start_sizes = identify(sock, result)
        sampler.start()
        if sample_transport:
            tsampler.start()
        try:
            sock.sendall(encode_hello(Hello(cfg.token, cfg.messages, cfg.size)))
            # A stop signal cancels the session (at an await, or between blocks):
            # raised inside the event loop's own code it could hang the loop.
            run_coroutine(_session(sock, cfg, log, blocking, sent, block, state, result, progress))
            result.complete = True
        except BufdemoError as exc:
            result.error = str(exc)
            raise
        except (BrokenPipeError, ConnectionResetError) as exc:
            result.error = (
                f"the receiver closed the connection after {log.rows} of {cfg.messages} messages"
            )
            raise PeerError(result.error) from exc
        except KeyboardInterrupt:
            result.error = f"interrupted after {log.rows} of {cfg.messages} messages"
            raise
        finally:
            cleanup_begins()  # a stop signal now cannot cut the tables short
            sampler.stop()
            tsampler.stop()
            result.buffers = _buffers(cfg, start_sizes, probes.buffer_sizes(sock))
    finally:
        result.messages = log.rows
        result.blocking_sends = len(blocking)
        result.asyncio = _record(state, tsampler, rss_start, rss_missing)
        if progress is not None:
            progress[PROGRESS_DONE] = 1
        sock.close()
        log.write(run_dir / runformat.SENDS.file, blocking)
        blocking.write(run_dir / runformat.BLOCKING_SENDS.file)
        sampler.write(run_dir / runformat.SENDER_SAMPLES.file)
        tsampler.write(run_dir / runformat.TRANSPORT_SAMPLES.file)
    return result


def _record(
    state: TransportState,
    tsampler: TransportSampler,
    rss_start: int | None,
    rss_missing: str | None,
) -> AsyncioRecord:
    sampled = tsampler.peak("buffered") or 0
    return {
        "high_water": state.high,
        "low_water": state.low,
        "buffered_peak": max(state.buffered_peak, sampled),
        "rss_start": rss_start,
        "rss_peak": tsampler.peak("rss"),
        "drain_waits": state.drain_waits,
        "rss_missing": rss_missing,
    }
