"""Which resource limited the sender: the reader (window shut) or the link (window open).

Two kinds of backpressure look alike from the application: send() blocks in both. What
differs is where the bytes wait and what the kernel says about its own sending:

- a **slow reader** fills the receive buffer; the receiver advertises a zero window
  (``snd_wnd`` = 0 in the sender's tcp_info) and the kernel counts the time as
  ``rwnd_limited``;
- a **slow link** (``run --netns --link-rate``) keeps the window open: the bytes wait in
  the bottleneck queue and in flight, congestion control (``snd_cwnd``) sets the pace,
  and the kernel counts the time as busy but neither rwnd- nor sndbuf-limited.

tcp_info's chronographs split the time the connection had data to send (``busy_time``)
into ``rwnd_limited``, ``sndbuf_limited`` and the rest, which is the congestion window's
(cwnd-limited: the network). :func:`limit_shares` turns the three counters into shares
and :func:`verdict` names the largest; both are pure. :func:`limits` reads them from a
run's last sender sample, with the throughput and the queue, and says why in one line.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from bufdemo.analysis.load import Run

__all__ = ["LIMITS", "limit_shares", "limits", "throughput", "verdict"]

# What each verdict means, in the words the report uses.
LIMITS = {
    "reader": "the reader: the receive window was shut (rwnd-limited)",
    "link": "the link: the window stayed open; cwnd and the bottleneck queue set the pace",
    "network": "the network path: the window stayed open; the congestion window set the pace",
    "send buffer": "the send buffer: too small to keep the window full (sndbuf-limited)",
}
# A verdict needs a clear majority of the busy time; below it the report says "mixed".
MAJORITY = 0.5


def limit_shares(busy_us: float, rwnd_us: float, sndbuf_us: float) -> dict[str, float] | None:
    """Shares of the busy time: rwnd-, sndbuf- and cwnd-limited (the rest); None if idle."""
    if not busy_us or busy_us <= 0:
        return None
    rwnd = min(max(rwnd_us / busy_us, 0.0), 1.0)
    sndbuf = min(max(sndbuf_us / busy_us, 0.0), 1.0 - rwnd)
    return {"rwnd": rwnd, "sndbuf": sndbuf, "cwnd": 1.0 - rwnd - sndbuf}


def verdict(shares: dict[str, float] | None, has_link_rate: bool) -> str | None:
    """``reader``, ``send buffer``, ``link`` / ``network``, ``mixed``, or None (unknown)."""
    if shares is None:
        return None
    name, share = max(shares.items(), key=lambda kv: kv[1])
    if share < MAJORITY:
        return "mixed"
    if name == "rwnd":
        return "reader"
    if name == "sndbuf":
        return "send buffer"
    return "link" if has_link_rate else "network"


def _last(frame: pd.DataFrame, column: str) -> float | None:
    if frame.empty or column not in frame.columns:
        return None
    values = frame[column].to_numpy(dtype="float64", na_value=np.nan)
    values = values[np.isfinite(values)]
    return float(values.max()) if values.size else None  # cumulative counters: the last


def throughput(run: Run) -> dict[str, float | None]:
    """Goodput (message bytes per second, first send to last consumed) and, on a link
    run, the bottleneck's rate while its queue was not empty (Ethernet bytes)."""
    goodput = None
    sends, consumed = run.sends, run.consumed
    if not sends.empty and not consumed.empty:
        span = float(consumed["t_end"].max() - sends["t"].min())
        if span > 0:
            goodput = float(sends["bytes"].sum()) * 8 / span
    link = None
    ls = run.link_samples
    if not ls.empty:
        busy = ls[ls["backlog_bytes"] > 0]
        if len(busy) >= 2:
            dt = float(busy["t"].iloc[-1] - busy["t"].iloc[0])
            if dt > 0:
                link = float(busy["sent_bytes"].iloc[-1] - busy["sent_bytes"].iloc[0]) * 8 / dt
    return {"goodput_bps": goodput, "link_bps": link}


def limits(run: Run) -> dict[str, Any]:
    """summary.json's ``limited_by`` and the numbers behind it."""
    ss = run.sender_samples
    busy = _last(ss, "busy_time_us")
    rwnd = _last(ss, "rwnd_limited_us")
    sndbuf = _last(ss, "sndbuf_limited_us")
    shares = (
        None if busy is None or rwnd is None or sndbuf is None else limit_shares(busy, rwnd, sndbuf)
    )
    link = run.meta.get("link") or {}
    rate = link.get("rate_bps") if isinstance(link, dict) else None
    name = verdict(shares, rate is not None)
    out: dict[str, Any] = {
        "limited_by": name,
        "busy_seconds": None if busy is None else busy / 1e6,
        "rwnd_limited_share": None if shares is None else shares["rwnd"],
        "sndbuf_limited_share": None if shares is None else shares["sndbuf"],
        "cwnd_limited_share": None if shares is None else shares["cwnd"],
        "link_rate_bps": rate,
        "window_shut_share": None,
        "max_link_backlog_bytes": None,
        "max_cwnd_bytes": None,
        "srtt_ms_median": None,
        "retransmits": None,
        **throughput(run),
    }
    if not ss.empty and "snd_wnd" in ss.columns:
        wnd = ss["snd_wnd"].to_numpy(dtype="float64", na_value=np.nan)
        wnd = wnd[np.isfinite(wnd)]
        out["window_shut_share"] = float((wnd == 0).mean()) if wnd.size else None
        cwnd = (ss["snd_cwnd"] * ss["snd_mss"]).to_numpy(dtype="float64", na_value=np.nan)
        cwnd = cwnd[np.isfinite(cwnd)]
        out["max_cwnd_bytes"] = float(cwnd.max()) if cwnd.size else None
        rtt = ss["rtt_us"].to_numpy(dtype="float64", na_value=np.nan)
        rtt = rtt[np.isfinite(rtt) & (rtt > 0)]
        out["srtt_ms_median"] = float(np.median(rtt)) / 1e3 if rtt.size else None
        out["retransmits"] = _last(ss, "total_retrans")
    if not run.link_samples.empty:
        out["max_link_backlog_bytes"] = float(run.link_samples["backlog_bytes"].max())
    return out


def limit_note(lim: dict[str, Any]) -> str | None:
    """One line for the report: which resource limited the sender, and the evidence."""
    name = lim["limited_by"]
    if name is None:
        return None
    if name == "mixed":
        head = "no single resource limited the sender"
    else:
        head = f"limited by {LIMITS[name]}"
    parts = [
        f"of {lim['busy_seconds']:.2f} s with data to send, tcp_info counts "
        f"{lim['rwnd_limited_share']:.0%} receive-window-limited, "
        f"{lim['sndbuf_limited_share']:.0%} send-buffer-limited, "
        f"{lim['cwnd_limited_share']:.0%} congestion-window-limited"
    ]
    if lim["window_shut_share"] is not None:
        parts.append(f"the peer's window was shut in {lim['window_shut_share']:.0%} of samples")
    if lim["max_link_backlog_bytes"] is not None:
        parts.append(f"the bottleneck queue peaked at {lim['max_link_backlog_bytes']:,.0f} B")
    return f"{head}: " + "; ".join(parts)
