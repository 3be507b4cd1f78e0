"""Two clocks, one timeline: the offset between the sender's and the receiver's clock.

On one host both halves read the same clock (CLOCK_MONOTONIC, time.perf_counter_ns).
On two hosts each reads its own, with its own origin and rate, so the receiver's
timestamps mean nothing on the sender's axis until the offset between the clocks is
known. The halves measure it over their own connection, NTP-style (wire.py's clock
frame), before and after the data (:data:`BEFORE`, :data:`AFTER`):

    t1  sender sends the clock frame        (sender's clock)
    t2  receiver reads it                    (receiver's clock)
    t3  receiver sends its answer            (receiver's clock)
    t4  sender reads the answer              (sender's clock)

    offset     = ((t2 - t1) + (t3 - t4)) / 2      receiver's clock minus the sender's
    round trip = (t4 - t1) - (t3 - t2)

If the one-way delays are unequal the estimate is off by half their difference, which
is at most half the round trip: that is the stated error bound. Two exchanges give
two offsets; their difference over the time between them is the drift (the clocks'
rate difference, in parts per million), and :func:`to_sender_clock` maps a receiver
timestamp with the offset interpolated linearly between the two.

Test hook: ``BUFDEMO_TEST_CLOCK_SHIFT=SECONDS`` in a ``bufdemo receive``'s environment
shifts every timestamp that receiver records (its tables, its record, its clock
answers) by SECONDS, as if its clock were set that far ahead: on one host the estimate
must then find SECONDS instead of 0. It is a test hook, never set in normal use.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bufdemo.errors import ConfigError

__all__ = [
    "CLOCK_SHIFT_ENV",
    "ClockEstimate",
    "Exchange",
    "clock_shift_ns",
    "estimate",
    "exchanges_from",
    "shift_receiver_run",
    "shift_table",
    "to_sender_clock",
]

CLOCK_SHIFT_ENV = "BUFDEMO_TEST_CLOCK_SHIFT"
# The exchanges' sequence numbers. Three back to back before the data and three after:
# each estimate uses its phase's exchange with the shortest round trip (NTP's filter:
# the least queued, so the least asymmetric). AFTER's first frame is a marker, queued
# behind the data: its answer says the pipe is empty, and it is never used itself.
BEFORE = range(0, 3)
AFTER = range(3, 7)
MARKER = AFTER[0]
MAX_SHIFT = 10 * 365 * 86400.0  # ten years: a typo beyond that


@dataclass(frozen=True, slots=True)
class Exchange:
    """The four timestamps of one exchange (ns)."""

    t1: int
    t2: int
    t3: int
    t4: int

    @property
    def offset_ns(self) -> float:
        return ((self.t2 - self.t1) + (self.t3 - self.t4)) / 2

    @property
    def round_trip_ns(self) -> int:
        return (self.t4 - self.t1) - (self.t3 - self.t2)

    @property
    def midpoint_ns(self) -> float:
        """When it happened, on the sender's clock."""
        return (self.t1 + self.t4) / 2


@dataclass(frozen=True, slots=True)
class ClockEstimate:
    """The receiver's clock minus the sender's, from one or two exchanges."""

    offset_ns: float  # at the first exchange
    error_ns: float  # half the largest round trip: the bound on the offset's error
    drift_ppm: float | None  # None with a single exchange
    at_ns: float  # the first exchange's midpoint (sender's clock)
    drift_error_ppm: float | None = None  # the two offsets' error bounds over their span

    def offset_at(self, t_sender_ns: float) -> float:
        if self.drift_ppm is None:
            return self.offset_ns
        return self.offset_ns + self.drift_ppm * 1e-6 * (t_sender_ns - self.at_ns)

    def as_dict(self) -> dict[str, Any]:
        return {
            "offset_ns": round(self.offset_ns),
            "offset_seconds": self.offset_ns / 1e9,
            "error_ns": round(self.error_ns),
            "drift_ppm": self.drift_ppm,
            "drift_error_ppm": self.drift_error_ppm,
        }


def exchanges_from(records: list[dict[str, int]]) -> list[Exchange]:
    """The best exchange (shortest round trip) of each phase, before then after; the
    sender's records ``{"seq", "t1", "t2", "t3", "t4"}``; the marker is left out."""
    best: list[Exchange] = []
    for phase in (BEFORE, AFTER):
        found = [
            Exchange(r["t1"], r["t2"], r["t3"], r["t4"])
            for r in records
            if r["seq"] in phase and r["seq"] != MARKER
        ]
        if found:
            best.append(min(found, key=lambda e: e.round_trip_ns))
    return best


def estimate(exchanges: list[Exchange]) -> ClockEstimate | None:
    """The offset (first exchange), its error bound and the drift (first to last)."""
    if not exchanges:
        return None
    first, last = exchanges[0], exchanges[-1]
    error = max(e.round_trip_ns for e in exchanges) / 2
    drift = drift_error = None
    span = last.midpoint_ns - first.midpoint_ns
    if len(exchanges) > 1 and span > 0:
        drift = (last.offset_ns - first.offset_ns) / span * 1e6
        drift_error = (first.round_trip_ns + last.round_trip_ns) / 2 / span * 1e6
    return ClockEstimate(first.offset_ns, error, drift, first.midpoint_ns, drift_error)


def to_sender_clock(t_receiver_ns: int, est: ClockEstimate) -> int:
    """A receiver timestamp on the sender's clock (two steps: the offset depends on t)."""
    guess = t_receiver_ns - est.offset_ns
    return round(t_receiver_ns - est.offset_at(guess))


def clock_shift_ns(env: dict[str, str] | os._Environ[str] = os.environ) -> int:
    """The test hook's shift in ns (0 when unset); a bad value is a usage error."""
    text = env.get(CLOCK_SHIFT_ENV)
    if not text:
        return 0
    try:
        seconds = float(text)
    except ValueError:
        raise ConfigError(CLOCK_SHIFT_ENV, f"must be seconds, got {text!r}") from None
    if not math.isfinite(seconds) or abs(seconds) > MAX_SHIFT:
        raise ConfigError(CLOCK_SHIFT_ENV, f"must be finite and within 10 years, got {text!r}")
    return round(seconds * 1e9)


def shift_receiver_run(run_dir: Path, result: Any, shift_ns: int) -> None:
    """The test hook, applied to what a receiver recorded: its tables and its record."""
    for name in ("consumed.csv", "receiver_samples.csv"):
        shift_table(run_dir / name, lambda t: t + shift_ns)
    for key in ("t_connected_ns", "t_done_ns"):
        value = getattr(result, key)
        if value is not None:
            setattr(result, key, value + shift_ns)


def shift_table(path: Path, convert: Any) -> None:
    """Rewrite every timestamp cell (``t_ns``, ``t_*_ns``; not durations) of the CSV."""
    if not path.is_file():
        return
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    header = rows[0]
    cols = [i for i, n in enumerate(header) if n.startswith("t_") and n.endswith("_ns")]
    for row in rows[1:]:
        for i in cols:
            if i < len(row) and row[i] != "":
                row[i] = str(convert(int(row[i])))
    tmp = path.with_name(path.name + ".part")
    with tmp.open("w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)
    tmp.replace(path)
