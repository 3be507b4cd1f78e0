"""The timeline of a run: four panels on one time axis, stalls shaded, phases labelled.

Panels (seconds since the connection was established, shared x):

a. messages handed to the kernel and messages consumed (cumulative): the gap between the
   two lines is what the kernel holds;
b. queue depths: the sender's SIOCOUTQ and the receiver's SIOCINQ (payload bytes), with
   SO_SNDBUF and SO_RCVBUF (truesize limits, step lines: autotuning moves them);
c. the receiver's window as the sender sees it (tcp_info ``snd_wnd``): 0 = receiver full;
d. blocking sends: how long each one waited.

Every panel shades the stalls (one ``fill_between`` of an interval indicator, however
many stalls) and draws the phase boundaries; a ribbon above the top panel names the
phases (fill, stall/resume, drain). Helpers take an ``Axes`` and data and return the
artists they made; only :func:`timeline_figure` and :func:`zoom_figure` build a Figure
(``matplotlib.figure.Figure``, no pyplot state), and nothing here saves or shows one.

Long runs are decimated for drawing only: monotone cumulative lines are strided, queue
lines keep each bin's minimum and maximum (peaks and empty queues survive), and stalls
are never decimated.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from bufdemo.analysis.load import Run
from bufdemo.analysis.stalls import (
    DRAIN,
    FILL,
    STALL_RESUME,
    Phase,
    interval_indicator,
    phases,
    sender_seconds,
    stalls,
)

__all__ = [
    "PHASE_COLORS",
    "mark_phases",
    "plot_blocking",
    "plot_messages",
    "plot_queues",
    "plot_window",
    "shade_stalls",
    "timeline_figure",
    "zoom_figure",
]

Array = npt.NDArray[np.float64]

# Points per line after decimation: a few per pixel of a 12-inch, 100-dpi figure.
MAX_POINTS = 4000
BAND_BINS = 300  # bins of a whole-run band: ~0.3 s each for the default 100 s run
STALL_COLOR = "tab:red"
STALL_ALPHA = 0.14
PHASE_COLORS = {FILL: "tab:blue", STALL_RESUME: "tab:red", DRAIN: "tab:green"}
SEND_COLOR, RECV_COLOR, WINDOW_COLOR = "tab:blue", "tab:green", "tab:purple"
TIME_LABEL = "time since connection (s)"


# -- decimation -------------------------------------------------------------------------


def _window(t: Array, xlim: tuple[float, float] | None) -> slice:
    """The index range of sorted ``t`` inside ``xlim``, one point of margin each side."""
    if xlim is None or t.size == 0:
        return slice(0, t.size)
    lo = max(int(np.searchsorted(t, xlim[0], side="left")) - 1, 0)
    hi = min(int(np.searchsorted(t, xlim[1], side="right")) + 1, t.size)
    return slice(lo, hi)


def stride(x: Array, y: Array, max_points: int = MAX_POINTS) -> tuple[Array, Array]:
    """Every k-th point and the last: enough for a monotone line (cumulative counts)."""
    if x.size <= max_points:
        return x, y
    k = -(-x.size // max_points)
    idx = np.append(np.arange(0, x.size, k), x.size - 1)
    if idx[-1] == idx[-2]:
        idx = idx[:-1]
    return x[idx], y[idx]


def envelope(t: Array, v: Array, bins: int = MAX_POINTS // 2) -> tuple[Array, Array]:
    """Each bin's minimum and maximum, in time order: a queue line that keeps its extremes.

    Samples are evenly spaced in time, so bins of equal counts are bins of equal time.
    NaN (probe unavailable) is kept only where a whole bin is NaN.
    """
    if t.size <= 2 * bins:
        return t, v
    k = t.size // bins
    n = bins * k
    tb, vb = t[:n].reshape(bins, k), v[:n].reshape(bins, k)
    lo = np.argmin(np.where(np.isnan(vb), np.inf, vb), axis=1)
    hi = np.argmax(np.where(np.isnan(vb), -np.inf, vb), axis=1)
    first, second = np.minimum(lo, hi), np.maximum(lo, hi)
    rows = np.arange(bins)
    ti = np.column_stack([tb[rows, first], tb[rows, second]]).ravel()
    vi = np.column_stack([vb[rows, first], vb[rows, second]]).ravel()
    return np.append(ti, t[n:]), np.append(vi, v[n:])


def _runs(t: Array, v: Array) -> tuple[Array, Array]:
    """Only the points where a step line changes (plus the last): exact, not decimated."""
    if t.size <= 2:
        return t, v
    same = np.append(False, (v[1:] == v[:-1]) | (np.isnan(v[1:]) & np.isnan(v[:-1])))
    keep = ~same
    keep[-1] = True
    return t[keep], v[keep]


def _col(frame: pd.DataFrame, name: str) -> Array:
    if name not in frame.columns:
        return np.full(len(frame), np.nan)
    return frame[name].to_numpy(dtype="float64", na_value=np.nan)


# -- units ------------------------------------------------------------------------------


def byte_unit(max_bytes: float) -> tuple[float, str]:
    """(divisor, name) so that the largest value reads as a small number."""
    if max_bytes >= 4 * 1024 * 1024:
        return 1024.0 * 1024.0, "MiB"
    return 1024.0, "KiB"


SENDER, RECEIVER = "sender", "receiver"
Side = str  # SENDER or RECEIVER


def _side_arrays(run: Run, side: Side) -> list[Array]:
    if side == SENDER:
        return [
            _col(run.sender_samples, "outq"),
            _col(run.sender_samples, "sndbuf"),
            _col(run.blocking_sends, "outq_start"),
        ]
    return [
        _col(run.receiver_samples, "inq"),
        _col(run.receiver_samples, "rcvbuf"),
        _col(run.sender_samples, "snd_wnd"),
        _col(run.receiver_samples, "rcv_wnd"),
    ]


def _max_bytes(run: Run, sides: Sequence[Side] = (SENDER, RECEIVER)) -> float:
    values = [a for side in sides for a in _side_arrays(run, side)]
    finite = [a[np.isfinite(a)] for a in values]
    return max((float(a.max()) for a in finite if a.size), default=0.0)


# -- panel helpers ----------------------------------------------------------------------


def shade_stalls(
    ax: Axes, stall_table: pd.DataFrame, label: str | None = None, min_gap: float | None = None
) -> list[Artist]:
    """Shade every stall in ``ax`` with one artist (full height, whatever the y scale).

    Gaps between stalls shorter than ``min_gap`` seconds are closed: no stall is dropped
    or shortened, but a resume narrower than a pixel cannot be drawn, and a polygon of a
    million sub-pixel edges overflows Agg. The default is 1/4000 of the stalls' extent.
    """
    start = stall_table["start"].to_numpy(dtype="float64")
    end = stall_table["end"].to_numpy(dtype="float64")
    if min_gap is None:
        finite = np.isfinite(start) & np.isfinite(end)
        extent = float(end[finite].max() - start[finite].min()) if finite.any() else 0.0
        min_gap = extent / (2 * MAX_POINTS)
    # Widening each stall by min_gap merges the gaps below it; trim the widening back
    # off every merged interval's end.
    x, y = interval_indicator(start, end + min_gap)
    if x.size == 0:
        return []
    x[1::2] -= min_gap
    artist = ax.fill_between(
        x,
        0,
        y,
        step="post",
        transform=ax.get_xaxis_transform(),
        color=STALL_COLOR,
        alpha=STALL_ALPHA,
        linewidth=0,
        label=label,
        zorder=0.5,
    )
    artist.set_gid("stalls")
    return [artist]


def mark_phases(ax: Axes, run_phases: Sequence[Phase], ribbon: bool = False) -> list[Artist]:
    """Phase boundaries as vertical lines; with ``ribbon``, coloured named bands above ``ax``.

    A phase too narrow to hold its name (the fill phase of a long run lasts milliseconds)
    is named beside its band, with an arrow pointing at it.
    """
    artists: list[Artist] = []
    for p in run_phases[1:]:
        artists.append(ax.axvline(p.start, color="0.35", linestyle="--", linewidth=0.9))
    if run_phases:
        last = run_phases[-1].end
        artists.append(ax.axvline(last, color="0.35", linestyle=":", linewidth=0.9))
    if not ribbon:
        return artists
    trans = ax.get_xaxis_transform()
    x0, x1 = ax.get_xlim()
    span = (x1 - x0) or 1.0
    for p in run_phases:
        color = PHASE_COLORS.get(p.name, "0.5")
        lo, hi = max(p.start, x0), min(p.end, x1)
        if hi <= lo:
            continue
        band = ax.fill_between(
            [lo, hi],
            1.02,
            1.14,
            transform=trans,
            color=color,
            alpha=0.35,
            linewidth=0,
            clip_on=False,
        )
        band.set_gid(f"phase:{p.name}")
        artists.append(band)
        name = p.name.replace("/", " / ")
        if (hi - lo) / span >= 0.08:
            text = ax.text(
                (lo + hi) / 2,
                1.08,
                name,
                transform=trans,
                ha="center",
                va="center",
                fontsize=11,
                fontweight="bold",
                color=color,
            )
        else:
            # Name it beside the band, on the side with room, arrow to the band.
            right = (lo - x0) / span < 0.5
            text = ax.annotate(
                name,
                xy=((lo + hi) / 2, 1.08),
                xycoords=trans,
                xytext=(14 if right else -14, 0),
                textcoords="offset points",
                ha="left" if right else "right",
                va="center",
                fontsize=11,
                fontweight="bold",
                color=color,
                arrowprops={"arrowstyle": "-|>", "color": color, "linewidth": 1.2},
                annotation_clip=False,
            )
        text.set_gid(f"phase-label:{p.name}")
        artists.append(text)
    return artists


def plot_messages(
    ax: Axes, run: Run, xlim: tuple[float, float] | None = None, max_points: int = MAX_POINTS
) -> list[Artist]:
    """Cumulative messages handed to the kernel (sender) and consumed (receiver)."""
    artists: list[Artist] = []
    sends = run.sends
    if not sends.empty:
        done = sends["t"].to_numpy()  # when each message was completely handed over
        done = np.sort(done[np.isfinite(done)])
        n = np.arange(1, done.size + 1, dtype="float64")
        w = _window(done, xlim)
        x, y = stride(done[w], n[w], max_points)
        artists += ax.step(x, y, where="post", color=SEND_COLOR, label="sent (handed to kernel)")
    consumed = run.consumed
    if not consumed.empty:
        end = np.sort(consumed["t_end"].to_numpy())
        n = np.arange(1, end.size + 1, dtype="float64")
        w = _window(end, xlim)
        x, y = stride(end[w], n[w], max_points)
        artists += ax.step(x, y, where="post", color=RECV_COLOR, label="consumed by receiver")
    ax.set_ylabel("messages\n(cumulative)")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    return artists


def plot_queues(
    ax: Axes,
    run: Run,
    xlim: tuple[float, float] | None = None,
    unit: tuple[float, str] | None = None,
    wakes: bool = False,
    sides: Sequence[Side] = (SENDER, RECEIVER),
) -> list[Artist]:
    """SIOCOUTQ and/or SIOCINQ with SO_SNDBUF / SO_RCVBUF as step limit lines.

    ``sides`` picks the sender's send queue, the receiver's receive queue, or both.
    With ``wakes``, each blocking send adds the queue at its start and at wake-up
    (the 2/3 rule, point by point), which the 1 ms samples cannot resolve.
    """
    div, name = unit or byte_unit(_max_bytes(run, sides))
    artists: list[Artist] = []
    for side, frame, column, color, label in (
        (SENDER, run.sender_samples, "outq", SEND_COLOR, "send queue (SIOCOUTQ)"),
        (RECEIVER, run.receiver_samples, "inq", RECV_COLOR, "receive queue (SIOCINQ)"),
    ):
        if side not in sides or frame.empty or not np.isfinite(_col(frame, column)).any():
            continue
        t = frame["t"].to_numpy()
        w = _window(t, xlim)
        values = _col(frame, column)[w] / div
        if side == SENDER:
            # The send queue's sawtooth is slower than a pixel: min/max keeps every tooth.
            x, y = envelope(t[w], values)
        else:
            # The receive queue saws faster than a pixel: its range as a band, plus median.
            x, lo, y, hi = band(t[w], values, _band_bins(xlim))
            if x.size < t[w].size:
                artists.append(
                    ax.fill_between(x, lo, hi, step="post", color=color, alpha=0.12, lw=0)
                )
                label += ", range and median"
        artists += ax.plot(x, y, drawstyle="steps-post", color=color, linewidth=1.2, label=label)
    # Different dash patterns: equal buffers (a common choice) must not hide each other.
    for side, frame, column, color, dashes, label in (
        (SENDER, run.sender_samples, "sndbuf", SEND_COLOR, (0, (6, 4)), "SO_SNDBUF (limit)"),
        (RECEIVER, run.receiver_samples, "rcvbuf", RECV_COLOR, (5, (2, 8)), "SO_RCVBUF (limit)"),
    ):
        if side not in sides or frame.empty or not np.isfinite(_col(frame, column)).any():
            continue
        t = frame["t"].to_numpy()
        x, y = _runs(t, _col(frame, column) / div)
        artists += ax.plot(
            x, y, drawstyle="steps-post", color=color, linestyle=dashes, linewidth=1.3, label=label
        )
    if wakes and SENDER in sides:
        s = stalls(run)
        if xlim is not None:
            s = s[(s["end"] >= xlim[0]) & (s["start"] <= xlim[1])]
        if len(s):
            artists.append(
                ax.scatter(
                    s["start"],
                    s["outq_start"] / div,
                    marker="v",
                    color="black",
                    s=22,
                    zorder=3,
                    label="queue when send() blocked",
                )
            )
            artists.append(
                ax.scatter(
                    s["end"],
                    s["outq_wake"] / div,
                    marker="^",
                    color=STALL_COLOR,
                    s=22,
                    zorder=3,
                    label="queue at wake-up",
                )
            )
            two_thirds = float(np.nanmedian(s["outq_start"].to_numpy())) * 2 / 3 / div
            artists.append(
                ax.axhline(
                    two_thirds,
                    color=STALL_COLOR,
                    linestyle="-.",
                    linewidth=0.9,
                    label="2/3 of the queue when blocked",
                )
            )
    who = sides[0] if len(sides) == 1 else "queue depth"
    ax.set_ylabel(f"{who}\n({name})")
    ax.set_ylim(bottom=0)
    return artists


def band(t: Array, v: Array, bins: int = MAX_POINTS // 2) -> tuple[Array, Array, Array, Array]:
    """Per-bin start time, minimum, median and maximum of ``v``.

    For a signal that flickers faster than a pixel (the receive queue sawing, the window
    opening for a moment after each read): its range as a band and its median as the
    line say "oscillates over this range, usually here". Fewer samples than
    ``2 * bins`` are returned as they are. The last bin may be partial; nothing is cut.
    """
    if t.size <= 2 * bins:
        return t, v, v, v
    k = -(-t.size // bins)
    padded = np.full(bins * k, np.nan)
    padded[: v.size] = v
    vb = padded.reshape(bins, k)
    tb = t[::k]
    rows = tb.size
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN bins stay NaN
        lo = np.nanmin(vb[:rows], axis=1)
        mid = np.nanmedian(vb[:rows], axis=1)
        hi = np.nanmax(vb[:rows], axis=1)
    return tb, lo, mid, hi


def _band_bins(xlim: tuple[float, float] | None) -> int:
    # Whole run: coarse bins, each spanning whole receive-queue cycles (~0.1 s each
    # with default buffers), so the median is a level, not a flicker. A zoom: fine bins.
    return BAND_BINS if xlim is None else MAX_POINTS // 2


def plot_window(
    ax: Axes,
    run: Run,
    xlim: tuple[float, float] | None = None,
    unit: tuple[float, str] | None = None,
) -> list[Artist]:
    """The receiver's advertised window: ``snd_wnd`` as the sender sees it (0 = full),
    and ``rcv_wnd`` as the receiver advertises it (it outlives the sender into the drain).

    Where the samples are denser than the pixels, the window is drawn as its per-bin
    range (a band) and median line: mostly shut, briefly open, at a glance.
    """
    div, name = unit or byte_unit(_max_bytes(run, (RECEIVER,)))
    artists: list[Artist] = []
    for frame, column, style, label in (
        (run.sender_samples, "snd_wnd", "-", "receiver's window, seen by sender (snd_wnd)"),
        (run.receiver_samples, "rcv_wnd", ":", "window the receiver advertises (rcv_wnd)"),
    ):
        values = _col(frame, column)
        if frame.empty or not np.isfinite(values).any():
            continue
        t = frame["t"].to_numpy()
        w = _window(t, xlim)
        tb, lo, mid, hi = band(t[w], values[w] / div, _band_bins(xlim))
        if tb.size < t[w].size:
            artists.append(
                ax.fill_between(tb, lo, hi, step="post", color=WINDOW_COLOR, alpha=0.10, lw=0)
            )
            label += ", range and median"
        artists += ax.plot(
            tb,
            mid,
            drawstyle="steps-post",
            color=WINDOW_COLOR,
            linestyle=style,
            linewidth=2.0,
            label=label,
        )
    # A shut window is a line on 0: keep 0 off the spine so the line stays visible.
    top = max(ax.get_ylim()[1], 1.0)
    ax.set_ylim(-0.05 * top, top)
    ax.set_ylabel(f"window\n({name}; 0 = shut)")
    return artists


def plot_blocking(ax: Axes, stall_table: pd.DataFrame, max_flags: int = MAX_POINTS) -> list[Artist]:
    """Each blocking send as a flag: a bar at the height of its wait (ms) from block to wake.

    Back-to-back stalls stay apart: each starts with its own vertical edge. Beyond
    ``max_flags`` stalls the flags are narrower than a pixel, so each time bin draws one
    stem as tall as its longest wait: the same pixels, a fraction of the work.
    """
    s = stall_table[np.isfinite(stall_table["duration"].to_numpy())]
    artists: list[Artist] = []
    if len(s) > max_flags:
        start = s["start"].to_numpy()
        ms = s["duration"].to_numpy() * 1e3
        edges = np.linspace(start.min(), start.max(), max_flags + 1)
        which = np.clip(np.searchsorted(edges, start, side="right") - 1, 0, max_flags - 1)
        tallest = np.zeros(max_flags)
        np.maximum.at(tallest, which, ms)
        used = np.bincount(which, minlength=max_flags) > 0
        artists.append(
            ax.vlines(
                edges[:-1][used],
                0,
                tallest[used],
                color=STALL_COLOR,
                linewidth=1.0,
                label="blocking sends: longest wait in each time bin",
            )
        )
        ax.set_ylim(0, float(ms.max()) * 1.15 or 1.0)
    elif len(s):
        start, end = s["start"].to_numpy(), s["end"].to_numpy()
        ms = s["duration"].to_numpy() * 1e3
        artists.append(ax.vlines(start, 0, ms, color=STALL_COLOR, linewidth=1.0))
        artists.append(
            ax.hlines(ms, start, end, color=STALL_COLOR, linewidth=1.6, label="blocking send: wait")
        )
        ax.set_ylim(0, float(ms.max()) * 1.15 or 1.0)
    else:
        ax.set_ylim(0, 1)
        artists.append(
            ax.text(0.5, 0.5, "no blocking send", transform=ax.transAxes, ha="center", va="center")
        )
    ax.set_ylabel("send() waited\n(ms)")
    return artists


# -- figures ----------------------------------------------------------------------------


def _fmt_bytes(n: Any) -> str:
    if n is None:
        return "?"
    n = int(n)
    if n % 1024 == 0 and n < 4 * 1024 * 1024:
        return f"{n // 1024} KiB"
    if n >= 1024 * 1024:
        return f"{n / 1024 / 1024:.1f} MiB"
    return f"{n:,} B"


def _granted(run: Run, side: str, key: str) -> Any:
    return ((run.side(side).get("buffers") or {}).get("granted_start") or {}).get(key)


def run_title(run: Run) -> str:
    """The run's configuration in one line: what a reader needs to interpret the plot."""
    c = run.config
    parts = []
    if c.get("messages") is not None:
        parts.append(f"{c['messages']:,} messages × {c.get('size', '?')} B")
    if c.get("recv_delay") is not None:
        parts.append(f"recv-delay {float(c['recv_delay']) * 1e3:g} ms")
    for name, side, key in (("SO_SNDBUF", "sender", "sndbuf"), ("SO_RCVBUF", "receiver", "rcvbuf")):
        granted = _granted(run, side, key)
        if granted is None:
            continue
        asked = c.get(key)
        parts.append(
            f"{name} {_fmt_bytes(granted)}"
            + (" (autotuned)" if asked is None else f" (asked {_fmt_bytes(asked)})")
        )
    if c.get("mode"):
        parts.append(f"mode {c['mode']}")
    return ", ".join(parts) or run.path.name


def _x_extent(run: Run, run_phases: Sequence[Phase]) -> tuple[float, float]:
    ends = [p.end for p in run_phases]
    for frame in (run.sender_samples, run.receiver_samples):
        if not frame.empty:
            ends.append(float(frame["t"].max()))
    sent = sender_seconds(run)
    if sent is not None:
        ends.append(sent)
    right = max((e for e in ends if np.isfinite(e)), default=1.0)
    return 0.0, right * 1.02 if right > 0 else 1.0


def _panels(
    fig: Figure,
    run: Run,
    xlim: tuple[float, float],
    run_phases: Sequence[Phase],
    stall_table: pd.DataFrame,
    zoom: bool,
) -> list[Axes]:
    from bufdemo.analysis import witness

    kev, wev = witness.kernel_events(run), witness.wire_events(run)
    ratios = [1.2, 1.4, 1.2, 0.8] + ([0.9] if kev is not None or wev is not None else [])
    axes = fig.subplots(len(ratios), 1, sharex=True, gridspec_kw={"height_ratios": ratios})
    ax_msg, ax_q, ax_w, ax_b = (axes[i] for i in range(4))
    ax_msg.set_xlim(*xlim)
    window = xlim if zoom else None
    plot_messages(ax_msg, run, window, max_points=MAX_POINTS)
    # Each side on its own scale: a 4 MiB send queue would flatten a 128 KiB receive queue.
    sender_unit = byte_unit(_max_bytes(run, (SENDER,)))
    plot_queues(ax_q, run, window, sender_unit, wakes=zoom, sides=(SENDER,))
    witness.plot_blocking_rule(ax_q, run, window, sender_unit)
    if len(axes) > 4:
        witness.plot_witness(axes[4], run, kev, wev)
    receiver_unit = byte_unit(_max_bytes(run, (RECEIVER,)))
    plot_queues(ax_w, run, window, receiver_unit, sides=(RECEIVER,))
    plot_window(ax_w, run, window, receiver_unit)
    ax_w.set_ylabel(f"receiver\n({receiver_unit[1]})")
    visible = stall_table
    if zoom:
        visible = stall_table[(stall_table["end"] >= xlim[0]) & (stall_table["start"] <= xlim[1])]
    plot_blocking(ax_b, visible)
    for i, ax in enumerate(axes):
        shade_stalls(
            ax, visible, label="sender blocked (stall)", min_gap=(xlim[1] - xlim[0]) / 4000
        )
        mark_phases(ax, run_phases, ribbon=i == 0)
        ax.grid(True, alpha=0.3, linewidth=0.5)
        if ax.get_legend_handles_labels()[0]:
            # Outside the data, right of the panel: the lines are the point of the figure.
            ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, frameon=False)
        ax.set_xlim(*xlim)
    axes[-1].set_xlabel(TIME_LABEL)
    if zoom:
        ax_msg.relim()
        ax_msg.autoscale(axis="y")
    return list(axes)


def timeline_figure(run: Run, figsize: tuple[float, float] = (14.0, 10.0)) -> Figure:
    """The whole run: fill, repeated stall/resume, drain, on one time axis."""
    run_phases = phases(run)
    stall_table = stalls(run)
    fig = Figure(figsize=figsize, layout="constrained")
    xlim = _x_extent(run, run_phases)
    axes = _panels(fig, run, xlim, run_phases, stall_table, zoom=False)
    from bufdemo.analysis.userbuffer import add_to_timeline  # it imports this module

    add_to_timeline(axes[1], run)  # asyncio modes: the buffer above the kernel's, and RSS
    n = len(stall_table)
    story = f"{n:,} stall{'s' if n != 1 else ''} (shaded)"
    ratio = stall_table["wake_ratio"].to_numpy()
    ratio = ratio[np.isfinite(ratio)]
    if ratio.size:
        story += (
            ": send() blocks when the send buffer is full and returns once the queue has "
            f"drained to {float(np.median(ratio)):.0%} of its depth (median; kernel rule ~2/3)"
        )
        if str(run.config.get("mode", "")).startswith("asyncio"):  # a stall is a drain()
            story = story.replace("send() blocks", "drain() waits (transport above high-water)")
    fig.suptitle(f"{run_title(run)}\n{story}", fontsize=11)
    return fig


def zoom_window(
    stall_table: pd.DataFrame, run_phases: Sequence[Phase], cycles: int
) -> tuple[float, float] | None:
    """``cycles`` stall/resume cycles from the middle of the stall/resume phase."""
    s = stall_table[np.isfinite(stall_table["end"].to_numpy())]
    if len(s) == 0:
        return None
    starts, ends = s["start"].to_numpy(), s["end"].to_numpy()
    k = max(0, min(len(s) // 2 - cycles // 2, len(s) - cycles - 1))
    stop = min(k + cycles, len(s) - 1)
    lo, hi = starts[k], starts[stop] if stop > k else ends[k]
    if stop == len(s) - 1 and stop - k < cycles:
        hi = ends[stop]
    pad = 0.15 * (hi - lo) if hi > lo else 1e-3
    return lo - pad, hi + pad


def zoom_figure(run: Run, cycles: int = 3, figsize: tuple[float, float] = (14.0, 10.0)) -> Figure:
    """A few stall/resume cycles up close, with the queue at each block and wake-up."""
    run_phases = phases(run)
    stall_table = stalls(run)
    fig = Figure(figsize=figsize, layout="constrained")
    window = zoom_window(stall_table, run_phases, cycles)
    if window is None:
        left, right = _x_extent(run, run_phases)
        window = (left, left + (right - left) * 0.05)
        what = "no stall in this run: the first 5% of it"
    else:
        what = f"{cycles} stall/resume cycle{'s' if cycles != 1 else ''} up close"
    _panels(fig, run, window, run_phases, stall_table, zoom=True)
    fig.suptitle(
        f"{run_title(run)}\n{what}: ▼ queue when send() blocked, ▲ queue at wake-up",
        fontsize=11,
    )
    return fig
