"""Derived views of a run: where the bytes are, the kernel's view, runs side by side.

**Where the bytes are.** Every byte the sender has handed to the kernel is, at any
moment, in exactly one of three places on a loopback connection: still in the sender's
send queue (SIOCOUTQ: not yet acknowledged), in the receiver's receive queue (SIOCINQ:
acknowledged, not yet read), or consumed by the receiving application. So

    handed to the kernel = send queue + receive queue + consumed

holds at every instant, up to the skew of two samplers and the message being processed.
:func:`bytes_in_place` lines the three up on the sender's sample times so the identity
can be checked, and plotted as a stack.

**The kernel's view.** ``tcp_info`` counts, in microseconds, how long the connection
could not send because the peer's advertised window was full (``rwnd_limited``) or
because the send buffer was (``sndbuf_limited``; only when everything queued was
already sent). The application sees the same backpressure as time blocked in
``send()``. :func:`kernel_view` puts both side by side.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from matplotlib.artist import Artist
from matplotlib.axes import Axes

from bufdemo.analysis.load import Run
from bufdemo.analysis.stalls import stalls
from bufdemo.analysis.summary import summarize

__all__ = [
    "bytes_in_place",
    "compare",
    "kernel_view",
    "plot_bytes_in_place",
    "plot_limited",
]

# What compare() shows per run, in order: summary key -> column title.
COMPARE_COLUMNS = {
    "sndbuf_granted": "SO_SNDBUF granted (B)",
    "rcvbuf_granted": "SO_RCVBUF granted (B)",
    "max_send_queue_bytes": "peak send queue (B)",
    "stall_count": "stalls",
    "stall_seconds_median": "median stall (s)",
    "stall_seconds": "time blocked (s)",
    "resume_queue_ratio_median": "queue at wake / at stall",
    "sender_seconds": "sender done (s)",
    "receiver_seconds": "receiver done (s)",
}


def _message_size(run: Run) -> int:
    size = run.config.get("size")
    if isinstance(size, int):
        return size
    if not run.sends.empty:
        return int(run.sends["bytes"].iloc[0])
    return 0


def bytes_in_place(run: Run) -> pd.DataFrame:
    """On the sender's sample times: where every byte handed to the kernel is.

    Columns: ``t`` (s), ``handed`` (messages handed to the kernel x size), ``send_queue``
    (SIOCOUTQ), ``receive_queue`` (SIOCINQ, the receiver's latest sample at or before
    ``t``), ``consumed`` (messages consumed x size, likewise), ``unaccounted``
    (``handed - send_queue - receive_queue - consumed``: sampling skew, close to 0).
    Needs both sides; an empty frame otherwise.
    """
    ss, rs = run.sender_samples, run.receiver_samples
    if ss.empty or rs.empty:
        return pd.DataFrame(
            columns=["t", "handed", "send_queue", "receive_queue", "consumed", "unaccounted"]
        )
    size = _message_size(run)
    left = pd.DataFrame(
        {
            "t": ss["t"].to_numpy(),
            "handed": ss["count"].to_numpy(dtype="float64") * size,
            "send_queue": ss["outq"].to_numpy(dtype="float64", na_value=np.nan),
        }
    )
    right = pd.DataFrame(
        {
            "t": rs["t"].to_numpy(),
            "receive_queue": rs["inq"].to_numpy(dtype="float64", na_value=np.nan),
            "consumed": rs["count"].to_numpy(dtype="float64") * size,
        }
    )
    out = pd.merge_asof(left, right, on="t", direction="backward")
    out[["receive_queue", "consumed"]] = out[["receive_queue", "consumed"]].fillna(0.0)
    out["unaccounted"] = out["handed"] - out["send_queue"] - out["receive_queue"] - out["consumed"]
    return out


def plot_bytes_in_place(ax: Axes, run: Run, unit: float = 1024 * 1024) -> list[Artist]:
    """Stack consumed, receive queue and send queue; the line on top is what was handed
    to the kernel. The stack meets the line: no byte is anywhere else."""
    frame = bytes_in_place(run)
    if frame.empty:
        return []
    t = frame["t"].to_numpy()
    artists: list[Artist] = list(
        ax.stackplot(
            t,
            frame["consumed"].to_numpy() / unit,
            frame["receive_queue"].to_numpy() / unit,
            frame["send_queue"].to_numpy() / unit,
            labels=["consumed by the receiver", "receiver's receive queue", "sender's send queue"],
            colors=["tab:green", "tab:olive", "tab:blue"],
            alpha=0.7,
            step="post",
        )
    )
    artists += ax.plot(
        t, frame["handed"].to_numpy() / unit, color="black", lw=1.0, label="handed to the kernel"
    )
    ax.set_ylabel("bytes (MiB)" if unit == 1024 * 1024 else f"bytes (/{unit:g})")
    ax.set_xlabel("time since connection (s)")
    return artists


def _last(frame: pd.DataFrame, column: str) -> float | None:
    if frame.empty or column not in frame.columns:
        return None
    values = frame[column].to_numpy(dtype="float64", na_value=np.nan)
    values = values[np.isfinite(values)]
    return float(values[-1]) if values.size else None


def kernel_view(run: Run) -> dict[str, Any]:
    """The application's view (time blocked in send()) beside the kernel's (tcp_info).

    ``rwnd_limited_seconds`` and ``sndbuf_limited_seconds`` are the sender's tcp_info
    counters at its last sample; ``zero_window_share`` is the fraction of the sender's
    samples that saw the peer's window at 0. ``netstat_delta`` is the TcpExt delta
    around the run, for the whole network namespace (other connections count too).
    """
    s = stalls(run)
    ss = run.sender_samples
    rwnd = _last(ss, "rwnd_limited_us")
    sndbuf = _last(ss, "sndbuf_limited_us")
    snd_wnd = (
        ss["snd_wnd"].to_numpy(dtype="float64", na_value=np.nan)
        if "snd_wnd" in ss.columns
        else np.zeros(0)
    )
    snd_wnd = snd_wnd[np.isfinite(snd_wnd)]
    netstat = run.meta.get("netstat") or {}
    return {
        "blocked_in_send_seconds": float(np.nansum(s["duration"].to_numpy())) if len(s) else 0.0,
        "rwnd_limited_seconds": None if rwnd is None else rwnd / 1e6,
        "sndbuf_limited_seconds": None if sndbuf is None else sndbuf / 1e6,
        "zero_window_share": float((snd_wnd == 0).mean()) if snd_wnd.size else None,
        "netstat_delta": netstat.get("delta"),
        "netstat_scope": netstat.get("scope"),
    }


def plot_limited(ax: Axes, run: Run) -> list[Artist]:
    """Cumulative time blocked in send() (application) vs tcp_info rwnd_limited (kernel)."""
    artists: list[Artist] = []
    s = stalls(run)
    if len(s):
        ends = s["end"].to_numpy()
        done = np.isfinite(ends)
        t = np.concatenate(([0.0], ends[done]))
        blocked: npt.NDArray[np.float64] = np.concatenate(
            ([0.0], np.cumsum(s["duration"].to_numpy()[done]))
        )
        artists += ax.step(
            t, blocked, where="post", color="tab:red", label="sender blocked in send() (app)"
        )
    ss = run.sender_samples
    for column, color, label in (
        ("rwnd_limited_us", "tab:purple", "limited by receiver's window (tcp_info)"),
        ("sndbuf_limited_us", "tab:blue", "limited by send buffer (tcp_info)"),
    ):
        if ss.empty or column not in ss.columns:
            continue
        values = ss[column].to_numpy(dtype="float64", na_value=np.nan) / 1e6
        if np.isfinite(values).any():
            artists += ax.plot(ss["t"].to_numpy(), values, color=color, label=label)
    ax.set_xlabel("time since connection (s)")
    ax.set_ylabel("cumulative time (s)")
    return artists


def compare(runs: Mapping[str, Run]) -> pd.DataFrame:
    """Runs side by side: one column per run (its label), one row per headline number."""
    table = {
        label: {title: summarize(run).get(key) for key, title in COMPARE_COLUMNS.items()}
        for label, run in runs.items()
    }
    return pd.DataFrame(table)
