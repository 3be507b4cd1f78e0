"""Shared benchmark plumbing: a drain receiver in another process, timing helpers."""

from __future__ import annotations

import math
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


def median_interval(
    values: Sequence[float], confidence: float = 0.95
) -> tuple[float, float, float]:
    """A distribution-free confidence interval for the median: ``(low, high, coverage)``.

    The k-th smallest and k-th largest of n values bound the median with probability
    1 - 2 P(Binomial(n, 1/2) <= k - 1), whatever the values' distribution (each falls
    below the median with probability 1/2). The largest k that still reaches
    ``confidence`` is taken; where none does (n < 6 at 95%), the smallest and largest
    values, and their lower coverage (15 of 16 for n = 5).
    """
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        raise ValueError("no values")

    # P(Bin(n, 1/2) <= k - 1) as a running sum: 1 - 2 * below is the coverage of k.
    below = math.comb(n, 0)
    k = 1
    while k + 1 <= (n + 1) // 2 and 1 - 2 * (below + math.comb(n, k)) / 2**n >= confidence:
        below += math.comb(n, k)
        k += 1
    return ordered[k - 1], ordered[n - k], 1 - 2 * below / 2**n


def in_turn(names: list[str], i: int) -> list[str]:
    """The order of round ``i``: forwards in even rounds, backwards in odd ones, so that
    a drift within a round (a machine warming up or getting busier) favours no variant."""
    return names if i % 2 == 0 else names[::-1]


def round_verdict(ratios: Sequence[float], goal: float) -> str:
    """A goal's verdict on per-round ratios, each a run against the bare run of its own
    round: "meets" or "MISSES" when the median's confidence interval
    (:func:`median_interval`) lies on one side of the goal, else how many rounds met it
    (the machine's noise is larger than the margin: the medians' ratio alone would hide
    that). Up to 8 rounds the interval is every round: all must agree."""
    low, high, _ = median_interval(ratios)
    if low >= goal:
        return "meets"
    if high < goal:
        return "MISSES"
    met = sum(r >= goal for r in ratios)
    return f"unsettled: {met} of {len(ratios)} rounds meet it"


def send_bare(sock: socket.socket, n: int, msg: bytes) -> None:
    """The bare reference of every sender benchmark: ``sock.sendall(msg)``, ``n`` times."""
    sendall = sock.sendall
    for _ in range(n):
        sendall(msg)


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
