"""The witnesses: the kernel's trace and the wire, checked against the application's record.

`bufdemo run --trace --capture` leaves two more tables (docs/run-format.md):
``kernel_events.csv`` (tcp_probe per received segment, on the run's clock) and
``wire_events.csv`` (zero windows, window updates, probes, retransmissions, FIN/RST from
the capture, moved onto the run's clock). This module reads them and asks, for each
stall (blocking send) of the application:

- **trace**: did the sender's socket see the peer's window closed (``snd_wnd == 0`` in a
  tcp_probe event) or full (``snd_una + snd_wnd - snd_nxt`` below one MSS, tcp_info's
  ``snd_mss``: the next full-sized segment may not go, which is what the kernel counts
  as rwnd-limited) at some time during the stall?
- **wire**: was the window closed (a zero-window advertisement) or full (``window_full``:
  the sender's data reached the advertised edge, less than one MSS left) during the
  stall, or did it stay so from before?

A stall with neither is one the receiver did not cause: the send buffer was full with
room left in the window (SO_SNDBUF smaller than what the receiver allows).

tcp_probe fires as a segment arrives, before it is processed: its values are the state
that held *until* that segment. An event's state is placed at the event before it.

It also counts *zero-window episodes* four ways, side by side: the trace (runs of
``snd_wnd == 0`` at the sender), the capture (``zero_window`` frames), tcp_info (runs
of ``snd_wnd == 0`` in the 1 ms samples) and the TcpExt delta (``TCPToZeroWindowAdv``,
counted per network namespace). Why they may disagree is stated with the counts: the
samples miss episodes shorter than the sampling interval; the TcpExt counter counts
every socket of the namespace and only windows the receiver *chose* to shrink to zero.

Pure functions of a loaded run plus the two witness tables; plot helpers take an Axes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import pandas as pd

from bufdemo.errors import RunFormatError
from bufdemo.runformat import KERNEL_EVENTS, WIRE_EVENTS, TableFormat

if TYPE_CHECKING:
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from bufdemo.analysis.load import Run

__all__ = [
    "CrossCheck",
    "cross_check",
    "episodes",
    "kernel_events",
    "plot_blocking_rule",
    "plot_sequence",
    "plot_witness",
    "report_lines",
    "sequence_figure",
    "trace_blocked",
    "wire_blocked_episodes",
    "wire_events",
    "zoom_window",
]


def _read(path: Path, table: TableFormat, t0_ns: int) -> pd.DataFrame | None:
    """The witness table, with ``t`` in seconds since t0; None if the run has none."""
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path, dtype=dict(table.dtypes))
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError, OverflowError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RunFormatError(f"{path.name}: truncated or corrupt table: {reason}") from e
    missing = [c for c in table.columns if c not in frame.columns]
    if missing:
        raise RunFormatError(f"{path.name}: missing column(s) {', '.join(missing)}")
    frame.insert(1, "t", (frame["t_ns"] - t0_ns).to_numpy(dtype="float64") / 1e9)
    return frame


def kernel_events(run: Run) -> pd.DataFrame | None:
    return _read(run.path / KERNEL_EVENTS.file, KERNEL_EVENTS, run.t0_ns)


def wire_events(run: Run) -> pd.DataFrame | None:
    return _read(run.path / WIRE_EVENTS.file, WIRE_EVENTS, run.t0_ns)


def episodes(t: np.ndarray, closed: np.ndarray) -> list[tuple[float, float]]:
    """Runs of ``closed`` True as (first t, first t after the run) pairs; end = inf if open."""
    out: list[tuple[float, float]] = []
    start: float | None = None
    for ti, c in zip(t, closed, strict=True):
        if c and start is None:
            start = float(ti)
        elif not c and start is not None:
            out.append((start, float(ti)))
            start = None
    if start is not None:
        out.append((start, float("inf")))
    return out


def _overlaps(intervals: list[tuple[float, float]], a: float, b: float) -> bool:
    return any(s <= b and e >= a for s, e in intervals)


@dataclass
class CrossCheck:
    """Per stall, what each witness showed; and the zero-window episodes counted four ways."""

    stalls: int = 0
    trace: bool = False  # the run has kernel_events.csv
    wire: bool = False  # the run has wire_events.csv
    trace_closed: int = 0  # stalls during which the trace showed the window closed or full
    wire_closed: int = 0
    both_closed: int = 0
    counts: dict[str, int | None] = field(default_factory=dict)
    why: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # witnesses asked for but absent, why


def _sender_probe(kev: pd.DataFrame) -> pd.DataFrame:
    s = kev[(kev["side"] == "sender") & (kev["event"] == "tcp_probe")]
    return s.sort_values("t")


def _held_until(t: np.ndarray) -> np.ndarray:
    """tcp_probe's times moved back one event: each event's values held since the last."""
    return np.concatenate([t[:1], t[:-1]]) if t.size else t


def _sender_mss(run: Run) -> float | None:
    ss = run.sender_samples
    if ss.empty or "snd_mss" not in ss:
        return None
    mss = ss["snd_mss"].to_numpy(dtype="float64", na_value=np.nan)
    mss = mss[np.isfinite(mss) & (mss > 0)]
    return float(np.median(mss)) if mss.size else None


def trace_blocked(sp: pd.DataFrame, mss: float | None) -> npt.NDArray[np.bool_]:
    """Per sender tcp_probe event: was the window closed, or full (less than ``mss`` of it
    left)? Without an MSS, closed only."""
    wnd = sp["snd_wnd"].to_numpy(dtype="float64", na_value=np.nan)
    closed: npt.NDArray[np.bool_] = np.asarray(wnd == 0, dtype=bool)
    if mss is None:
        return closed
    una = sp["snd_una"].to_numpy(dtype="float64", na_value=np.nan)
    nxt = sp["snd_nxt"].to_numpy(dtype="float64", na_value=np.nan)
    full: npt.NDArray[np.bool_] = np.asarray(una + wnd - nxt < mss, dtype=bool)
    return closed | full


def wire_blocked_episodes(wev: pd.DataFrame) -> list[tuple[float, float]]:
    """The wire's closed-or-full episodes: from a ``zero_window`` or ``window_full`` to the
    next ``window_update`` or ``window_open`` that is not followed by another."""
    marks = wev[wev["event"].isin(["zero_window", "window_update", "window_full", "window_open"])]
    marks = marks.sort_values("t", kind="stable")
    closed = marks["event"].isin(["zero_window", "window_full"]).to_numpy()
    return episodes(marks["t"].to_numpy(), closed)


def cross_check(run: Run) -> CrossCheck:
    """The report's cross-check (see the module docstring)."""
    from bufdemo.analysis.stalls import stalls as stall_table

    cc = CrossCheck()
    for rec in (run.meta.get("witnesses") or {}).values():
        if isinstance(rec, dict) and rec.get("reason"):
            cc.skipped.append(str(rec["reason"]))
    kev = kernel_events(run)
    wev = wire_events(run)
    cc.trace, cc.wire = kev is not None, wev is not None
    st = stall_table(run)
    cc.stalls = len(st)
    trace_eps: list[tuple[float, float]] = []  # closed or full: the stalls' check
    wire_eps: list[tuple[float, float]] = []
    if kev is not None:
        sp = _sender_probe(kev)
        t = _held_until(sp["t"].to_numpy())
        zero = (sp["snd_wnd"] == 0).to_numpy()
        cc.counts["trace (tcp_probe, sender snd_wnd = 0)"] = len(episodes(t, zero))
        trace_eps = episodes(t, trace_blocked(sp, _sender_mss(run)))
    if wev is not None:
        zw = wev[wev["direction"] == "to_sender"]
        zw = zw[zw["event"].isin(["zero_window", "window_update"])].sort_values("t")
        zero_eps = episodes(zw["t"].to_numpy(), (zw["event"] == "zero_window").to_numpy())
        cc.counts["capture (zero-window frames)"] = len(zero_eps)
        wire_eps = wire_blocked_episodes(wev)
    ss = run.sender_samples
    if not ss.empty and "snd_wnd" in ss:
        w = ss["snd_wnd"].to_numpy(dtype="float64", na_value=np.nan)
        t = ss["t"].to_numpy(dtype="float64") if "t" in ss else ss["t_ns"].to_numpy() / 1e9
        cc.counts["tcp_info (1 ms samples, snd_wnd = 0)"] = len(episodes(t, w == 0))
    netstat = run.meta.get("netstat") or {}
    delta = netstat.get("delta") if isinstance(netstat, dict) else None
    cc.counts["TcpExt TCPToZeroWindowAdv (namespace)"] = (
        delta.get("TCPToZeroWindowAdv") if isinstance(delta, dict) else None
    )
    for _, row in st.iterrows():
        a = float(row["start"])
        b = float(row["end"]) if np.isfinite(row["end"]) else float("inf")
        in_trace = _overlaps(trace_eps, a, b)
        in_wire = _overlaps(wire_eps, a, b)
        cc.trace_closed += in_trace
        cc.wire_closed += in_wire
        cc.both_closed += in_trace and in_wire
    cc.why = _why(cc)
    return cc


def _why(cc: CrossCheck) -> list[str]:
    values = {k: v for k, v in cc.counts.items() if v is not None}
    if len(set(values.values())) <= 1:
        return []
    why = []
    for key, v in values.items():
        if key.startswith("tcp_info"):
            why.append(
                f"tcp_info: {v}; 1 ms samples miss a window closed and reopened between two "
                "samples, and merge episodes closer than one interval"
            )
        elif key.startswith("TcpExt"):
            why.append(
                f"TcpExt: {v}; counts every socket of the network namespace (any other "
                "connection, or run, at the same time counts too)"
            )
        elif key.startswith("capture"):
            why.append(
                f"capture: {v}; the wire shows every ACK, also those of the drain (after the "
                "sender's shutdown), which the trace misses"
            )
        elif key.startswith("trace"):
            why.append(
                f"trace: {v}; tcp_probe fires only on an established socket (the sender's "
                "events stop when it shuts down its side after the last message: the drain "
                "is not in the trace)"
            )
    return why


def report_lines(cc: CrossCheck) -> list[str]:
    """The cross-check as the report prints it; nothing when the run had no witness."""
    lines: list[str] = []
    if not (cc.trace or cc.wire or cc.skipped):
        return lines
    lines.append("witnesses (the kernel's trace, the wire):")
    lines.extend(f"  skipped: {s}" for s in cc.skipped)
    if cc.trace and cc.wire:
        lines.append(
            f"  {cc.both_closed} of {cc.stalls} stalls: both the trace and the capture "
            "showed the receiver's window closed or full"
        )
    if cc.trace:
        lines.append(
            f"  {cc.trace_closed} of {cc.stalls} stalls: the trace showed the window closed "
            "(snd_wnd = 0) or full (less than one MSS left)"
        )
    if cc.wire:
        lines.append(
            f"  {cc.wire_closed} of {cc.stalls} stalls: the wire showed a zero window or a full one"
        )
    open_stalls = cc.stalls - (cc.trace_closed if cc.trace else cc.wire_closed)
    if (cc.trace or cc.wire) and open_stalls > 0:
        lines.append(
            f"  {open_stalls} stalls with room in the window: the send buffer itself was full "
            "(SO_SNDBUF smaller than what the receiver allows), not the receiver"
        )
    lines.append("  zero-window episodes, counted four ways:")
    for key, v in cc.counts.items():
        lines.append(f"    {key}: {'n/a' if v is None else v}")
    lines.extend(f"  why they differ: {w}" for w in cc.why)
    return lines


# -- pictures -------------------------------------------------------------------------


def plot_sequence(
    ax: Axes, run: Run, kev: pd.DataFrame, xlim: tuple[float, float] | None = None
) -> list[Artist]:
    """tcptrace-style: snd_nxt, snd_una, snd_una + snd_wnd at the sender; stalls shaded."""
    from bufdemo.analysis.plots import shade_stalls
    from bufdemo.analysis.stalls import stalls as stall_table

    sp = _sender_probe(kev)
    if xlim is not None:
        sp = sp[(sp["t"] >= xlim[0]) & (sp["t"] <= xlim[1])]
    t = sp["t"].to_numpy()
    mib = 1 << 20
    una = sp["snd_una"].to_numpy(dtype="float64", na_value=np.nan) / mib
    nxt = sp["snd_nxt"].to_numpy(dtype="float64", na_value=np.nan) / mib
    lim = una + sp["snd_wnd"].to_numpy(dtype="float64", na_value=np.nan) / mib
    artists: list[Artist] = []
    # tcp_probe's values held until its event (see the module docstring): steps "pre".
    artists += ax.step(
        t,
        lim,
        where="pre",
        color="tab:green",
        lw=4.0,
        alpha=0.45,
        label="snd_una + snd_wnd (receiver's limit)",
    )
    artists += ax.step(t, nxt, where="pre", color="tab:blue", lw=1.0, label="snd_nxt (sent)")
    artists += ax.step(t, una, where="pre", color="tab:orange", lw=1.0, label="snd_una (ACKed)")
    artists += shade_stalls(ax, stall_table(run), label="blocking send")
    ax.set_ylabel("MiB since the first traced ACK")
    ax.set_xlabel("seconds since the connection")
    if xlim is not None:
        ax.set_xlim(*xlim)
        if len(t):
            lo = np.nanmin(una)
            hi = np.nanmax(lim)
            if np.isfinite(lo) and np.isfinite(hi) and hi > lo:
                ax.set_ylim(lo - (hi - lo) * 0.05, hi + (hi - lo) * 0.05)
    ax.legend(loc="upper left", fontsize="small")
    return artists


def plot_blocking_rule(
    ax: Axes,
    run: Run,
    xlim: tuple[float, float] | None = None,
    unit: tuple[float, str] = (1.0, "B"),
) -> list[Artist]:
    """The kernel's blocking rule from its own numbers (SO_MEMINFO, sender samples):
    ``wmem_queued`` (truesize queued) against the wake-up line ``2/3 sk_sndbuf`` (free
    space >= half of what is queued). send() blocks where wmem_queued reaches sk_sndbuf
    (the SO_SNDBUF line) and wakes where it falls to the wake-up line."""
    from bufdemo.analysis.plots import _runs, envelope

    frame = run.sender_samples
    if frame.empty or "wmem_queued" not in frame:
        return []
    q = frame["wmem_queued"].to_numpy(dtype="float64", na_value=np.nan)
    if not np.isfinite(q).any():
        return []
    t = frame["t"].to_numpy(dtype="float64")
    keep = np.ones(t.size, dtype=bool) if xlim is None else (t >= xlim[0]) & (t <= xlim[1])
    div = unit[0]
    artists: list[Artist] = []
    x, y = envelope(t[keep], q[keep] / div)
    artists += ax.plot(
        x,
        y,
        drawstyle="steps-post",
        color="tab:purple",
        lw=0.9,
        label="wmem_queued (truesize, SO_MEMINFO)",
    )
    limit = frame["sk_sndbuf"].to_numpy(dtype="float64", na_value=np.nan)[keep]
    lx, ly = _runs(t[keep], limit * 2 / 3 / div)  # only where it changes: exact, small
    artists += ax.plot(
        lx,
        ly,
        drawstyle="steps-post",
        color="tab:purple",
        linestyle=":",
        lw=1.1,
        label="wake-up line: free >= queued/2 (2/3 sk_sndbuf)",
    )
    return artists


def plot_witness(
    ax: Axes, run: Run, kev: pd.DataFrame | None, wev: pd.DataFrame | None
) -> list[Artist]:
    """The witness panel: the advertised window per ACK (tcp_probe) and the wire's markers."""
    artists: list[Artist] = []
    kib = 1024.0
    if kev is not None:
        sp = _sender_probe(kev)
        artists += ax.step(
            sp["t"],
            sp["snd_wnd"] / kib,
            where="post",
            color="tab:green",
            lw=0.8,
            label="advertised window per ACK (tcp_probe snd_wnd)",
        )
    if wev is not None:
        styles = {
            "zero_window": ("v", "tab:red", "zero window (wire)"),
            "window_update": ("^", "tab:green", "window update (wire)"),
            "window_full": ("|", "tab:orange", "window full (wire)"),
            "zero_window_probe": ("x", "black", "zero-window probe (wire)"),
            "retransmission": ("*", "tab:purple", "retransmission (wire)"),
        }
        for event, (marker, color, label) in styles.items():
            e = wev[wev["event"] == event]
            if len(e):
                artists.append(
                    ax.scatter(
                        e["t"],
                        np.zeros(len(e)),
                        marker=marker,
                        color=color,
                        s=18,
                        label=label,
                        zorder=3,
                    )
                )
    ax.set_ylabel("KiB")
    if artists:
        ax.legend(loc="upper right", fontsize="small")
    return artists


def sequence_figure(run: Run, cycles: int = 3) -> Figure | None:
    """sequence.png: the whole run above, a zoom on a few stalls below; None without a trace."""
    from matplotlib.figure import Figure

    kev = kernel_events(run)
    if kev is None or _sender_probe(kev).empty:
        return None
    fig = Figure(figsize=(14.0, 10.0), layout="constrained")
    top, bottom = fig.subplots(2, 1)
    plot_sequence(top, run, kev)
    top.set_title("time-sequence at the sender (kernel trace, tcp_probe): whole run")
    window = zoom_window(run, kev, cycles)
    if window is not None:
        plot_sequence(bottom, run, kev, window)
        bottom.set_title(
            f"zoom: {cycles} window cycles: during a stall snd_nxt sits on the receiver's "
            "limit, and moves only when the window opens"
        )
    else:
        bottom.set_visible(False)
    return fig


def zoom_window(run: Run, kev: pd.DataFrame, cycles: int = 3) -> tuple[float, float] | None:
    """A few close/open cycles of the window in the middle of the stalls: from the
    start of one closed-window episode (trace) to the end of the ``cycles``-th."""
    from bufdemo.analysis.stalls import stalls as stall_table

    sp = _sender_probe(kev)
    eps = episodes(_held_until(sp["t"].to_numpy()), (sp["snd_wnd"] == 0).to_numpy())
    st = stall_table(run)
    starts = st["start"].to_numpy(dtype="float64")
    ends = np.where(np.isfinite(st["end"].to_numpy(dtype="float64")), st["end"], np.inf)
    eps = [e for e in eps if np.isfinite(e[1]) and bool(((starts <= e[0]) & (e[0] <= ends)).any())]
    if eps:
        first = max(0, len(eps) // 2 - cycles // 2)
        chosen = eps[first : first + cycles]
        a, b = chosen[0][0], chosen[-1][1]
    elif len(st):
        a = float(starts[0])
        b = float(ends[0]) if np.isfinite(ends[0]) else a + 1.0
    else:
        return None
    pad = max((b - a) * 0.1, 0.002)
    return a - pad, b + pad
