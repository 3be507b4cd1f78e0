"""What the buffers cost: each message's latency, decomposed into where it waited.

A message's life on one host, every time on CLOCK_MONOTONIC:

    handed     the send call returned: the message is in the send buffer (sends.csv)
    SND        its last byte left the send queue for the wire (tx_timestamps.csv)
    ACK        the ACK covering its last byte came back (tx_timestamps.csv)
    start/end  the receiver's service of it (consumed.csv)

and its latency splits into four parts that add up to the fifth (up to the clock
conversion of the kernel's timestamps, a microsecond):

    queued_in_send_buffer    = SND - handed        unsent, behind the rest of the queue
    in_flight_until_ack      = ACK - SND           on the wire (loopback: microseconds)
    waiting_in_receive_queue = start - ACK         arrived, not yet read by the receiver
    service                  = end - start         the receiver's work (--recv-delay)
    end_to_end               = end - handed        the sum: what the application sees

The ACK stands for the message's arrival in the receive queue. An idle receiver delays
its ACKs (up to 40 ms): an ACK later than the service start is capped there (the
message had arrived), so the parts stay in order and add up.

"handed" is when the send call *returned*; on loopback an unblocked message is often
sent during the call (its SND stamp is earlier by the call's own duration): it counts
as sent when handed, ``queued_in_send_buffer`` 0, never negative.

The kernel stamps one skb, not one send (docs/run-format.md, tx_timestamps.csv): the
time a stage reached a message is that of the first report of the stage whose offset
reaches the message's last byte, ``(seq + 1) * size - 1``. TCP moves bytes in order, so
any report at or beyond that byte says the message had got there.

Without transmit timestamps (a kernel that refuses SO_TIMESTAMPING, an older run) the
three parts they provide are unknown (NaN, null in JSON); ``end_to_end`` and ``service``
need only the two logs and are always there.

**Little's law** checks the measurement: in the stall/resume phase the queue in front
of the receiver is the bytes in both kernels (SIOCOUTQ + SIOCINQ) and it drains at the
receiver's rate, so a message waits ``queued bytes / drain rate``. :func:`littles_law`
puts that beside the median measured end-to-end latency of the phase.

Pure functions of the tables (sans-IO) but :func:`load_tx_timestamps`, which reads the
optional table, and :func:`write_latency`, the one writer.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from bufdemo.analysis.load import Run
from bufdemo.analysis.plots import shade_stalls
from bufdemo.analysis.stalls import phases, stalls
from bufdemo.runformat import LATENCY, TX_TIMESTAMPS

__all__ = [
    "PARTS",
    "decompose",
    "latency",
    "latency_figure",
    "latency_summary",
    "littles_law",
    "load_tx_timestamps",
    "plot_latency",
    "plot_latency_breakdown",
    "stage_times",
    "timestamping_reason",
    "write_latency",
]

SND, SCHED, ACK = 0, 1, 2  # tx_timestamps.csv ``kind`` (the kernel's SCM_TSTAMP_*)
PARTS = (
    "queued_in_send_buffer",
    "in_flight_until_ack",
    "waiting_in_receive_queue",
    "service",
)
COLUMNS = (*PARTS, "end_to_end")
PART_LABELS = {
    "queued_in_send_buffer": "queued in the send buffer",
    "in_flight_until_ack": "in flight until ACKed",
    "waiting_in_receive_queue": "waiting in the receive queue",
    "service": "receiver's service",
    "end_to_end": "end to end",
}
PART_COLORS = {
    "queued_in_send_buffer": "tab:blue",
    "in_flight_until_ack": "tab:purple",
    "waiting_in_receive_queue": "tab:olive",
    "service": "tab:green",
}
# Plot at most this many points per series: a 100,000-message run stays a ~200 KB PNG.
MAX_POINTS = 5000


def load_tx_timestamps(run: Run) -> pd.DataFrame | None:
    """tx_timestamps.csv of ``run`` (None when the run has none)."""
    path = run.path / TX_TIMESTAMPS.file
    if not path.is_file():
        return None
    return pd.read_csv(path, dtype=dict(TX_TIMESTAMPS.dtypes))


def stage_times(
    stamps: pd.DataFrame, kind: int, last_byte: npt.NDArray[np.int64]
) -> npt.NDArray[np.float64]:
    """When stage ``kind`` first reached each ``last_byte`` (ns, NaN: never reported).

    The earliest report of that kind at an offset >= the byte: a suffix minimum over
    the reports sorted by offset.
    """
    sub = stamps[stamps["kind"] == kind]
    out = np.full(len(last_byte), np.nan)
    if sub.empty:
        return out
    order = np.argsort(sub["offset"].to_numpy(), kind="stable")
    offsets = sub["offset"].to_numpy()[order]
    times = sub["t_ns"].to_numpy(dtype="float64")[order]
    earliest = np.minimum.accumulate(times[::-1])[::-1]
    i = np.searchsorted(offsets, last_byte, side="left")
    found = i < len(offsets)
    out[found] = earliest[i[found]]
    return out


def decompose(
    sends: pd.DataFrame,
    consumed: pd.DataFrame,
    size: int,
    stamps: pd.DataFrame | None,
) -> pd.DataFrame:
    """latency.csv's rows: one per message sent, columns of runformat.LATENCY.

    ``sends`` needs ``seq``, ``t_ns``; ``consumed`` ``seq``, ``t_start_ns``, ``t_end_ns``;
    ``stamps`` (or None) ``kind``, ``offset``, ``t_ns``. Parts in seconds; NaN unknown
    (a message never consumed, a stage never reported, no timestamps).
    """
    seq = sends["seq"].to_numpy(dtype="int64")
    handed = sends["t_ns"].to_numpy(dtype="float64")
    nan = np.full(len(seq), np.nan)
    if not consumed.empty:
        served = consumed.drop_duplicates("seq").set_index("seq")
        start = served["t_start_ns"].reindex(seq).to_numpy(dtype="float64", na_value=np.nan)
        end = served["t_end_ns"].reindex(seq).to_numpy(dtype="float64", na_value=np.nan)
    else:
        start, end = nan, nan
    if stamps is not None and not stamps.empty:
        last_byte = (seq + 1) * size - 1
        snd, ack = stage_times(stamps, SND, last_byte), stage_times(stamps, ACK, last_byte)
        # Sent during the send call itself: not queued at all (not "before handed").
        snd = np.where(snd < handed, handed, snd)
        # A delayed ACK may come after the receiver began on the message: it had arrived.
        ack = np.where(ack < snd, snd, ack)
        ack = np.where(ack > start, start, ack)
    else:
        snd, ack = nan, nan
    parts = {
        "queued_in_send_buffer": snd - handed,
        "in_flight_until_ack": ack - snd,
        "waiting_in_receive_queue": start - ack,
        "service": end - start,
        "end_to_end": end - handed,
    }
    frame = pd.DataFrame({"seq": seq, "t_handed_ns": sends["t_ns"].to_numpy(dtype="int64")})
    for name, values in parts.items():
        frame[name] = values / 1e9
    return frame[list(LATENCY.columns)]


def _size(run: Run) -> int:
    size = run.config.get("size")
    if isinstance(size, int):
        return size
    return int(run.sends["bytes"].iloc[0]) if not run.sends.empty else 0


def latency(run: Run) -> pd.DataFrame:
    """:func:`decompose` for a run, with ``t`` (handed, seconds since t0) added."""
    frame = decompose(run.sends, run.consumed, _size(run), load_tx_timestamps(run))
    frame["t"] = (frame["t_handed_ns"] - run.t0_ns) / 1e9
    return frame


def timestamping_reason(run: Run) -> str | None:
    """Why the run has no transmit timestamps (one line), or None when it has them."""
    record = run.side("sender").get("timestamping")
    if (run.path / TX_TIMESTAMPS.file).is_file():
        return None
    if isinstance(record, dict) and record.get("reason"):
        return str(record["reason"])
    if not run.has_sender:
        return "no sender in this run directory"
    return "the run has no tx_timestamps.csv (recorded before bufdemo read transmit timestamps)"


def _stats(values: npt.NDArray[np.float64]) -> dict[str, float | None]:
    finite = values[np.isfinite(values)]
    if not finite.size:
        return {"p50": None, "p99": None, "max": None}
    p50, p99 = np.percentile(finite, [50, 99])
    return {"p50": float(p50), "p99": float(p99), "max": float(finite.max())}


def littles_law(run: Run, frame: pd.DataFrame | None = None) -> dict[str, float | None]:
    """In the stall/resume phase: measured median end-to-end latency against Little's law.

    ``queued_bytes_median``: median over the sender's samples of SIOCOUTQ plus the
    receiver's latest SIOCINQ; ``drain_rate``: bytes consumed per second in the phase;
    ``predicted_seconds`` = their ratio; ``measured_seconds``: median end-to-end latency
    of the messages handed over in the phase; ``ratio`` = measured / predicted.
    """
    empty: dict[str, float | None] = dict.fromkeys(
        ("queued_bytes_median", "drain_rate", "predicted_seconds", "measured_seconds", "ratio")
    )
    phase = next((p for p in phases(run) if p.name == "stall/resume"), None)
    ss, rs, consumed = run.sender_samples, run.receiver_samples, run.consumed
    if phase is None or ss.empty or rs.empty or consumed.empty:
        return empty
    frame = latency(run) if frame is None else frame
    left = pd.DataFrame(
        {"t": ss["t"].to_numpy(), "outq": ss["outq"].to_numpy(dtype="float64", na_value=np.nan)}
    )
    right = pd.DataFrame(
        {"t": rs["t"].to_numpy(), "inq": rs["inq"].to_numpy(dtype="float64", na_value=np.nan)}
    )
    both = pd.merge_asof(left, right, on="t", direction="backward")
    inside = (both["t"] >= phase.start) & (both["t"] < phase.end)
    queued = (both["outq"] + both["inq"])[inside].to_numpy()
    queued = queued[np.isfinite(queued)]
    ends = consumed["t_end"].to_numpy()
    served = ((ends >= phase.start) & (ends < phase.end)).sum()
    span = phase.end - phase.start
    e2e = frame["end_to_end"].to_numpy()[
        ((frame["t"] >= phase.start) & (frame["t"] < phase.end)).to_numpy()
    ]
    e2e = e2e[np.isfinite(e2e)]
    if not queued.size or served < 2 or span <= 0 or not e2e.size:
        return empty
    rate = served * _size(run) / span
    predicted = float(np.median(queued)) / rate
    measured = float(np.median(e2e))
    return {
        "queued_bytes_median": float(np.median(queued)),
        "drain_rate": rate,
        "predicted_seconds": predicted,
        "measured_seconds": measured,
        "ratio": measured / predicted if predicted > 0 else None,
    }


def latency_summary(run: Run) -> dict[str, Any]:
    """summary.json's ``latency``: p50/p99/max of each part, why parts are missing, and
    Little's law in the stall/resume phase."""
    frame = latency(run)
    out: dict[str, Any] = {c: _stats(frame[c].to_numpy()) for c in COLUMNS}
    out["timestamping"] = timestamping_reason(run)
    queued = frame["queued_in_send_buffer"].to_numpy()
    e2e = frame["end_to_end"].to_numpy()
    both = np.isfinite(queued) & np.isfinite(e2e) & (e2e > 0)
    out["send_buffer_share"] = float(queued[both].sum() / e2e[both].sum()) if both.any() else None
    out["littles_law"] = littles_law(run, frame)
    return out


def write_latency(run: Run) -> Path:
    """Write latency.csv into the run directory (seconds; empty cell: unknown)."""
    frame = decompose(run.sends, run.consumed, _size(run), load_tx_timestamps(run))
    path = run.path / LATENCY.file
    tmp = path.with_name(path.name + ".part")
    frame.to_csv(tmp, index=False, float_format="%.9f", na_rep="")
    tmp.replace(path)
    return path


def _thin(n: int) -> slice:
    return slice(None, None, max(1, math.ceil(n / MAX_POINTS)))


def plot_latency(ax: Axes, frame: pd.DataFrame, unit: float = 1.0) -> list[Artist]:
    """End-to-end latency of each message against when it was handed over (``t``)."""
    keep = _thin(len(frame))
    artists: list[Artist] = list(
        ax.plot(
            frame["t"].to_numpy()[keep],
            frame["end_to_end"].to_numpy()[keep] / unit,
            color="black",
            lw=0.8,
            label="end-to-end latency",
        )
    )
    ax.set_xlabel("message handed to the kernel at (s since connection)")
    ax.set_ylabel("latency (s)" if unit == 1.0 else "latency (ms)" if unit == 1e-3 else "latency")
    return artists


def plot_latency_breakdown(ax: Axes, frame: pd.DataFrame, unit: float = 1.0) -> list[Artist]:
    """The parts stacked per message (those known), against ``t``; they add up to the
    end-to-end line. Parts without data (no timestamps) are left out."""
    keep = _thin(len(frame))
    shown = [p for p in PARTS if np.isfinite(frame[p].to_numpy()).any()]
    if not shown:
        return []
    ys = [np.nan_to_num(frame[p].to_numpy()[keep] / unit).clip(min=0) for p in shown]
    artists: list[Artist] = list(
        ax.stackplot(
            frame["t"].to_numpy()[keep],
            *ys,
            labels=[PART_LABELS[p] for p in shown],
            colors=[PART_COLORS[p] for p in shown],
            alpha=0.75,
        )
    )
    ax.set_xlabel("message handed to the kernel at (s since connection)")
    ax.set_ylabel("latency (s)" if unit == 1.0 else "latency (ms)" if unit == 1e-3 else "latency")
    return artists


def latency_figure(run: Run, figsize: tuple[float, float] = (14.0, 8.0)) -> Figure:
    """End-to-end latency over time with the stalls shaded, above the stacked parts."""
    frame = latency(run)
    fig = Figure(figsize=figsize, layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    plot_latency(top, frame)
    s = stalls(run)
    if len(s):
        shade_stalls(top, s, label="sender blocked in send()")
    top.legend(loc="upper left")
    top.set_title("per-message latency: handed to the kernel -> consumed by the receiver")
    if plot_latency_breakdown(bottom, frame):
        bottom.legend(loc="upper left")
    reason = timestamping_reason(run)
    title = "where the time went"
    if reason is not None:
        title += f" (no transmit timestamps: {reason})"
    bottom.set_title(title)
    return fig
