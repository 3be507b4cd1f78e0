"""Shared benchmark plumbing: a drain receiver in another process, timing helpers."""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from multiprocessing.connection import Connection

DRAIN_CHUNK = 1 << 20  # one recv_into of up to 1 MiB: the drain never limits the sender


def _drain(listener: socket.socket, ready: Connection, cpu: int | None) -> None:  # a child
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    ready.send(listener.getsockname()[1])
    while True:
        conn, _ = listener.accept()
        buf = bytearray(DRAIN_CHUNK)
        view = memoryview(buf)
        with conn:
            while conn.recv_into(view):
                pass


@contextmanager
def drain_receiver(cpu: int | None = None) -> Iterator[tuple[str, int]]:
    """An unthrottled receiver in another process: reads and discards, as fast as it can
    (on CPU ``cpu`` only, if given)."""
    ctx = mp.get_context("fork")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_drain, args=(listener, child, cpu), daemon=True)
    proc.start()
    port = parent.recv()
    listener.close()
    try:
        yield ("127.0.0.1", port)
    finally:
        proc.terminate()
        proc.join()
        parent.close()
        child.close()


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:,.0f} .. {hi:,.0f}"


def round_verdict(ratios: Sequence[float], goal: float) -> str:
    """A goal's verdict on per-round ratios, each a run against the bare run of its own
    round: "meets" or "MISSES" when every round falls on the same side of the goal,
    else how many rounds met it (the machine's noise is larger than the margin: the
    medians' ratio alone would hide that)."""
    met = sum(r >= goal for r in ratios)
    if met == len(ratios):
        return "meets"
    if met == 0:
        return "MISSES"
    return f"unsettled: {met} of {len(ratios)} rounds meet it"


def recording_floor(sock: socket.socket, n: int, size: int) -> None:
    """The least a loop that records every send does, ``n`` messages of ``size`` bytes:
    ``os.write`` of one pre-built message (the call bufdemo's loop makes), a check of
    the count, a clock read appended to a list."""
    msg = b"x" * size
    fd, write, now = sock.fileno(), os.write, time.perf_counter_ns
    stamps: list[int] = []
    stamp = stamps.append
    for _ in range(n):
        if write(fd, msg) != size:
            raise SystemExit("a partial write: the reader did not keep up")
        stamp(now())
