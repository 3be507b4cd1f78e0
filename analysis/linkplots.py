"""Slow link vs slow reader at a glance: the limits figure of a ``--netns`` run.

Two panels on one time axis:

a. the windows, as the sender's tcp_info sees them: the receiver's advertised window
   (``snd_wnd``), the congestion window (``snd_cwnd`` x ``snd_mss``) and the bytes in
   flight (SIOCOUTQ - SIOCOUTQNSD). Behind a slow reader the advertised window is shut
   (a line on 0) while cwnd is large; behind a slow link the advertised window stays
   open, far above the bytes in flight, which follow cwnd;
b. the bottleneck queue (the tbf's backlog, from ``link_samples.csv``): a slow link
   keeps it full; without ``--link-rate`` there is no queue to show, and the panel says so.

The title names the verdict of :func:`bufdemo.analysis.limits.limits`. Helpers take an
Axes and a run and return the artists; :func:`limits_figure` builds the Figure and
nothing here saves one.
"""

from __future__ import annotations

import numpy as np
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from bufdemo.analysis.limits import LIMITS, limits
from bufdemo.analysis.load import Run
from bufdemo.analysis.plots import TIME_LABEL, byte_unit, stride

__all__ = ["limits_figure", "plot_link_queue", "plot_windows"]

LINTHRESH = 1000.0  # bytes: below about one segment the log axis turns linear, down to 0


def _series(run: Run, column: str) -> tuple[np.ndarray, np.ndarray]:
    ss = run.sender_samples
    if ss.empty or column not in ss.columns:
        return np.zeros(0), np.zeros(0)
    return ss["t"].to_numpy(dtype="float64"), ss[column].to_numpy(dtype="float64", na_value=np.nan)


def plot_windows(ax: Axes, run: Run) -> list[Artist]:
    """Receiver's window vs congestion window vs bytes in flight (sender's view)."""
    t, wnd = _series(run, "snd_wnd")
    _, cwnd = _series(run, "snd_cwnd")
    _, mss = _series(run, "snd_mss")
    _, outq = _series(run, "outq")
    _, nsd = _series(run, "outq_nsd")
    lines = {
        "receiver's window (snd_wnd)": (wnd, "tab:purple", 2.0),
        "congestion window (cwnd x mss)": (cwnd * mss, "tab:orange", 1.5),
        "bytes in flight (outq - outq_nsd)": (outq - nsd, "tab:gray", 1.0),
    }
    artists: list[Artist] = []
    for label, (values, color, width) in lines.items():
        if not np.isfinite(values).any():
            continue
        ts, vs = stride(t, values)
        artists += ax.plot(
            ts, vs, drawstyle="steps-post", color=color, linewidth=width, label=label
        )
    # Log bytes: an open window (megabytes) and cwnd (hundreds of KB) both readable;
    # symlog keeps 0 (a shut window) on the axis, at the bottom.
    ax.set_yscale("symlog", linthresh=LINTHRESH)
    ax.set_ylim(bottom=-LINTHRESH / 2)
    ax.set_ylabel("bytes (log; 0 = shut)")
    if artists:
        ax.legend(loc="upper right", fontsize="small")
    return artists


def plot_link_queue(ax: Axes, run: Run) -> list[Artist]:
    """The bottleneck queue's backlog over time (empty panel, labelled, without one)."""
    ls = run.link_samples
    ss = run.sender_samples
    if not ls.empty and not ss.empty:  # the run's span: not the set-up before the connection
        ls = ls[(ls["t"] >= ss["t"].min()) & (ls["t"] <= ss["t"].max())]
    if ls.empty:
        return [
            ax.text(
                0.5,
                0.5,
                "no bottleneck queue (no --link-rate): the link is not the limit",
                transform=ax.transAxes,
                ha="center",
                va="center",
            )
        ]
    backlog = ls["backlog_bytes"].to_numpy(dtype="float64")
    div, name = byte_unit(float(backlog.max()) or 1.0)
    artists: list[Artist] = list(
        ax.plot(
            ls["t"].to_numpy(dtype="float64"),
            backlog / div,
            drawstyle="steps-post",
            color="tab:brown",
            label="bottleneck queue (tbf backlog)",
        )
    )
    ax.set_ylabel(f"link queue\n({name})")
    ax.legend(loc="upper right", fontsize="small")
    return artists


def limits_figure(run: Run, figsize: tuple[float, float] = (14.0, 7.0)) -> Figure:
    """The windows and the link queue, titled with the resource that limited the sender."""
    fig = Figure(figsize=figsize, layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    plot_windows(top, run)
    plot_link_queue(bottom, run)
    bottom.set_xlabel(TIME_LABEL)
    name = limits(run)["limited_by"]
    what = "unknown (no tcp_info)" if name is None else LIMITS.get(name, name)
    fig.suptitle(f"{run.path.name}: limited by {what}")
    return fig
