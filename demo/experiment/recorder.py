"""Recording without disturbing what is recorded.

The hot loops write into preallocated ``array.array`` columns (a C store per field, no
allocation, no I/O); the tables are written to CSV once, at the end, or when the run
fails part-way, so a failed run still leaves what it recorded.

A process can also die without a chance to write (SIGKILL, OOM). For that case a
:class:`Sampler` can run *checkpoints*: every ``checkpoint_interval`` (0.5 s) its thread
appends the rows recorded since the last checkpoint to the table's CSV file
(:class:`TableCheckpoint`). The hot loop never sees it; a killed process loses at most
the last half second. The final write appends the rows that are left, in the same format.

The periodic samples are not needed in memory once on disk: a checkpointed sampler
*spools* them (:class:`SpoolTable`), appending its new rows and dropping them, so what it
holds stays about one interval of rows (~110 KB at 1 ms) however long the run, and the
process's RSS measures the program rather than its recording.

Periodic samples come from a :class:`Sampler` in each process: taken inline by the loop
between blocks while it runs (a thread sampling beside a busy loop costs it far more),
and by the sampler's thread while the loop is blocked inside ``send()`` or ``recv()``. A
sample keeps the kernel's answers raw and parses them later in bulk
(:class:`~bufdemo.probes.RawSample`). Each process records its own
side; both stamp ``time.perf_counter_ns()`` (CLOCK_MONOTONIC on Linux), so the two
sides' rows align without correction on one host.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableSequence, Sequence
from pathlib import Path
from typing import TypeVar

from bufdemo import probes, runformat

_T = TypeVar("_T")

__all__ = [
    "BLOCKING_COLUMNS",
    "CHECKPOINT_INTERVAL",
    "CONSUMED_COLUMNS",
    "MISSING",
    "PROGRESS_BLOCKED_SINCE",
    "PROGRESS_BLOCKING",
    "PROGRESS_COUNT",
    "PROGRESS_DONE",
    "PROGRESS_INQ",
    "PROGRESS_INTACT",
    "PROGRESS_OUTQ",
    "PROGRESS_SLOTS",
    "SAMPLE_COLUMNS",
    "SENDS_COLUMNS",
    "BlockingLog",
    "ConsumedLog",
    "Sampler",
    "SendLog",
    "SpoolTable",
    "TableCheckpoint",
    "next_sample_ns",
    "pack_int64s",
    "trim_partial_line",
    "write_table",
]

MISSING = -1  # stored for a probe that returned None; written as an empty cell
# A sampler parses its staged raw samples at least this often (a second at 1 ms): what it
# holds unparsed stays bounded however long the run.
STAGED_ROWS = 1024

# A side's live progress, shared with a display (another process's shared array or a
# local one): one integer per slot, each with one meaning. The sampler fills COUNT,
# OUTQ, INQ and the side's own counter (BLOCKING or INTACT) at each sample; the side
# sets DONE when it has finished, and the sender BLOCKED_SINCE itself.
PROGRESS_COUNT = 0  # messages handed to the kernel (sender) / consumed (receiver)
PROGRESS_OUTQ = 1  # SIOCOUTQ at the last sample (MISSING if unavailable)
PROGRESS_INQ = 2  # SIOCINQ at the last sample
PROGRESS_BLOCKING = 3  # sender: blocking sends so far
PROGRESS_INTACT = 4  # receiver: intact messages so far
# sender: time.perf_counter_ns() when the current blocking send (or select() wait)
# began; 0 while it is not blocked. Written by the send loop on the blocking path only.
PROGRESS_BLOCKED_SINCE = 5
PROGRESS_DONE = 6  # 1 once the side has finished (whatever the outcome)
PROGRESS_SLOTS = 7
# How often a sampler appends new rows to disk (TableCheckpoint): a killed process loses
# at most this much of its record; each checkpoint costs the thread well under 1 ms at
# 1,000 messages/s.
CHECKPOINT_INTERVAL = 0.5

# The tables' columns, in the order written: the run format's (bufdemo.runformat).
SENDS_COLUMNS = runformat.SENDS.columns
BLOCKING_COLUMNS = runformat.BLOCKING_SENDS.columns  # the order of a BlockingLog row
SAMPLE_COLUMNS = runformat.SENDER_SAMPLES.columns
CONSUMED_COLUMNS = runformat.CONSUMED.columns
# Where SendLog finds what it derives from a blocking-send row.
_BLOCKED_SEQ = BLOCKING_COLUMNS.index("seq")
_BLOCKED_ACCEPTED = BLOCKING_COLUMNS.index("accepted_first")
# The sample columns that hold probes.SAMPLED_MEMINFO, in that order.
_MEMINFO_COLUMNS = SAMPLE_COLUMNS[SAMPLE_COLUMNS.index("wmem_queued") :][:8]
# Where a sample finds the values it does not read twice (Sampler._sample).
_MEM_SNDBUF = probes.SAMPLED_MEMINFO.index("sndbuf")
_MEM_RCVBUF = probes.SAMPLED_MEMINFO.index("rcvbuf")
_INFO_NOTSENT = probes.SAMPLED_TCP_INFO.index("notsent_bytes")
_NO_TCP_INFO: tuple[None, ...] = (None,) * len(probes.SAMPLED_TCP_INFO)
_NO_MEMINFO: tuple[None, ...] = (None,) * len(probes.SAMPLED_MEMINFO)
# The sample columns in the order Sampler._sample reads them.
_SAMPLED_IN_ORDER = (
    *("t_ns", "count", "outq", "outq_nsd", "inq", "sndbuf", "rcvbuf"),
    *probes.SAMPLED_TCP_INFO,
    *_MEMINFO_COLUMNS,
)
# The array typecode that holds each integer dtype of the format.
_TYPECODES = {"int8": "b", "int32": "i", "int64": "q"}


def next_sample_ns(due_ns: int, interval_ns: int, now_ns: int) -> int:
    """When a sampler on a schedule samples next: one interval after the sample that was
    due, or, if it fell behind (a busy machine), one interval from now: skip, don't burst."""
    due_ns += interval_ns
    return due_ns if due_ns >= now_ns else now_ns + interval_ns


def _zeros(typecode: str, n: int) -> array[int]:
    return array(typecode, bytes(array(typecode).itemsize * n))


# Rows formatted per write() call: bounds the memory a large table needs while written.
_WRITE_CHUNK = 65_536


def _format_rows(columns: Sequence[Sequence[int]], start: int, stop: int) -> str:
    """Rows ``start..stop`` as CSV lines; MISSING becomes an empty cell."""
    cells: list[Iterable[str]] = []
    for col in columns:
        part = col[start:stop]
        if MISSING in part:
            cells.append(["" if v == MISSING else str(v) for v in part])
        else:
            cells.append(map(str, part))
    lines = "\n".join(map(",".join, zip(*cells, strict=False)))
    return lines + "\n" if lines else ""


def write_table(path: Path, columns: Mapping[str, Sequence[int]], rows: int) -> None:
    """Write the first ``rows`` rows of integer columns to CSV; MISSING becomes empty.

    Plain CSV (what ``pandas.read_csv`` reads): a header line, one line per row, ``\n``
    line ends. Written without pandas so that a side process does not pay for importing
    it at the end of a run.
    """
    cols = list(columns.values())
    tmp = path.with_name(path.name + ".part")
    with tmp.open("w", newline="") as f:
        f.write(",".join(columns) + "\n")
        for start in range(0, rows, _WRITE_CHUNK):
            f.write(_format_rows(cols, start, min(rows, start + _WRITE_CHUNK)))
    tmp.replace(path)  # a reader never sees a half-written table


class TableCheckpoint:
    """Append a growing table's new rows to its CSV file, from a thread of its own.

    ``columns()`` returns the table's columns and ``rows()`` how many rows are complete;
    rows below that count must no longer change (the loops fill a row, then count it).
    Each :meth:`flush` appends the rows completed since the last one in a single
    ``write()``, so a reader (or a crash) sees whole lines, except if the process is
    killed inside that one call: :func:`trim_partial_line` repairs that.
    """

    def __init__(
        self,
        path: Path,
        columns: Callable[[], Mapping[str, Sequence[int]]],
        rows: Callable[[], int],
    ) -> None:
        self.path = path
        self._columns = columns
        self._rows = rows
        self.written = 0  # rows on disk

    def flush(self) -> None:
        n = self._rows()
        if n <= self.written:
            return
        columns = self._columns()
        text = _format_rows(list(columns.values()), self.written, n)
        if self.written == 0:
            text = ",".join(columns) + "\n" + text
            mode = "wb"  # a leftover from an earlier attempt is not ours
        else:
            mode = "ab"
        with self.path.open(mode, buffering=0) as f:
            f.write(text.encode())
        self.written = n


def trim_partial_line(path: Path) -> None:
    """Cut a CSV file back to its last complete line (a checkpoint cut off by a kill)."""
    try:
        with path.open("rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)
    except FileNotFoundError:
        pass


class SpoolTable:
    """Integer columns filled row by row, whose complete rows move to the table's CSV file.

    A sampler appends one value per column per sample (:attr:`columns`, one ``array('q')``
    each; a row is complete once every column has it). With a ``path``, :meth:`spool`
    appends the complete rows to that file, in :func:`write_table`'s format (the header
    first, ``\n`` line ends, MISSING as an empty cell), in one ``write()``, and then
    *drops them from memory*: a table spooled every CHECKPOINT_INTERVAL holds about one
    interval of rows, however long the run. Always ``spooled + pending == rows`` (on
    disk + in memory == recorded), in order.

    A failed append (disk full, directory gone) raises and loses nothing: the file is
    cut back to its last whole spooled row and the rows stay in memory, so the final
    :meth:`write` appends them (or raises the error again). The file grows only at its
    end: a process killed inside a write leaves at most one partial line, which
    :func:`trim_partial_line` removes.

    ``lock`` is the one the sampler holds while it appends a row: :meth:`spool` holds it
    only to count the complete rows and to drop them, formatting and writing outside it.
    Only one thread may spool.
    """

    def __init__(
        self,
        names: Sequence[str],
        path: Path | None = None,
        lock: threading.Lock | None = None,
    ) -> None:
        self.path = path
        self.columns: dict[str, array[int]] = {name: array("q") for name in names}
        self.spooled = 0  # rows on disk, dropped from memory
        self._size = 0  # bytes of the file that hold them (the header included)
        self._cut = False  # a failed write may have left bytes past _size
        self._lock = lock if lock is not None else threading.Lock()

    @property
    def pending(self) -> int:
        """Complete rows in memory, not yet on disk."""
        return min(len(col) for col in self.columns.values())

    @property
    def rows(self) -> int:
        """Rows recorded: on disk and in memory."""
        return self.spooled + self.pending

    def held(self) -> int:
        """Bytes the columns hold in memory (their items)."""
        return sum(len(col) * col.itemsize for col in self.columns.values())

    def spool(self) -> None:
        """Append the complete rows in memory to :attr:`path`, then drop them."""
        if self.path is None:
            raise RuntimeError("SpoolTable.spool: this table has no file")
        with self._lock:
            n = self.pending
        if n == 0 and self._size > 0:
            return
        text = _format_rows(list(self.columns.values()), 0, n).encode()
        if self._size == 0:
            text = (",".join(self.columns) + "\n").encode() + text
        self._append(self.path, text)
        with self._lock:
            for col in self.columns.values():
                del col[:n]  # arrays shrink their allocation when cut by more than 16
            self.spooled += n

    def _append(self, path: Path, data: bytes) -> None:
        # The first write truncates: a leftover from an earlier attempt is not ours.
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if self._size == 0 else 0)
        fd = os.open(path, flags, 0o666)
        try:
            os.lseek(fd, self._size, os.SEEK_SET)
            view = memoryview(data)
            while view:  # a short write (the disk filling up) is followed by the error
                view = view[os.write(fd, view) :]
            if self._cut:  # bytes a failed write left past the new end
                os.ftruncate(fd, self._size + len(data))
                self._cut = False
        except OSError:
            self._cut = True
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self._size)  # whole rows only on disk
            raise
        finally:
            os.close(fd)
        self._size += len(data)

    def write(self, path: Path) -> None:
        """The final write: the rows left in memory. Appended to what is spooled, or, if
        nothing is on disk yet, the whole table written at once (:func:`write_table`)."""
        if self._size == 0:
            write_table(path, self.columns, self.pending)
            return
        if path != self.path:
            raise RuntimeError(f"SpoolTable.write: rows already spooled to {self.path}, not {path}")
        self.spool()


def _in_format_order(table: runformat.TableFormat, cells: Mapping[str, _T]) -> dict[str, _T]:
    """``cells`` in the format's column order; a column missing or extra is a bug here."""
    if cells.keys() != set(table.columns):
        raise RuntimeError(
            f"{table.file}: the recorder's columns {sorted(cells)} are not the format's "
            f"{sorted(table.columns)}"
        )
    return {name: cells[name] for name in table.columns}


# A 64-bit column's struct code: a C long where it has 64 bits (Linux). CPython converts a
# multi-digit int to a long directly but to a long long through a byte array: 16 us per
# 1,024 timestamps as "l", 35 as "q", 70 for array("q", values), which parses each item.
_INT64_CODE = "l" if struct.calcsize("l") == 8 else "q"
# One compiled struct per length packed: the lengths are those of the loops' blocks and
# batches (at most 1,024), so this holds at most that many.
_PACKS: dict[int, Callable[..., None]] = {}


def pack_int64s(column: array[int], row: int, values: Sequence[int]) -> None:
    """Write ``values`` into the 64-bit ``column`` from ``row`` on, in one struct call.

    The hot loops keep their timestamps in Python lists (an append or a list store per
    message costs a few instructions; a store into an ``array("q")`` parses the int, ~500)
    and hand them over once per block. Raises ``struct.error`` (nothing written) if they
    do not fit.
    """
    n = len(values)
    pack = _PACKS.get(n)
    if pack is None:
        pack = _PACKS.setdefault(n, struct.Struct(f"{n}{_INT64_CODE}").pack_into)
    pack(column, 8 * row, *values)


class SendLog:
    """One row per message: when it was completely handed to the kernel.

    The hot loop stores one timestamp per message (8 bytes per send in memory).
    Everything else in sends.csv is derived when the table is written: the duration is
    the time since the previous message was handed over (framing and, for a blocking
    send, the wait included); ``accepted_first`` and ``blocked`` come from the
    blocking-send log, which records each wait exactly.
    """

    def __init__(self, messages: int, size: int) -> None:
        self.size = size
        self.t_ns = _zeros("q", messages)
        self.t_start_ns = 0  # when sending began: the first message's duration counts from it
        self.rows = 0  # messages completely handed to the kernel

    def store(self, first: int, stamps: list[int]) -> int:
        """Record one block's send times as rows ``first`` on (:func:`pack_int64s`);
        return the rows recorded."""
        pack_int64s(self.t_ns, first, stamps)
        self.rows = first + len(stamps)
        return self.rows

    def columns(self, blocking: BlockingLog) -> dict[str, array[int]]:
        """The table's columns, derived with numpy (a million rows in tens of
        milliseconds; per-cell Python took seconds) and formatted by fastcsv."""
        import numpy as np

        n = self.rows
        t = np.frombuffer(self.t_ns, dtype=np.int64)[:n]
        accepted = np.full(n, self.size, dtype=np.int64)
        blocked = np.zeros(n, dtype=np.int64)
        for row in blocking.rows:
            seq = row[_BLOCKED_SEQ]
            if seq < n:
                accepted[seq] = row[_BLOCKED_ACCEPTED]
                blocked[seq] = 1
        cells = {
            "seq": np.arange(n, dtype=np.int64),
            "t_ns": t,
            "duration_ns": np.diff(t, prepend=np.int64(self.t_start_ns)),
            "bytes": np.full(n, self.size, dtype=np.int64),
            "accepted_first": accepted,
            "blocked": blocked,
        }
        return _in_format_order(
            runformat.SENDS, {k: array("q", v.astype(np.int64).tobytes()) for k, v in cells.items()}
        )

    def write(self, path: Path, blocking: BlockingLog) -> None:
        from bufdemo.experiment import fastcsv  # imports this module: imported on use

        fastcsv.write_table(path, self.columns(blocking), self.rows)


class BlockingLog:
    """One row per blocking send: rare (one per stall), so a plain list is enough.

    A row is a tuple in :data:`BLOCKING_COLUMNS` order; :meth:`append` builds it from
    the cells by name, so the sender never depends on that order.
    """

    def __init__(self) -> None:
        self.rows: list[tuple[int, ...]] = []

    def __len__(self) -> int:
        return len(self.rows)

    def append(self, **cells: int) -> None:
        """Add one blocking send; every column of the format, by name (a probe that
        failed is MISSING)."""
        self.rows.append(tuple(_in_format_order(runformat.BLOCKING_SENDS, cells).values()))

    def write(self, path: Path) -> None:
        columns = {name: [r[i] for r in self.rows] for i, name in enumerate(BLOCKING_COLUMNS)}
        write_table(path, columns, len(self.rows))


class ConsumedLog:
    """One row per message the receiver consumed; grows if the sender sends more.

    One preallocated array per column of the format, typed as the format's dtype; the
    receiver's loop stores into them through the attributes named after the columns.
    """

    def __init__(self, expected: int) -> None:
        self._columns = {
            name: _zeros(_TYPECODES[dtype], expected)
            for name, dtype in runformat.CONSUMED.dtypes.items()
        }
        c = self._columns
        self.seq = c["seq"]
        self.t_read_ns = c["t_read_ns"]
        self.t_start_ns = c["t_start_ns"]
        self.t_end_ns = c["t_end_ns"]
        self.intact = c["intact"]
        self.rows = 0

    def grow(self) -> None:
        """Double the capacity (only if the sender sends more than it announced)."""
        for col in self._columns.values():
            col.extend(_zeros(col.typecode, max(len(col), 1024)))

    @property
    def capacity(self) -> int:
        return len(self.seq)

    def columns(self) -> dict[str, array[int]]:
        return self._columns

    def write(self, path: Path) -> None:
        write_table(path, self.columns(), self.rows)


def _or_missing(value: int | None) -> int:
    return MISSING if value is None else value


class Sampler(threading.Thread):
    """Probe one socket every ``interval`` seconds until :meth:`stop`.

    A *gated* sampler (the sender's and the receiver's) keeps its thread parked while
    the loop runs: a thread that wakes to sample beside a busy loop takes the GIL from
    it, and the loop then waits to get it back for far longer than the sample takes (a
    busy loop lost 8-22% beside a 1 ms sampler thread, ``bench.sampler``). The loop
    samples inline instead (:meth:`sample_if_due`, or its own check between frames),
    and opens the gate (:meth:`resume`) only while it sleeps in the kernel (a blocking
    send or receive, the drain), when it does not need the GIL. A parked thread still
    wakes for its checkpoints. Samples from both paths go through one lock, so every
    row is whole and in time order. A gated sampler without checkpoints (the sender's)
    starts its thread only at the first :meth:`resume`: until the loop first waits in
    the kernel, the process has one thread, and a loop of system calls runs faster so
    (with a second thread alive, even parked, the kernel and the C library take atomic
    paths on every call: a loop of one-byte writes loses ~8%, ``bench.sampler``).

    ``count`` is read each sample (messages sent or consumed so far). ``progress``, if
    given, receives count, outq and inq in their PROGRESS_* slots at each sample, and
    each of ``counters`` (slot -> reader, e.g. ``{PROGRESS_BLOCKING: ...}``) in its
    slot, for a live display in another process (a shared array): the hot loop itself
    never writes to it, except the sender's PROGRESS_BLOCKED_SINCE on its slow path.
    ``checkpoints`` (and the samples themselves, to ``checkpoint_samples``) are flushed
    every ``checkpoint_interval`` seconds from this thread; the samples are *spooled*
    (:class:`SpoolTable`): once on disk they leave memory, so the sampler holds about one
    interval of rows however long the run. A checkpoint that fails (disk full) is given
    up and its error kept in ``checkpoint_error``, sampling goes on, the rows not on
    disk stay in memory and :meth:`write` appends them at the end (or raises).
    """

    def __init__(
        self,
        sock: socket.socket,
        interval: float,
        count: Callable[[], int],
        progress: MutableSequence[int] | None = None,
        counters: Mapping[int, Callable[[], int]] | None = None,
        checkpoints: Sequence[TableCheckpoint] = (),
        checkpoint_samples: Path | None = None,
        checkpoint_interval: float = CHECKPOINT_INTERVAL,
        gated: bool = False,
        *,
        raw: bool = True,
        on_unread: Callable[[], None] | None = None,
    ) -> None:
        """``raw=False``: parse every probe as it is read, even where probes.RawSample
        could keep the answers raw (what a sample did before; bench.floor --breakdown
        compares the two). ``on_unread`` is called, under the samples' lock, after each
        sample that finds bytes in the socket's receive queue (or cannot tell)."""
        super().__init__(name="bufdemo-sampler", daemon=True)
        self._gate = threading.Event()  # set: the thread samples
        if not gated:
            self._gate.set()
        # Nothing for a parked thread to do: it starts when the gate first opens.
        self._deferred = gated and not checkpoints and checkpoint_samples is None
        self._thread_wanted = False  # start() was called, the thread not yet started
        self._lock = threading.Lock()
        self.next_due_ns = 0  # when an inline sample is next due
        self._checkpoints = list(checkpoints)
        # The samples, spooled to checkpoint_samples (if given) at each checkpoint: the
        # rows on disk leave memory.
        self.table = SpoolTable(SAMPLE_COLUMNS, checkpoint_samples, self._lock)
        self._spooling = checkpoint_samples is not None
        self._checkpoint_ns = max(1, round(checkpoint_interval * 1e9))
        self.checkpoint_error: OSError | None = None
        self._sock = sock
        self._interval_ns = max(1, round(interval * 1e9))
        self._count = count
        self._progress = progress
        self._counters = tuple((counters or {}).items())
        self._stop_event = threading.Event()
        self.error: BaseException | None = None
        self._tcp_info = probes.tcp_info_reader(sock)
        self._meminfo = probes.meminfo_reader(sock)
        # One append per column, in the order _sample_parsed reads them (the arrays live as
        # long as the table: spooling cuts them in place).
        self._appends = tuple(self.table.columns[name].append for name in _SAMPLED_IN_ORDER)
        # Where every probe is there, a sample keeps the kernel's answers as they came
        # (probes.RawSample): t, count and the two queues here, tcp_info and SO_MEMINFO
        # as bytes; they become columns in one numpy step (_unstage) per STAGED_ROWS
        # samples, per checkpoint, and before the table is read or written.
        self._raw = probes.RawSample.of(sock) if raw else None
        self._on_unread = on_unread
        self._staged_ints = array("q")
        self._staged_info = bytearray()
        self._staged_mem = bytearray()

    def sample(self) -> None:
        with self._lock:
            self._sample()

    def sample_if_due(self, now_ns: int) -> None:
        """One sample if it is due (by the loop inline, or by the thread): the two share
        one schedule, checked again under the lock so that only one of them takes it."""
        if now_ns >= self.next_due_ns:
            with self._lock:
                if now_ns >= self.next_due_ns:
                    self._sample()

    def count_at_least(self, n: int) -> None:
        """Raise the live count to ``n`` now (a checkpoint about to write ``n`` rows):
        the count a killed side leaves behind is then never below its tables on disk.
        Under the samples' lock, so no sample that read a smaller count writes it later."""
        if self._progress is not None:
            with self._lock:
                if self._progress[PROGRESS_COUNT] < n:
                    self._progress[PROGRESS_COUNT] = n

    def start(self) -> None:
        """Start sampling: the thread now, or (deferred) at the first :meth:`resume`."""
        if self._deferred:
            self._thread_wanted = True
        else:
            super().start()

    def resume(self) -> None:
        """Let the thread sample (the loop is about to sleep in the kernel)."""
        self._gate.set()
        if self._thread_wanted and not self._stop_event.is_set():
            self._thread_wanted = False
            super().start()

    def pause(self) -> None:
        """Park the thread (the loop runs again and samples inline)."""
        self._gate.clear()

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """The gate open around a wait in the kernel (:meth:`resume`, then :meth:`pause`)."""
        self.resume()
        try:
            yield
        finally:
            self.pause()

    def _sample(self) -> None:
        # Each probe is a system call, and each hands the GIL over to a busy loop and
        # back: the same kernel value is not read twice. sndbuf/rcvbuf (SO_SNDBUF and
        # SO_RCVBUF return sk_sndbuf/sk_rcvbuf) come from SO_MEMINFO, and outq_nsd
        # (SIOCOUTQNSD: write_seq - snd_nxt) from tcp_info's notsent_bytes, where the
        # kernel has them; from their own calls otherwise.
        t = time.perf_counter_ns()
        # On the interval's grid: an inline sample taken late (a sleep's overshoot) does
        # not push every later one back.
        self.next_due_ns = next_sample_ns(self.next_due_ns, self._interval_ns, t)
        count = self._count()
        outq: int | None
        inq: int | None
        if self._raw is not None:
            try:
                outq, inq = self._sample_raw(t, count)
            except (OSError, ValueError):  # the socket failed: the parsed path says how
                self._unstage()  # the rows stay in time order
                outq, inq = self._sample_parsed(t, count)
        else:
            outq, inq = self._sample_parsed(t, count)
        if self._progress is not None:
            self._progress[PROGRESS_COUNT] = count
            self._progress[PROGRESS_OUTQ] = _or_missing(outq)
            self._progress[PROGRESS_INQ] = _or_missing(inq)
            for slot, read in self._counters:
                self._progress[slot] = read()
        if self._on_unread is not None and (inq is None or inq > 0):
            self._on_unread()

    def _sample_raw(self, t: int, count: int) -> tuple[int, int]:
        """Read every probe, then stage the answers (nothing staged if one fails)."""
        raw = self._raw
        assert raw is not None
        outq = raw.queue_out()
        inq = raw.queue_in()
        info = raw.tcp_info()
        mem = raw.meminfo()
        self._staged_ints.extend((t, count, outq, inq))
        self._staged_info += info
        self._staged_mem += mem
        if len(self._staged_ints) >= 4 * STAGED_ROWS:
            self._unstage()
        return outq, inq

    def _unstage(self) -> None:
        """Parse the staged answers into the table's columns (under the lock)."""
        if not self._staged_ints or self._raw is None:
            return
        import numpy as np

        ints = np.frombuffer(bytes(self._staged_ints), dtype=np.int64).reshape(-1, 4)
        fields = self._raw.parse(bytes(self._staged_info), bytes(self._staged_mem))
        del self._staged_ints[:]
        self._staged_info.clear()
        self._staged_mem.clear()
        values = {
            "t_ns": ints[:, 0],
            "count": ints[:, 1],
            "outq": ints[:, 2],
            "outq_nsd": fields["notsent_bytes"],
            "inq": ints[:, 3],
            "sndbuf": fields["sndbuf"],
            "rcvbuf": fields["rcvbuf"],
            **{name: fields[name] for name in probes.SAMPLED_TCP_INFO},
            **{
                column: fields[name]
                for column, name in zip(_MEMINFO_COLUMNS, probes.SAMPLED_MEMINFO, strict=True)
            },
        }
        for name, column in self.table.columns.items():
            column.frombytes(np.ascontiguousarray(values[name], dtype=np.int64).tobytes())

    def _sample_parsed(self, t: int, count: int) -> tuple[int | None, int | None]:
        """Read and parse each probe, None (MISSING) for one that is unavailable."""
        sock = self._sock
        outq = probes.queue_out(sock)
        inq = probes.queue_in(sock)
        info = self._tcp_info() or _NO_TCP_INFO
        read_mem = self._meminfo()
        mem: tuple[int | None, ...]
        if read_mem is None:
            sizes = probes.buffer_sizes(sock)
            sndbuf, rcvbuf, mem = sizes.sndbuf, sizes.rcvbuf, _NO_MEMINFO
        else:
            mem = read_mem
            sndbuf, rcvbuf = read_mem[_MEM_SNDBUF], read_mem[_MEM_RCVBUF]
        unsent = info[_INFO_NOTSENT]
        if unsent is None:
            unsent = probes.queue_out_unsent(sock)
        for append, value in zip(
            self._appends,
            (t, count, outq, unsent, inq, sndbuf, rcvbuf, *info, *mem),
            strict=True,
        ):
            append(MISSING if value is None else value)
        return outq, inq

    @property
    def columns(self) -> dict[str, array[int]]:
        """The samples not yet spooled, one array per column."""
        with self._lock:
            self._unstage()
        return self.table.columns

    def checkpoint(self) -> None:
        """Append what was recorded since the last checkpoint (this thread only)."""
        try:
            for cp in self._checkpoints:
                cp.flush()
            if self._spooling:
                with self._lock:
                    self._unstage()
                self.table.spool()
        except OSError as exc:  # disk full, directory gone: the final write will say so
            self.checkpoint_error = exc
            self._checkpoints = []
            self._spooling = False  # the rows not spooled stay in memory

    def run(self) -> None:
        next_checkpoint = time.perf_counter_ns() + self._checkpoint_ns
        try:
            while not self._stop_event.is_set():
                checkpoints = self._checkpoints or self._spooling
                if not self._gate.is_set():  # parked: wake for the checkpoints only
                    until = (next_checkpoint - time.perf_counter_ns()) / 1e9
                    self._gate.wait(max(0.0, until) if checkpoints else None)  # stop() opens it
                    if self._stop_event.is_set():
                        break
                    if not self._gate.is_set():
                        if checkpoints and time.perf_counter_ns() >= next_checkpoint:
                            self.checkpoint()
                            next_checkpoint = time.perf_counter_ns() + self._checkpoint_ns
                        continue
                # One schedule with the loop's inline samples (next_due_ns): a gate that
                # opens just after an inline sample does not add one.
                self.sample_if_due(time.perf_counter_ns())
                if checkpoints and time.perf_counter_ns() >= next_checkpoint:
                    self.checkpoint()
                    next_checkpoint = time.perf_counter_ns() + self._checkpoint_ns
                self._stop_event.wait(max(0, self.next_due_ns - time.perf_counter_ns()) / 1e9)
        except OSError as exc:  # the socket went away under us: keep what we have
            self.error = exc

    def stop(self) -> None:
        """Stop sampling after one last sample of the final state."""
        self._stop_event.set()
        self._gate.set()
        if self.is_alive():
            self.join()
        with contextlib.suppress(OSError):
            self.sample()
        with self._lock:
            self._unstage()  # stopped: every row in the table

    @property
    def rows(self) -> int:
        """Samples taken: on disk (spooled) and in memory."""
        with self._lock:
            return self.table.rows + len(self._staged_ints) // 4

    def write(self, path: Path) -> None:
        """Write the samples (after the checkpoints: append the rows not spooled yet)."""
        with self._lock:
            self._unstage()
        self.table.write(path)
