"""Runs side by side: what each knob did to blocking, throughput, latency and queues.

One row per run, from the same :func:`~bufdemo.analysis.summary.summarize` that writes
each run's summary.json (so a sweep's table and its runs' summaries cannot disagree),
plus what the run was: its settings. :func:`bufdemo.analysis.views.compare` is the
transposed, short version of the same idea (one column per run) for the notebook.

- :func:`compare_table`: the table (``bufdemo sweep`` writes it as sweep.csv/.json,
  ``bufdemo compare`` prints it);
- :func:`plot_metric`, :func:`sweep_figure`: each metric against the swept value;
- :func:`timelines_figure`: the runs' send queues and latencies on aligned time axes.

``throughput_msgs_per_s`` is messages consumed intact over the receiver's whole run
(connection to last message consumed): with a slow receiver it is the receiver's rate,
which no sender-side knob should change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from bufdemo.analysis.latency import latency, plot_latency
from bufdemo.analysis.load import Run
from bufdemo.analysis.plots import shade_stalls
from bufdemo.analysis.stalls import stalls
from bufdemo.analysis.summary import summarize
from bufdemo.runformat import SWEEP

__all__ = [
    "METRICS",
    "SETTINGS",
    "compare_table",
    "plot_metric",
    "sweep_figure",
    "timelines_figure",
]

# The run's settings shown beside its numbers (meta.json config keys).
SETTINGS = ("mode", "size", "recv_delay", "sndbuf", "rcvbuf", "send_rate", "notsent_lowat")

# Metric column -> (title, unit) for tables and axes, in the order shown.
METRICS: dict[str, tuple[str, str]] = {
    "blocking_sends": ("blocking sends", ""),
    "stall_seconds": ("time blocked", "s"),
    "throughput_msgs_per_s": ("throughput", "msg/s"),
    "latency_p50_seconds": ("latency p50", "s"),
    "latency_p99_seconds": ("latency p99", "s"),
    "max_send_queue_bytes": ("peak send queue", "B"),
    "max_unsent_bytes": ("peak unsent (SIOCOUTQNSD)", "B"),
    "max_recv_queue_bytes": ("peak receive queue", "B"),
    "sndbuf_granted": ("SO_SNDBUF granted", "B"),
    "rcvbuf_granted": ("SO_RCVBUF granted", "B"),
}


def _max_unsent(run: Run) -> float | None:
    ss = run.sender_samples
    if ss.empty:
        return None
    values = ss["outq_nsd"].to_numpy(dtype="float64", na_value=np.nan)
    values = values[np.isfinite(values)]
    return float(values.max()) if values.size else None


def _row(name: str, run: Run, summary: Mapping[str, Any], value: Any) -> dict[str, Any]:
    config = run.config
    lat = summary.get("latency") or {}
    e2e = lat.get("end_to_end") or {}
    intact, seconds = summary.get("messages_intact"), summary.get("receiver_seconds")
    row: dict[str, Any] = {"value": value, "run": name}
    row.update({key: config.get(key) for key in SETTINGS})
    row.update(
        {
            "blocking_sends": summary.get("blocking_sends"),
            "stall_seconds": summary.get("stall_seconds"),
            "throughput_msgs_per_s": intact / seconds if intact and seconds else None,
            "latency_p50_seconds": e2e.get("p50"),
            "latency_p99_seconds": e2e.get("p99"),
            "max_send_queue_bytes": summary.get("max_send_queue_bytes"),
            "max_unsent_bytes": _max_unsent(run),
            "max_recv_queue_bytes": summary.get("max_recv_queue_bytes"),
            "sndbuf_granted": summary.get("sndbuf_granted"),
            "rcvbuf_granted": summary.get("rcvbuf_granted"),
            "complete": summary.get("complete"),
        }
    )
    return row


def compare_table(
    runs: Mapping[str, Run],
    summaries: Mapping[str, Mapping[str, Any]] | None = None,
    values: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """One row per run (in the given order), the columns of runformat.SWEEP: ``value``
    (``values[name]``, the swept value; None for `bufdemo compare`), ``run``, its
    settings, then :data:`METRICS` and ``complete``.

    ``summaries`` (name -> summary.json) saves summarizing again; missing ones are computed.
    """
    rows = []
    for name, run in runs.items():
        summary = (summaries or {}).get(name)
        summary = summary if summary is not None else summarize(run)
        rows.append(_row(name, run, summary, (values or {}).get(name)))
    return pd.DataFrame(rows, columns=list(SWEEP.columns))


def _label(metric: str) -> str:
    title, unit = METRICS[metric]
    return f"{title} ({unit})" if unit else title


def plot_metric(
    ax: Axes, table: pd.DataFrame, x: str, metric: str, xlabel: str | None = None
) -> list[Artist]:
    """``metric`` against column ``x`` (numbers on a log axis when they span 10x;
    anything else, e.g. a mode or ``auto``, as categories in the table's order)."""
    xs = pd.to_numeric(table[x], errors="coerce")
    ys = pd.to_numeric(table[metric], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    if xs.notna().all() and len(xs):
        values = xs.to_numpy(dtype="float64")
        artists: list[Artist] = list(ax.plot(values, ys, marker="o", color="tab:blue"))
        positive = values[values > 0]
        if positive.size and positive.max() >= 10 * positive.min():
            ax.set_xscale("log")
        ax.set_xticks(values, [f"{v:g}" for v in values], minor=False)
    else:
        labels = ["auto" if v is None or v != v else str(v) for v in table[x]]
        artists = list(ax.plot(range(len(labels)), ys, marker="o", color="tab:blue"))
        ax.set_xticks(range(len(labels)), labels)
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(_label(metric))
    ax.grid(True, alpha=0.3)
    return artists


def sweep_figure(
    table: pd.DataFrame,
    x: str,
    metrics: Sequence[str] | None = None,
    title: str = "",
    xlabel: str | None = None,
) -> Figure:
    """One panel per metric, each against the swept setting ``x``."""
    metrics = list(metrics or METRICS)
    cols = 3
    rows = -(-len(metrics) // cols)
    fig = Figure(figsize=(5.0 * cols, 3.2 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, metric in zip(axes, metrics, strict=False):
        plot_metric(ax, table, x, metric, xlabel)
        ax.set_title(METRICS[metric][0])
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    return fig


def timelines_figure(runs: Mapping[str, Run]) -> Figure:
    """Per run: send queue (SIOCOUTQ) and end-to-end latency, stalls shaded, one time axis."""
    n = max(1, len(runs))
    fig = Figure(figsize=(14.0, 2.6 * n + 0.6), layout="constrained")
    axes = fig.subplots(n, 1, sharex=True, squeeze=False).ravel()
    for ax, (name, run) in zip(axes, runs.items(), strict=False):
        ss = run.sender_samples
        if not ss.empty:
            ax.plot(
                ss["t"].to_numpy(),
                ss["outq"].to_numpy(dtype="float64", na_value=np.nan) / 1024,
                color="tab:blue",
                lw=0.8,
                label="send queue (KiB)",
            )
        ax.set_ylabel("send queue (KiB)")
        s = stalls(run)
        if len(s):
            shade_stalls(ax, s, label="blocked")
        right = ax.twinx()
        plot_latency(right, latency(run))
        right.set_ylabel("latency (s)")
        ax.set_title(name, loc="left", fontsize="small")
        ax.set_xlabel("")
    axes[-1].set_xlabel("time since connection (s)")
    return fig
