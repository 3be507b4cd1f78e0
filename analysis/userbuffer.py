"""The buffer above the kernel: what an asyncio sender held in user space, and its memory.

Runs in the asyncio modes (``--mode asyncio`` / ``asyncio-nodrain``) have one more table,
``transport_samples.csv`` (docs/run-format.md): the transport's buffered bytes
(``get_write_buffer_size()``), the kernel's send queue of the same socket, the sender's
RSS and what the recording itself held, sampled on the run's clock. This module reads
it (:func:`transport_samples`), reduces it to the numbers that judge the run
(:func:`user_buffer`), and draws it: the transport's buffer as a layer stacked on the
kernel's send queue (:func:`plot_user_buffer`), the RSS beside it (:func:`plot_rss`).

In these modes a *blocking send* (blocking_sends.csv, the stalls) is a ``drain()`` that
had to wait: the transport was above its high-water mark after a ``write()``; the wait
ends when asyncio has sent it down to the low-water mark.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from matplotlib.artist import Artist
from matplotlib.axes import Axes

from bufdemo.analysis.load import Run, _add_seconds, _empty, _read_table
from bufdemo.runformat import TRANSPORT_SAMPLES

__all__ = [
    "ASYNCIO_MODES",
    "add_to_timeline",
    "plot_rss",
    "plot_user_buffer",
    "transport_samples",
    "user_buffer",
    "user_buffer_notes",
]

ASYNCIO_MODES = ("asyncio", "asyncio-nodrain")
MIB = 1024 * 1024
USER_COLOR = "tab:purple"
KERNEL_COLOR = "tab:blue"
RSS_COLOR = "tab:red"


def transport_samples(run: Run) -> pd.DataFrame:
    """transport_samples.csv with a ``t`` column (seconds since t0); empty if absent."""
    columns = dict(TRANSPORT_SAMPLES.dtypes)
    path = run.path / TRANSPORT_SAMPLES.file
    frame = _read_table(path, columns) if path.is_file() else _empty(columns)
    return _add_seconds(frame, run.t0_ns)


def _at(frame: pd.DataFrame, t_ns: int, column: str) -> float | None:
    """``column`` in the row of ``frame`` sampled nearest to ``t_ns`` (None if none)."""
    if frame.empty or column not in frame:
        return None
    i = int(np.abs(frame["t_ns"].to_numpy(dtype="int64") - t_ns).argmin())
    value = frame[column].iloc[i]
    return None if pd.isna(value) else float(value)


def user_buffer(run: Run, samples: pd.DataFrame | None = None) -> dict[str, Any] | None:
    """The asyncio numbers of a run (summary.json's ``asyncio``); None in other modes.

    ``expected_peak_bytes`` is what the transport must hold at its peak if every byte
    written is somewhere: the bytes written by then (sends.csv: every ``write()``
    stamped), minus what the kernel held then (the sender's send queue, the receiver's
    receive queue) and what the receiver had consumed.
    """
    mode = run.config.get("mode")
    if mode not in ASYNCIO_MODES:
        return None
    ts = transport_samples(run) if samples is None else samples
    record = run.side("sender").get("asyncio") or {}
    size = int(run.config.get("size") or 0)
    out: dict[str, Any] = {
        "mode": mode,
        "high_water": record.get("high_water"),
        "low_water": record.get("low_water"),
        "drain_waits": record.get("drain_waits"),
        "buffered_peak_bytes": record.get("buffered_peak"),
        "buffered_peak_seconds": None,
        "written_at_peak_bytes": None,
        "kernel_at_peak_bytes": None,
        "expected_peak_bytes": None,
        "rss_start_bytes": record.get("rss_start"),
        "rss_peak_bytes": record.get("rss_peak"),
        "rss_growth_bytes": None,
        "recorder_growth_bytes": None,
        "rss_growth_net_bytes": None,
        "rss_missing": record.get("rss_missing"),
    }
    if ts.empty:
        return out
    peak = int(ts["buffered"].to_numpy().argmax())
    row = ts.iloc[peak]
    t_ns = int(row["t_ns"])
    # Written by then: the sends stamped by then (every write() is in sends.csv). The
    # sample's own count is the sender's per-block counter: up to a block behind.
    sends = run.sends
    if sends.empty:
        written = int(row["count"]) * size
    else:
        stamped = sends["t_ns"].to_numpy(dtype="int64")
        written = int(np.searchsorted(stamped, t_ns, side="right")) * size
    outq = None if pd.isna(row["outq"]) else float(row["outq"])
    inq = _at(run.receiver_samples, t_ns, "inq")
    consumed = _at(run.receiver_samples, t_ns, "count")
    sampled_peak = int(row["buffered"])
    out["buffered_peak_bytes"] = max(int(out["buffered_peak_bytes"] or 0), sampled_peak)
    out["buffered_peak_seconds"] = float(row["t"])
    out["written_at_peak_bytes"] = written
    if outq is not None and inq is not None and consumed is not None:
        kernel = int(outq + inq)
        out["kernel_at_peak_bytes"] = kernel
        out["expected_peak_bytes"] = written - kernel - int(consumed) * size
        out["sampled_peak_bytes"] = sampled_peak
    rss = ts["rss"].to_numpy(dtype="float64", na_value=np.nan)
    if np.isfinite(rss).any():
        first = float(rss[np.isfinite(rss)][0])
        top = int(np.nanargmax(rss))
        out["rss_start_bytes"] = out["rss_start_bytes"] or int(first)
        out["rss_peak_bytes"] = int(rss[top])
        out["rss_growth_bytes"] = int(rss[top]) - int(out["rss_start_bytes"])
        recorder = ts["recorder"].to_numpy()
        out["recorder_growth_bytes"] = int(recorder[top] - recorder[0])
        out["rss_growth_net_bytes"] = out["rss_growth_bytes"] - out["recorder_growth_bytes"]
    return out


def user_buffer_notes(numbers: dict[str, Any] | None) -> list[str]:
    """Plain-language notes for summary.json (empty outside the asyncio modes)."""
    if numbers is None:
        return []
    notes = [
        f"mode {numbers['mode']}: a blocking send here is a drain() that had to wait (the "
        "transport above its high-water mark after a write()), until asyncio had sent it "
        "down to the low-water mark"
    ]
    peak, high = numbers["buffered_peak_bytes"], numbers["high_water"]
    if peak is not None and high is not None:
        if peak <= high:
            relation = "at or below it"
        elif peak < 2 * high:
            relation = f"{peak - high:,} B above it"
        else:
            relation = f"{peak / high:,.0f} times it"
        notes.append(
            f"the transport's buffer in user space peaked at {peak:,} B (high-water mark "
            f"{high:,} B: {relation})"
        )
    expected = numbers.get("expected_peak_bytes")
    if peak and expected:
        notes.append(
            f"at its peak the transport held {peak / expected:.1%} of the bytes written "
            f"({numbers['written_at_peak_bytes']:,}) minus what the kernel held and the "
            f"receiver had consumed ({expected:,} B)"
        )
    growth = numbers.get("rss_growth_bytes")
    if growth is not None:
        own = numbers["recorder_growth_bytes"]
        notes.append(
            f"the sender's RSS grew by {growth / MIB:.1f} MiB"
            + (
                f" (of which the recording's own sample rows {own / MIB:.1f} MiB)"
                if own >= 0.05 * MIB  # spooled to disk every 0.5 s: usually ~0.1 MiB
                else ""
            )
        )
    elif numbers.get("rss_missing"):
        notes.append(f"rss not recorded: {numbers['rss_missing']}")
    return notes


def plot_user_buffer(
    ax: Axes, samples: pd.DataFrame, unit: tuple[float, str] = (MIB, "MiB")
) -> list[Artist]:
    """The kernel's send queue, and the transport's buffer stacked on top of it."""
    if samples.empty:
        return []
    div, _ = unit
    t = samples["t"].to_numpy()
    kernel = np.nan_to_num(samples["outq"].to_numpy(dtype="float64", na_value=np.nan)) / div
    user = samples["buffered"].to_numpy(dtype="float64") / div
    return [
        ax.fill_between(
            t, 0, kernel, step="post", color=KERNEL_COLOR, alpha=0.5, label="kernel send queue"
        ),
        ax.fill_between(
            t,
            kernel,
            kernel + user,
            step="post",
            color=USER_COLOR,
            alpha=0.5,
            label="asyncio transport buffer (user space)",
        ),
    ]


def plot_rss(
    ax: Axes, samples: pd.DataFrame, unit: tuple[float, str] = (MIB, "MiB")
) -> list[Artist]:
    """The sender's RSS over time (and the part of it the recording holds)."""
    if samples.empty:
        return []
    div, _ = unit
    t = samples["t"].to_numpy()
    rss = samples["rss"].to_numpy(dtype="float64", na_value=np.nan) / div
    recorder = samples["recorder"].to_numpy(dtype="float64") / div
    lines = ax.plot(t, rss, color=RSS_COLOR, linewidth=1.0, label="sender RSS")
    lines += ax.plot(
        t,
        rss - (recorder - recorder[0]),
        color=RSS_COLOR,
        linewidth=0.8,
        linestyle=":",
        label="RSS minus the recording's growth",
    )
    return list(lines)


def add_to_timeline(ax: Axes, run: Run) -> list[Artist]:
    """On the timeline's sender panel: the transport's buffer stacked on the kernel's send
    queue (in the panel's unit), the RSS on a second axis beside it. Nothing for a run
    outside the asyncio modes."""
    from bufdemo.analysis.plots import SENDER, _max_bytes, byte_unit  # plots imports us

    if run.config.get("mode") not in ASYNCIO_MODES:
        return []
    samples = transport_samples(run)
    if samples.empty:
        return []
    artists = plot_user_buffer(ax, samples, byte_unit(_max_bytes(run, (SENDER,))))
    ax.relim()
    ax.autoscale(axis="y")
    twin = ax.twinx()
    artists += plot_rss(twin, samples)
    twin.set_ylabel("sender RSS (MiB)", color=RSS_COLOR)
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(1.05, 1.0),
        fontsize=8,
        frameon=False,
    )
    return artists
