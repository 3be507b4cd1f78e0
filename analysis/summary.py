"""The headline numbers of a run (summary.json) and plain-language notes that judge it.

:func:`summarize` computes every key of run-format.md's summary.json from the tables
and meta.json; :func:`format_summary` turns it into lines for a terminal (a separate
step prints them). Like pyperf, the summary checks its own measurement: where a run
cannot show what it was meant to show (no stall, a receive buffer small enough for the
zero-window-probe trap, a busy machine), a note says so *and* what to change.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from bufdemo.analysis.limits import limit_note, limits
from bufdemo.analysis.load import Run
from bufdemo.analysis.stalls import phases, receiver_seconds, sender_seconds, service_times, stalls

__all__ = ["LOOPBACK_MSS", "SUMMARY_KEYS", "format_summary", "summarize"]

SUMMARY_KEYS = (
    "messages_sent",
    "messages_received",
    "messages_intact",
    "messages_lost",
    "blocking_sends",
    "stall_seconds",
    "first_stall_seconds",
    "sender_seconds",
    "receiver_seconds",
    "sndbuf_requested",
    "rcvbuf_requested",
    "sndbuf_granted",
    "rcvbuf_granted",
    "max_send_queue_bytes",
    "max_recv_queue_bytes",
    "complete",
    "stall_count",
    "stall_seconds_median",
    "resume_queue_ratio_median",
    "service_seconds_mean",
    "phases",
    "latency",
    "asyncio",
    "notes",
    "limited_by",
    "goodput_mbit",
    "link_mbit",
    "limits",
)

# Loopback's MSS is ~64 KiB (docs/kernel.md, "The receive window"). A receive buffer below it
# can never free one MSS of window: the sender then waits for zero-window probes.
LOOPBACK_MSS = 65536
# Achieved service time further than this from --recv-delay means the machine is busy.
SERVICE_TOLERANCE = 0.05
# Share of in-stall receiver samples with an empty receive queue that signals the trap
# (picked as "most of the time": a healthy slow receiver always has data waiting).
IDLE_SHARE = 0.5
# The wake rule gives ~2/3; outside this band (picked as +-0.15) the run does not show it.
WAKE_RATIO_RANGE = (0.5, 0.8)
MIN_STALLS_FOR_RATIO = 3


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating) and math.isfinite(value):
        return int(value)
    return None


def _float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _nanmax(*arrays: npt.NDArray[np.float64]) -> float | None:
    values = [a[np.isfinite(a)] for a in arrays]
    values = [a for a in values if a.size]
    return float(max(a.max() for a in values)) if values else None


def _col(frame: pd.DataFrame, name: str) -> npt.NDArray[np.float64]:
    if name not in frame.columns:
        return np.zeros(0)
    return frame[name].to_numpy(dtype="float64", na_value=np.nan)


def _buffer(run: Run, side: str, which: str, key: str) -> int | None:
    buffers = run.side(side).get("buffers") or {}
    entry = buffers.get(which) or {}
    return _int(entry.get(key)) if isinstance(entry, dict) else None


def _requested(run: Run, key: str) -> int | None:
    if key in run.config:
        return _int(run.config[key])
    side = "sender" if key == "sndbuf" else "receiver"
    return _buffer(run, side, "requested", key)


def _idle_share_in_stalls(run: Run, s: pd.DataFrame) -> float | None:
    """Share of receiver samples taken during stalls that found the receive queue empty."""
    rs = run.receiver_samples
    if rs.empty or s.empty:
        return None
    t = rs["t"].to_numpy()
    inq = _col(rs, "inq")
    starts = s["start"].to_numpy()
    ends = np.where(np.isfinite(s["end"].to_numpy()), s["end"].to_numpy(), np.inf)
    order = np.argsort(starts)
    starts, ends = starts[order], np.maximum.accumulate(ends[order])
    i = np.searchsorted(starts, t, side="right") - 1
    inside = (i >= 0) & (t < ends[np.maximum(i, 0)]) & np.isfinite(inq)
    if not inside.any():
        return None
    return float((inq[inside] == 0).mean())


def _kib(n: float) -> str:
    return f"{n / 1024:,.0f} KiB" if n >= 10 * 1024 else f"{n:,.0f} B"


def _buffer_notes(name: str, requested: int | None, granted: int | None) -> list[str]:
    if requested is None or granted is None:
        return []
    if granted == 2 * requested:
        return [
            f"{name}: asked for {requested:,} B, the kernel granted {granted:,} B: Linux "
            "doubles the setsockopt value to leave room for bookkeeping (the limit counts "
            "truesize, payload plus per-packet overhead), and setting it switches "
            "autotuning off for this socket"
        ]
    limit = "net.core.wmem_max" if name == "SO_SNDBUF" else "net.core.rmem_max"
    if granted < 2 * requested:
        return [
            f"{name}: asked for {requested:,} B, granted {granted:,} B, less than twice the "
            f"request: the kernel clamped it to {limit}; raise {limit} to get more"
        ]
    return [
        f"{name}: asked for {requested:,} B, granted {granted:,} B, more than twice the "
        "request: the kernel raised it to its minimum buffer size"
    ]


def _notes(run: Run, out: dict[str, Any], s: pd.DataFrame) -> list[str]:
    notes: list[str] = []
    outcome = run.meta.get("outcome") or {}
    if out["complete"] is False:
        reason = outcome.get("reason") or "no reason recorded"
        notes.append(
            f"run incomplete: {reason}; the tables hold what was recorded until it stopped"
        )
    if not run.has_receiver:
        notes.append(
            "receiver side not recorded (a `bufdemo send` run): consumed messages, the "
            "receive queue and the drain phase are unknown; use `bufdemo run` for both sides"
        )
    if not run.has_sender:
        notes.append(
            "sender side not recorded (a `bufdemo receive` run): stalls, the send queue and "
            "the phases are unknown; use `bufdemo run` for both sides"
        )
    sent, intact, lost = out["messages_sent"], out["messages_intact"], out["messages_lost"]
    if lost is not None and lost > 0:
        rec = run.side("receiver")
        detail = ", ".join(
            f"{rec[k]:,} {k.replace('_', ' ')}"
            for k in ("corrupt", "out_of_order")
            if _int(rec.get(k))
        )
        notes.append(
            f"{lost:,} of {sent:,} messages lost: the receiver consumed "
            f"{out['messages_received']:,}, {intact:,} intact" + (f" ({detail})" if detail else "")
        )
    peak, sndbuf = out["max_send_queue_bytes"], out["sndbuf_granted"]
    if run.has_sender and out["stall_count"] == 0:
        if peak is not None and sndbuf:
            where = f"the send queue peaked at {peak / sndbuf:.0%} of SO_SNDBUF"
            where += f" ({_kib(peak)} of {_kib(sndbuf)})"
        else:
            where = "the sender never had to wait"
        notes.append(
            f"no stall observed: {where}; send more messages (--messages) or slow the "
            "receiver (--recv-delay)"
        )
    notes += _buffer_notes("SO_SNDBUF", out["sndbuf_requested"], out["sndbuf_granted"])
    notes += _buffer_notes("SO_RCVBUF", out["rcvbuf_requested"], out["rcvbuf_granted"])
    rcvbuf = out["rcvbuf_granted"]
    if rcvbuf is not None and rcvbuf < LOOPBACK_MSS and out["stall_count"]:
        idle = _idle_share_in_stalls(run, s)
        probes = _nanmax(_col(run.sender_samples, "probes"))
        trap = (
            f"SO_RCVBUF is {rcvbuf:,} B, below one loopback MSS (~64 KiB): when the sender "
            "sends full-size segments, no read frees a whole MSS, the receiver does not "
            "reopen its window, and data moves only when the sender's zero-window probe "
            "fires (persist timer, >= 200 ms)"
        )
        evidence = []
        if idle is not None and idle >= IDLE_SHARE:
            evidence.append(
                f"the receive queue was empty in {idle:.0%} of the samples taken during "
                "stalls, with the sender blocked: both sides idle"
            )
        if probes is not None and probes > 0:
            evidence.append("the sender had zero-window probes outstanding")
        if evidence:
            notes.append(
                f"zero-window-probe trap: {trap}; in this run {' and '.join(evidence)}; "
                "use --rcvbuf 131072 or more, or leave it unset"
            )
        else:
            notes.append(
                f"small receive buffer: {trap}; not seen in this run (the receiver had data "
                "waiting during stalls): SO_RCVBUF was set before listen(), so the "
                "handshake showed the small window and the sender cut its segments to fit; "
                "the trap needs the buffer shrunk after the handshake "
                "(`bufdemo lab run small-window`)"
            )
    ratio = out["resume_queue_ratio_median"]
    if (
        ratio is not None
        and out["stall_count"] >= MIN_STALLS_FOR_RATIO
        and not (WAKE_RATIO_RANGE[0] <= ratio <= WAKE_RATIO_RANGE[1])
    ):
        notes.append(
            f"send() returned with the queue at {ratio:.0%} of its depth at the stall "
            "(median), not the ~67% of the kernel's wake rule: the writer is woken once the "
            "queue is below ~2/3 of SO_SNDBUF, but the queue drains in steps (one ACK frees "
            "what one window update let through, a large share of a small buffer), so a "
            "single step can take it far below 2/3; leave --sndbuf unset (autotuned, "
            "megabytes) or raise it to see the 2/3 rule"
        )
    delay = _float(run.config.get("recv_delay"))
    mean = out["service_seconds_mean"]
    if delay and mean is not None and abs(mean / delay - 1) > SERVICE_TOLERANCE:
        notes.append(
            f"the receiver served a message in {mean * 1e3:.3f} ms on average, "
            f"{mean / delay - 1:+.0%} off --recv-delay {delay * 1e3:g} ms: the machine was "
            "busy or the delay is below what sleep can time; close other work, or use a "
            "larger --recv-delay"
        )
    return notes


def summarize(run: Run) -> dict[str, Any]:
    """Every key of summary.json (run-format.md), JSON-ready (None where unknown)."""
    s = stalls(run)
    sends, consumed = run.sends, run.consumed
    snd, rec = run.side("sender"), run.side("receiver")
    from_progress = False
    if not sends.empty:
        messages_sent: int | None = int(sends["duration_ns"].notna().sum())
    else:
        messages_sent = _int(snd.get("messages"))
        if messages_sent is None:  # a sender killed before writing anything
            live = ((run.meta.get("last_progress") or {}).get("sender")) or {}
            messages_sent = _int(live.get("messages"))
            from_progress = messages_sent is not None
    if not consumed.empty:
        received: int | None = len(consumed)
        intact: int | None = int(consumed["intact"].sum())
    else:
        received, intact = _int(rec.get("messages")), _int(rec.get("intact"))
    durations = s["duration"].to_numpy()
    finite = durations[np.isfinite(durations)]
    ratios = s["wake_ratio"].to_numpy()
    ratios = ratios[np.isfinite(ratios)]
    service = service_times(consumed)
    bs = run.blocking_sends
    complete = (run.meta.get("outcome") or {}).get("complete")
    out: dict[str, Any] = {
        "messages_sent": messages_sent,
        "messages_received": received,
        "messages_intact": intact,
        "messages_lost": messages_sent - intact
        if messages_sent is not None and intact is not None
        else None,
        "blocking_sends": len(s),
        "stall_seconds": float(finite.sum()),
        "first_stall_seconds": _float(s["start"].min()) if len(s) else None,
        "sender_seconds": sender_seconds(run),
        "receiver_seconds": receiver_seconds(run),
        "sndbuf_requested": _requested(run, "sndbuf"),
        "rcvbuf_requested": _requested(run, "rcvbuf"),
        "sndbuf_granted": _buffer(run, "sender", "granted_start", "sndbuf"),
        "rcvbuf_granted": _buffer(run, "receiver", "granted_start", "rcvbuf"),
        "max_send_queue_bytes": _int(
            _nanmax(_col(run.sender_samples, "outq"), _col(bs, "outq_start"), _col(bs, "outq_end"))
        ),
        "max_recv_queue_bytes": _int(_nanmax(_col(run.receiver_samples, "inq"))),
        "complete": bool(complete) if isinstance(complete, bool) else None,
        "stall_count": len(s),
        "stall_seconds_median": float(np.median(finite)) if finite.size else None,
        "resume_queue_ratio_median": float(np.median(ratios)) if ratios.size else None,
        "service_seconds_mean": float(service.mean()) if len(service) else None,
        "phases": {p.name: {"start": p.start, "end": p.end} for p in phases(run)},
    }
    from bufdemo.analysis.latency import latency_summary  # it imports plots: no cycle here

    out["latency"] = latency_summary(run)
    if not run.has_sender:
        for key in ("blocking_sends", "stall_seconds", "stall_count"):
            out[key] = None  # unknown, not zero: nobody recorded the sender
    from bufdemo.analysis.userbuffer import user_buffer, user_buffer_notes

    out["asyncio"] = user_buffer(run)  # None outside the asyncio modes
    out["notes"] = _notes(run, out, s) + user_buffer_notes(out["asyncio"])
    _add_limits(run, out)
    if from_progress:
        out["notes"].insert(
            0,
            f"messages_sent ({messages_sent:,}) comes from the live progress counter: the "
            "sender died before writing its tables, so it is a lower bound, not a count "
            "of recorded sends",
        )
    return out


def _add_limits(run: Run, out: dict[str, Any]) -> None:
    """Which resource limited the sender (bufdemo.analysis.limits), and the throughput."""
    lim = limits(run)
    out["limited_by"] = lim["limited_by"]
    out["goodput_mbit"] = None if lim["goodput_bps"] is None else lim["goodput_bps"] / 1e6
    out["link_mbit"] = None if lim["link_bps"] is None else lim["link_bps"] / 1e6
    out["limits"] = lim
    note = limit_note(lim)
    if note is not None:
        out["notes"].append(note)


def _seconds(value: float | None, digits: int = 3) -> str:
    return "unknown" if value is None else f"{value:.{digits}f} s"


def _count(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"


def format_summary(summary: dict[str, Any]) -> list[str]:
    """Lines for a terminal; the caller prints them."""
    s = summary
    lines = [
        f"messages      {_count(s['messages_sent'])} sent, {_count(s['messages_received'])} "
        f"received, {_count(s['messages_intact'])} intact, {_count(s['messages_lost'])} lost",
    ]
    for name, key in (("SO_SNDBUF", "sndbuf"), ("SO_RCVBUF", "rcvbuf")):
        asked = s[f"{key}_requested"]
        granted = s[f"{key}_granted"]
        asked_text = "autotuned" if asked is None else f"asked {asked:,} B"
        lines.append(f"{name:<13} {_count(granted)} B granted ({asked_text})")
    if s["stall_count"] is None:
        lines.append("stalls        unknown (no sender record)")
    elif s["stall_count"] == 0:
        lines.append("stalls        none")
    else:
        median = s["stall_seconds_median"]
        lines.append(
            f"stalls        {s['stall_count']:,} blocking sends, {s['stall_seconds']:.3f} s "
            f"blocked in total (median {median * 1e3:.3f} ms), first at "
            f"{s['first_stall_seconds']:.6f} s"
        )
    if s["resume_queue_ratio_median"] is not None:
        lines.append(
            f"resume        at {s['resume_queue_ratio_median']:.3f} of the queue at stall "
            "start (median; the kernel wakes a writer at ~2/3)"
        )
    peaks = [
        f"{label} {_kib(v)}"
        for label, v in (
            ("send", s["max_send_queue_bytes"]),
            ("receive", s["max_recv_queue_bytes"]),
        )
        if v is not None
    ]
    if peaks:
        lines.append(f"peak queues   {', '.join(peaks)} (payload bytes)")
    if s["service_seconds_mean"] is not None:
        lines.append(f"service       {s['service_seconds_mean'] * 1e3:.3f} ms per message")
    if s["phases"]:
        lines.append(
            "phases        "
            + ", ".join(f"{n} {p['start']:.4g}-{p['end']:.4g} s" for n, p in s["phases"].items())
        )
    a = s.get("asyncio")
    if a is not None:  # the transport's buffer above the kernel's (asyncio modes)
        lines.append(
            f"transport     peak {_count(a['buffered_peak_bytes'])} B buffered in user space "
            f"(high-water {_count(a['high_water'])} B), {_count(a['drain_waits'])} drain() "
            "waits (the blocking sends of this mode)"
        )
        if a["rss_growth_bytes"] is not None:
            lines.append(f"sender RSS    grew {_kib(a['rss_growth_bytes'])}")
    done = "yes" if s["complete"] else ("no" if s["complete"] is False else "unknown")
    lines.append(
        f"done          sender {_seconds(s['sender_seconds'])}, receiver "
        f"{_seconds(s['receiver_seconds'])}; complete: {done}"
    )
    if s["notes"]:
        lines.append("notes")
        lines += [f"  - {note}" for note in s["notes"]]
    return lines
