"""Recording without disturbing what is recorded.

The hot loops write into preallocated ``array.array`` columns (a C store per field, no
allocation, no I/O); the tables are written to CSV once, at the end, or when the run
fails part-way, so a failed run still leaves what it recorded.

Periodic samples come from a :class:`Sampler` thread in each process. It probes the
socket on its own schedule, so the loop never pays for sampling, and it can keep
sampling while the loop is blocked inside ``send()``. Each process records its own
side; both stamp ``time.perf_counter_ns()`` (CLOCK_MONOTONIC on Linux), so the two
sides' rows align without correction on one host.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from array import array
from collections.abc import Callable, Mapping, MutableSequence, Sequence
from pathlib import Path
from typing import Any

from demo import probes

__all__ = [
    "MISSING",
    "SAMPLE_COLUMNS",
    "BlockingLog",
    "ConsumedLog",
    "Sampler",
    "SendLog",
    "write_table",
]

MISSING = -1  # stored for a probe that returned None; written as an empty cell

SAMPLE_COLUMNS = (
    "t_ns",
    "count",
    "outq",
    "outq_nsd",
    "inq",
    "sndbuf",
    "rcvbuf",
    *probes.SAMPLED_TCP_INFO,
)

BLOCKING_COLUMNS = (
    "seq",
    "t_start_ns",
    "t_end_ns",
    "accepted_first",
    "bytes_after_wait",
    "outq_start",
    "outq_nsd_start",
    "sndbuf_start",
    "outq_end",
    "outq_nsd_end",
    "sndbuf_end",
    "waits",
)


def _zeros(typecode: str, n: int) -> array[int]:
    return array(typecode, bytes(array(typecode).itemsize * n))


def write_table(path: Path, columns: Mapping[str, Sequence[int]], rows: int) -> None:
    """Write the first ``rows`` rows of integer columns to CSV; MISSING becomes empty."""
    import numpy as np
    import pandas as pd

    data: dict[str, Any] = {}
    for name, col in columns.items():
        values = np.asarray(col[:rows] if isinstance(col, array) else list(col)[:rows])
        if values.dtype.kind in "iu" and (values == MISSING).any():
            data[name] = pd.array(np.where(values == MISSING, 0, values), dtype="Int64")
            data[name][values == MISSING] = pd.NA
        else:
            data[name] = values
    tmp = path.with_name(path.name + ".part")
    pd.DataFrame(data, columns=list(columns)).to_csv(tmp, index=False)
    tmp.replace(path)  # a reader never sees a half-written table


class SendLog:
    """One row per message, preallocated: ~21 bytes per send in memory."""

    def __init__(self, messages: int, size: int) -> None:
        self.size = size
        self.t_ns = _zeros("q", messages)
        self.duration_ns = _zeros("q", messages)
        self.accepted_first = _zeros("i", messages)
        self.blocked = _zeros("b", messages)
        self.rows = 0  # messages completely handed to the kernel

    def write(self, path: Path) -> None:
        n = self.rows
        write_table(
            path,
            {
                "seq": range(n),
                "t_ns": self.t_ns,
                "duration_ns": self.duration_ns,
                "bytes": [self.size] * n,
                "accepted_first": self.accepted_first,
                "blocked": self.blocked,
            },
            n,
        )


class BlockingLog:
    """One row per blocking send: rare (one per stall), so a plain list is enough."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, ...]] = []

    def __len__(self) -> int:
        return len(self.rows)

    def append(self, row: tuple[int, ...]) -> None:
        self.rows.append(row)

    def write(self, path: Path) -> None:
        columns = {name: [r[i] for r in self.rows] for i, name in enumerate(BLOCKING_COLUMNS)}
        write_table(path, columns, len(self.rows))


class ConsumedLog:
    """One row per message the receiver consumed; grows if the sender sends more."""

    def __init__(self, expected: int) -> None:
        self.seq = _zeros("q", expected)
        self.t_read_ns = _zeros("q", expected)
        self.t_start_ns = _zeros("q", expected)
        self.t_end_ns = _zeros("q", expected)
        self.intact = _zeros("b", expected)
        self.rows = 0

    def grow(self) -> None:
        """Double the capacity (only if the sender sends more than it announced)."""
        for col in (self.seq, self.t_read_ns, self.t_start_ns, self.t_end_ns, self.intact):
            col.extend(_zeros(col.typecode, max(len(col), 1024)))

    @property
    def capacity(self) -> int:
        return len(self.seq)

    def write(self, path: Path) -> None:
        write_table(
            path,
            {
                "seq": self.seq,
                "t_read_ns": self.t_read_ns,
                "t_start_ns": self.t_start_ns,
                "t_end_ns": self.t_end_ns,
                "intact": self.intact,
            },
            self.rows,
        )


def _or_missing(value: int | None) -> int:
    return MISSING if value is None else value


class Sampler(threading.Thread):
    """Probe one socket every ``interval`` seconds until :meth:`stop`.

    ``count`` is read each sample (messages sent or consumed so far). ``progress``, if
    given, receives ``[count, outq, inq, extra()]`` at each sample for a live display
    in another process (a shared array): the hot loop itself never writes to it.
    """

    def __init__(
        self,
        sock: socket.socket,
        interval: float,
        count: Callable[[], int],
        progress: MutableSequence[int] | None = None,
        extra: Callable[[], int] = lambda: 0,
    ) -> None:
        super().__init__(name="bufdemo-sampler", daemon=True)
        self._sock = sock
        self._interval_ns = max(1, round(interval * 1e9))
        self._count = count
        self._progress = progress
        self._extra = extra
        self._stop_event = threading.Event()
        self.columns: dict[str, array[int]] = {name: array("q") for name in SAMPLE_COLUMNS}
        self.error: BaseException | None = None
        self._tcp_info = probes.tcp_info_reader(sock)

    def sample(self) -> None:
        sock = self._sock
        c = self.columns
        t = time.perf_counter_ns()
        count = self._count()
        outq = probes.queue_out(sock)
        inq = probes.queue_in(sock)
        sizes = probes.buffer_sizes(sock)
        c["t_ns"].append(t)
        c["count"].append(count)
        c["outq"].append(_or_missing(outq))
        c["outq_nsd"].append(_or_missing(probes.queue_out_unsent(sock)))
        c["inq"].append(_or_missing(inq))
        c["sndbuf"].append(_or_missing(sizes.sndbuf))
        c["rcvbuf"].append(_or_missing(sizes.rcvbuf))
        info = self._tcp_info()
        for i, name in enumerate(probes.SAMPLED_TCP_INFO):
            c[name].append(MISSING if info is None else _or_missing(info[i]))
        if self._progress is not None:
            self._progress[0] = count
            self._progress[1] = _or_missing(outq)
            self._progress[2] = _or_missing(inq)
            self._progress[3] = self._extra()

    def run(self) -> None:
        next_t = time.perf_counter_ns()
        try:
            while not self._stop_event.is_set():
                self.sample()
                next_t += self._interval_ns
                now = time.perf_counter_ns()
                if next_t < now:  # fell behind (machine busy): skip, don't burst
                    next_t = now + self._interval_ns
                self._stop_event.wait((next_t - now) / 1e9)
        except OSError as exc:  # the socket went away under us: keep what we have
            self.error = exc

    def stop(self) -> None:
        """Stop sampling after one last sample of the final state."""
        self._stop_event.set()
        if self.is_alive():
            self.join()
        with contextlib.suppress(OSError):
            self.sample()

    @property
    def rows(self) -> int:
        return min(len(col) for col in self.columns.values())

    def write(self, path: Path) -> None:
        write_table(path, dict(self.columns), self.rows)
