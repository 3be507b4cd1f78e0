"""Stalls, resumes and phases: pure functions of the tables, no I/O.

A *stall* is one blocking send: the sender's first, non-waiting attempt could not hand
the whole message to the kernel because the send buffer was full (queued truesize at
SO_SNDBUF), so the sender slept in the kernel until there was room. There is no
duration threshold: every row of ``blocking_sends.csv`` is one stall, from ``t_start``
(the failed attempt) to ``t_end`` (the message completely queued).

The kernel does not wake the sender as soon as one message fits. ``sk_stream_write_space``
wakes it only when free space is at least half of what is queued, i.e. when the queue
has drained to about **2/3 of SO_SNDBUF**. The queue at wake-up is not probed directly:
the end probe runs just after the rest of the message was queued, so

    outq_wake = outq_end - bytes_after_wait        drained = outq_start - outq_wake

and ``wake_ratio = outq_wake / outq_start`` is about 2/3 (both are payload bytes;
SO_SNDBUF counts truesize, so ``outq_wake / sndbuf`` is lower: the two are shown side
by side, never converted).

A run has three phases: **fill** (the sender runs free until the first stall),
**stall/resume** (the receiver paces the sender, until the last message is handed to the
kernel) and **drain** (the receiver consumes what the kernel still holds).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import numpy.typing as npt
import pandas as pd

if TYPE_CHECKING:
    from bufdemo.analysis.load import Run

__all__ = [
    "STALL_COLUMNS",
    "Phase",
    "interval_indicator",
    "phases",
    "receiver_seconds",
    "resumes",
    "sender_seconds",
    "service_times",
    "stalls",
]

STALL_COLUMNS = (
    "start",
    "end",
    "duration",
    "seq",
    "outq_start",
    "outq_wake",
    "drained",
    "wake_ratio",
    "sndbuf_start",
)

FILL, STALL_RESUME, DRAIN = "fill", "stall/resume", "drain"


class Phase(NamedTuple):
    name: str
    start: float
    end: float


def _blocking_frame(data: Run | pd.DataFrame) -> tuple[pd.DataFrame, int]:
    if isinstance(data, pd.DataFrame):
        return data, 0
    return data.blocking_sends, data.t0_ns


def _seconds(frame: pd.DataFrame, name: str, t0_ns: int) -> npt.NDArray[np.float64]:
    """Column ``name`` in seconds: the loader's float column, else from ``name_ns``."""
    if name in frame.columns:
        return frame[name].to_numpy(dtype="float64", na_value=np.nan)
    ns = frame[f"{name}_ns"] - t0_ns
    return ns.to_numpy(dtype="float64", na_value=np.nan) / 1e9


def _floats(frame: pd.DataFrame, name: str) -> npt.NDArray[np.float64]:
    if name not in frame.columns:
        return np.full(len(frame), np.nan)
    return frame[name].to_numpy(dtype="float64", na_value=np.nan)


def stalls(data: Run | pd.DataFrame, t0_ns: int = 0) -> pd.DataFrame:
    """One row per blocking send, sorted by start: the columns of :data:`STALL_COLUMNS`.

    ``data`` is a :class:`~analysis.load.Run` or a ``blocking_sends`` table. A table with
    ``t_start``/``t_end`` seconds columns (as :func:`~analysis.load.load_run` adds) is
    used as is; a raw table's ``*_ns`` columns are taken relative to ``t0_ns``.
    A stall whose end was never recorded (the run stopped inside it) has ``end`` NaN.
    """
    frame, origin = _blocking_frame(data)
    if not isinstance(data, pd.DataFrame):
        t0_ns = origin
    start = _seconds(frame, "t_start", t0_ns)
    end = _seconds(frame, "t_end", t0_ns)
    outq_start = _floats(frame, "outq_start")
    after = _floats(frame, "bytes_after_wait")
    outq_wake = _floats(frame, "outq_end") - after
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(outq_start > 0, outq_wake / outq_start, np.nan)
    out = pd.DataFrame(
        {
            "start": start,
            "end": end,
            "duration": end - start,
            "seq": frame["seq"].to_numpy(dtype="int64")
            if "seq" in frame.columns
            else np.arange(len(frame), dtype=np.int64),
            "outq_start": outq_start,
            "outq_wake": outq_wake,
            "drained": outq_start - outq_wake,
            "wake_ratio": ratio,
            "sndbuf_start": _floats(frame, "sndbuf_start"),
        }
    )
    if len(out) > 1 and not bool((np.diff(start) >= 0).all()):
        out = out.sort_values("start", kind="stable").reset_index(drop=True)
    return out


def resumes(data: Run | pd.DataFrame, t0_ns: int = 0) -> pd.DataFrame:
    """One row per wake-up, for the 2/3 rule: when, and how full the queue still was.

    Columns: ``t`` (wake-up, seconds), ``seq``, ``outq_start``, ``outq_wake``,
    ``drained`` (bytes acknowledged while the sender slept), ``of_stall_start``
    (``outq_wake / outq_start``, about 2/3) and ``of_sndbuf`` (``outq_wake`` over
    SO_SNDBUF: payload over truesize, so lower than 2/3). Unfinished stalls are left out.
    """
    s = stalls(data, t0_ns)
    s = s[np.isfinite(s["end"].to_numpy())]
    with np.errstate(divide="ignore", invalid="ignore"):
        of_sndbuf = np.where(
            s["sndbuf_start"] > 0, s["outq_wake"] / s["sndbuf_start"], np.nan
        ).astype("float64")
    return pd.DataFrame(
        {
            "t": s["end"].to_numpy(),
            "seq": s["seq"].to_numpy(),
            "outq_start": s["outq_start"].to_numpy(),
            "outq_wake": s["outq_wake"].to_numpy(),
            "drained": s["drained"].to_numpy(),
            "of_stall_start": s["wake_ratio"].to_numpy(),
            "of_sndbuf": of_sndbuf,
        }
    )


def _finite_max(values: npt.NDArray[np.float64]) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.max()) if finite.size else None


def _meta_seconds(run: Run, side: str) -> float | None:
    done = run.side(side).get("t_done_ns")
    if isinstance(done, int) and not isinstance(done, bool):
        return (done - run.t0_ns) / 1e9
    return None


def sender_seconds(run: Run) -> float | None:
    """When the last message was handed to the kernel (meta ``t_done_ns``, else sends.csv)."""
    from_meta = _meta_seconds(run, "sender")
    if from_meta is not None:
        return from_meta
    sends = run.sends
    if sends.empty:
        return None
    ends = sends["t"].to_numpy()  # when each message was completely handed over
    return _finite_max(ends)


def receiver_seconds(run: Run) -> float | None:
    """When the last message was consumed (consumed.csv, else meta ``t_done_ns``)."""
    if not run.consumed.empty:
        return _finite_max(run.consumed["t_end"].to_numpy())
    return _meta_seconds(run, "receiver")


def phases(run: Run) -> list[Phase]:
    """The run's phases in order: fill, stall/resume (if any stall), drain (if known).

    - **fill**: 0 to the first stall (or to the sender's end when nothing stalled);
    - **stall/resume**: first stall to the last message handed to the kernel;
    - **drain**: from there to the last message consumed.

    A side that is absent contributes nothing: a sender-only run has no drain; a
    receiver-only run has no phases (when the sender finished is unknown).
    """
    sent = sender_seconds(run)
    if sent is None:
        return []
    s = stalls(run)
    starts = s["start"].to_numpy()
    first = float(starts.min()) if starts.size else None
    out: list[Phase] = []
    if first is None:
        out.append(Phase(FILL, 0.0, sent))
    else:
        out.append(Phase(FILL, 0.0, first))
        out.append(Phase(STALL_RESUME, first, max(first, sent)))
    received = receiver_seconds(run)
    if received is not None and received > sent:
        out.append(Phase(DRAIN, sent, received))
    return out


def service_times(consumed: pd.DataFrame) -> pd.Series:
    """Achieved service time (seconds) of each message the receiver served backlogged.

    A message was *backlogged* when its frame was already waiting in the kernel as the
    previous one finished: its service then started at the previous message's target end,
    before the frame was read (``t_start_ns < t_read_ns``). Its achieved service time is
    the spacing of consecutive service ends, ``t_end[i] - t_end[i-1]``: that is the pace
    a sender sees. (``t_end - t_start`` would add each message's wake-up overshoot, which
    the service model absorbs instead of carrying forward.) A message the receiver had
    to wait for is left out: its time says nothing about the pace under load.
    Indexed by ``seq``.
    """
    if consumed.empty:
        return pd.Series([], dtype="float64", name="service")
    start = consumed["t_start_ns"].to_numpy(dtype="int64")
    read = consumed["t_read_ns"].to_numpy(dtype="int64")
    end = consumed["t_end_ns"].to_numpy(dtype="int64")
    backlogged = start < read
    backlogged[0] = False  # no previous end to measure from
    previous_end = np.roll(end, 1)
    return pd.Series(
        (end[backlogged] - previous_end[backlogged]) / 1e9,
        index=pd.Index(consumed["seq"].to_numpy()[backlogged], name="seq"),
        name="service",
        dtype="float64",
    )


def interval_indicator(
    starts: npt.ArrayLike, ends: npt.ArrayLike
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Step arrays ``(x, y)`` of "inside some interval" for ``fill_between(step="post")``.

    ``y`` is 1 from each start to its end and 0 elsewhere; overlapping or touching
    intervals merge. Every interval is kept (thousands of stalls become one artist, none
    dropped). Intervals with a NaN bound are skipped; an end before its start is empty.
    """
    s = np.asarray(starts, dtype="float64")
    e = np.asarray(ends, dtype="float64")
    keep = np.isfinite(s) & np.isfinite(e) & (e > s)
    s, e = s[keep], e[keep]
    if s.size == 0:
        return np.zeros(0), np.zeros(0)
    order = np.argsort(s, kind="stable")
    s, e = s[order], e[order]
    reach = np.maximum.accumulate(e)
    # A new merged interval begins where a start lies beyond everything before it.
    new = np.empty(s.size, dtype=bool)
    new[0] = True
    new[1:] = s[1:] > reach[:-1]
    first = np.flatnonzero(new)
    m_start = s[first]
    m_end = reach[np.append(first[1:] - 1, s.size - 1)]  # reach at each group's last row
    x = np.empty(2 * m_start.size)
    x[0::2], x[1::2] = m_start, m_end
    y = np.empty_like(x)
    y[0::2], y[1::2] = 1.0, 0.0
    return x, y
