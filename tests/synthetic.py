"""A synthetic but format-correct run directory (format version 1) for analysis tests.

The model is a small, deterministic caricature of a real loopback run:

- the sender hands one ``size``-byte message to the kernel every ``send_gap`` seconds
  while its send queue holds fewer than ``sndbuf_msgs`` messages (the SO_SNDBUF limit,
  counted here in messages: the real limit is in truesize);
- a full queue makes that send a *blocking send*: the sender sleeps until the queue has
  drained to ``wake_msgs`` (default 2/3 of the limit, the kernel's wake rule), then
  queues the message ``wake_latency`` later;
- a message leaves the send queue (is acknowledged) when the receiver's kernel buffer,
  ``rcvbuf_msgs`` messages, has room for it;
- the receiver serves one message per ``recv_delay`` with the service model of
  run-format.md: ``start`` is the previous *target* end when the frame was already
  waiting, else its arrival; the actual end overshoots the target by ``overshoot``.

:func:`write_run` writes all five CSVs and meta.json and returns the :class:`Truth`
the model produced, so tests compare analysis results with what was built in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from bufdemo import runformat

T0_NS = 7_654_321_000_000_000  # a monotonic clock 88 days after boot: beyond float64's ns


@dataclass(frozen=True)
class Model:
    messages: int = 2000
    size: int = 1024
    send_gap: float = 2e-6
    recv_delay: float = 1e-3
    sndbuf_msgs: int = 12
    wake_msgs: int | None = None  # None: 2/3 of sndbuf_msgs, rounded down
    rcvbuf_msgs: int = 6
    wake_latency: float = 5e-6
    overshoot: float = 20e-6
    read_cost: float = 1e-6
    sample_interval: float = 1e-3
    sndbuf_requested: int | None = 8192
    rcvbuf_requested: int | None = 4096
    sndbuf_granted: int = 16384
    rcvbuf_granted: int = 8192
    mode: str = "blocking"
    empty_probes: tuple[str, ...] = ()  # sample columns left empty (probe unavailable)

    @property
    def wake(self) -> int:
        return self.wake_msgs if self.wake_msgs is not None else self.sndbuf_msgs * 2 // 3

    # What the model must do, worked out from its parameters alone: the tests compare these
    # with the simulation (test_analysis) and with what analysis finds in the files. They
    # need a sender that refills the queue before the receiver frees the next place.

    @property
    def first_blocking_seq(self) -> int:
        """The first message whose send blocks.

        The receiver takes message 0 at once and its buffer (``rcvbuf_msgs``) fills, then
        the send queue (``sndbuf_msgs``); meanwhile each message the receiver reads frees
        one more place. Reading message k >= 1 happens at ``send_gap + overshoot +
        read_cost + k * recv_delay``: each one waits for the previous target end.
        """
        if (self.sndbuf_msgs - self.wake) * self.send_gap + self.wake_latency >= self.recv_delay:
            raise ValueError("the closed forms need a sender much faster than the receiver")
        first_read = self.send_gap + self.overshoot + self.read_cost
        seq = self.rcvbuf_msgs + 1 + self.sndbuf_msgs
        while True:
            t = (seq + 1) * self.send_gap  # when message seq is attempted
            freed = max(0, int((t - first_read) // self.recv_delay))
            if seq - (self.rcvbuf_msgs + 1 + freed) >= self.sndbuf_msgs:
                return seq
            seq += 1

    @property
    def expected_stalls(self) -> int:
        """Blocking sends: one at :attr:`first_blocking_seq`, then one every
        ``sndbuf_msgs - wake`` messages (each wake-up frees that many places, refilled
        before the receiver frees the next), up to the last message."""
        step = self.sndbuf_msgs - self.wake
        return max(0, -(-(self.messages - self.first_blocking_seq) // step))

    def expected_phases(self, sides: tuple[str, ...] = ("sender", "receiver")) -> list[str]:
        """The phases analysis must find: none without the sender's tables; fill; a
        stall/resume phase if any send blocked; a drain if the receiver was recorded."""
        if "sender" not in sides:
            return []
        return [
            "fill",
            *(["stall/resume"] if self.expected_stalls else []),
            *(["drain"] if "receiver" in sides else []),
        ]


@dataclass(frozen=True)
class Truth:
    """What the model did, in seconds since t0."""

    stall_starts: npt.NDArray[np.float64]
    stall_ends: npt.NDArray[np.float64]
    outq_start: npt.NDArray[np.int64]
    outq_wake: npt.NDArray[np.int64]
    sender_done: float
    receiver_done: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def stall_count(self) -> int:
        return len(self.stall_starts)


def simulate(m: Model) -> dict[str, npt.NDArray[Any]]:
    """Run the model; all times are seconds since t0."""
    n, q, w, r = m.messages, m.sndbuf_msgs, m.wake, m.rcvbuf_msgs
    if not 0 <= w < q:
        raise ValueError(f"wake_msgs must be in [0, {q}), got {w}")
    s_start = np.zeros(n)
    s_end = np.zeros(n)
    arrival = np.zeros(n)
    read = np.zeros(n)
    start = np.zeros(n)
    end = np.zeros(n)
    blocked = np.zeros(n, dtype=np.int8)
    outq_start = np.zeros(n, dtype=np.int64)
    outq_end = np.zeros(n, dtype=np.int64)
    arrived = 0  # messages j < i with arrival[j] <= the time being asked about
    prev_end = prev_target = -1.0
    t = 0.0
    for i in range(n):
        tent = t + m.send_gap
        while arrived < i and arrival[arrived] <= tent:
            arrived += 1
        queued = i - arrived
        s_start[i] = tent
        if queued >= q:
            blocked[i] = 1
            outq_start[i] = queued * m.size
            wake = arrival[i - w - 1]  # the queue is down to w messages
            t = wake + m.wake_latency
            while arrived < i and arrival[arrived] <= t:
                arrived += 1
            outq_end[i] = (i - arrived + 1) * m.size
        else:
            t = tent
        s_end[i] = t
        arrival[i] = max(t, read[i - r]) if i >= r else t
        if i > 0 and arrival[i] <= prev_end:
            read[i] = prev_end + m.read_cost
            start[i] = prev_target
        else:
            read[i] = arrival[i]
            start[i] = arrival[i]
        prev_target = start[i] + m.recv_delay
        prev_end = end[i] = prev_target + m.overshoot
    return {
        "s_start": s_start,
        "s_end": s_end,
        "arrival": arrival,
        "read": read,
        "start": start,
        "end": end,
        "blocked": blocked,
        "outq_start": outq_start,
        "outq_end": outq_end,
    }


def _ns(seconds: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    return T0_NS + np.round(seconds * 1e9).astype(np.int64)


def _count_le(times: npt.NDArray[np.float64], at: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    return np.searchsorted(times, at, side="right").astype(np.int64)


def _samples(m: Model, sim: dict[str, npt.NDArray[Any]], side: str) -> pd.DataFrame:
    done = sim["s_end"][-1] if side == "sender" else sim["end"][-1]
    t = np.arange(0.0, done + m.sample_interval, m.sample_interval)
    sent = _count_le(sim["s_end"], t)
    arrived = _count_le(np.maximum.accumulate(sim["arrival"]), t)
    was_read = _count_le(sim["read"], t)
    consumed = _count_le(sim["end"], t)
    in_receiver = arrived - was_read
    free = (m.rcvbuf_msgs - in_receiver) * m.size
    outq = (sent - arrived) * m.size
    zero = np.zeros_like(t, dtype=np.int64)
    interval_us = round(m.sample_interval * 1e6)
    if side == "sender":
        rwnd_limited = np.cumsum(((free == 0) & (outq > 0)) * interval_us)
        cols = {
            "count": sent,
            "outq": outq,
            "outq_nsd": outq,  # zero window: everything queued is also unsent
            "inq": zero,
            "sndbuf": zero + m.sndbuf_granted,
            "rcvbuf": zero + 131072,
            "snd_wnd": free,
            "rcv_wnd": zero + 65483,
            "notsent_bytes": outq,
            "rwnd_limited_us": rwnd_limited,
        }
    else:
        cols = {
            "count": consumed,
            "outq": zero,
            "outq_nsd": zero,
            "inq": in_receiver * m.size,
            "sndbuf": zero + 2626560,
            "rcvbuf": zero + m.rcvbuf_granted,
            "snd_wnd": zero + 65483,
            "rcv_wnd": free,
            "notsent_bytes": zero,
            "rwnd_limited_us": zero,
        }
    frame = pd.DataFrame(
        {
            "t_ns": _ns(t),
            **cols,
            "sndbuf_limited_us": zero,
            "probes": zero,
            "backoff": zero,
            "snd_cwnd": zero + 10,
            "snd_mss": zero + 65483,
            "rtt_us": zero + 50,
            "total_retrans": zero,
            # Data waiting to go out: the time tcp_info counts as busy (>= rwnd-limited).
            "busy_time_us": np.cumsum((outq > 0) * interval_us) if side == "sender" else zero,
        }
    )
    # SO_MEMINFO, roughly: truesize ~3% above the payload queues, nothing else held.
    frame["wmem_queued"] = (frame["outq"] * 1.03).round()
    frame["sk_sndbuf"] = frame["sndbuf"]
    frame["wmem_alloc"] = zero
    frame["rmem_alloc"] = (frame["inq"] * 1.03).round()
    frame["sk_rcvbuf"] = frame["rcvbuf"]
    for name in ("fwd_alloc", "backlog", "drops"):
        frame[name] = zero
    frame = frame[list(runformat.SENDER_SAMPLES.columns)]
    for name in m.empty_probes:
        frame[name] = pd.array([pd.NA] * len(frame), dtype="Int64")
    return frame


def _meta(m: Model, sim: dict[str, npt.NDArray[Any]], sides: tuple[str, ...]) -> dict[str, Any]:
    n = m.messages
    buffers = {
        "requested": {"sndbuf": m.sndbuf_requested, "rcvbuf": m.rcvbuf_requested},
        "granted_start": {"sndbuf": m.sndbuf_granted, "rcvbuf": 131072},
        "granted_end": {"sndbuf": m.sndbuf_granted, "rcvbuf": 131072},
    }
    meta: dict[str, Any] = {
        "format_version": 1,
        "created": "2026-11-26T15:12:30Z",
        "command": f"bufdemo run --messages {n} --recv-delay {m.recv_delay}",
        "config": {
            "messages": n,
            "size": m.size,
            "recv_delay": m.recv_delay,
            "sndbuf": m.sndbuf_requested,
            "rcvbuf": m.rcvbuf_requested,
            "mode": m.mode,
            "sample_interval": m.sample_interval,
        },
        "host": {
            "hostname": "synthetic",
            "kernel": "6.18.0",
            "python": "3.12.0",
            "cpu_count": 2,
            "tcp_wmem": "4096 16384 4194304",
            "tcp_rmem": "4096 131072 33554432",
            "wmem_max": 4194304,
            "rmem_max": 4194304,
            "tcp_notsent_lowat": 4294967295,
            "tcp_moderate_rcvbuf": 1,
        },
        "t0_ns": T0_NS,
        "netstat": None,
        "outcome": {"complete": True, "reason": None},
    }
    if "sender" in sides:
        meta["sender"] = {
            "address": "127.0.0.1:40000",
            "peer": "127.0.0.1:40001",
            "t_connected_ns": T0_NS,
            "t_done_ns": int(_ns(sim["s_end"][-1:])[0]),
            "messages": n,
            "buffers": buffers,
            "complete": True,
            "error": None,
        }
    if "receiver" in sides:
        meta["receiver"] = {
            "address": "127.0.0.1:40001",
            "peer": "127.0.0.1:40000",
            "t_connected_ns": T0_NS,
            "t_done_ns": int(_ns(sim["end"][-1:])[0]),
            "messages": n,
            "buffers": {
                **buffers,
                "requested": {"sndbuf": None, "rcvbuf": m.rcvbuf_requested},
                "granted_start": {"sndbuf": 2626560, "rcvbuf": m.rcvbuf_granted},
                "granted_end": {"sndbuf": 2626560, "rcvbuf": m.rcvbuf_granted},
            },
            "complete": True,
            "error": None,
            "intact": n,
            "corrupt": 0,
            "out_of_order": 0,
            "truncated_bytes": 0,
            "service_ns": round(m.recv_delay * 1e9),
        }
    return meta


def _secs(a: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return (_ns(a) - T0_NS) / 1e9


def write_run(
    path: Path, model: Model | None = None, sides: tuple[str, ...] = ("sender", "receiver")
) -> Truth:
    """Write a run directory for ``model`` at ``path`` (created); return the model's truth."""
    m = model or Model()
    sim = simulate(m)
    path.mkdir(parents=True, exist_ok=True)
    b = sim["blocked"].astype(bool)
    seq = np.arange(m.messages, dtype=np.int64)
    if "sender" in sides:
        s_start_ns, s_end_ns = _ns(sim["s_start"]), _ns(sim["s_end"])
        # As the sender writes it: when each message was completely handed over, and the
        # time since the previous one was (the first: since its own start).
        previous_end = np.concatenate((s_start_ns[:1], s_end_ns[:-1]))
        pd.DataFrame(
            {
                "seq": seq,
                "t_ns": s_end_ns,
                "duration_ns": s_end_ns - previous_end,
                "bytes": m.size,
                "accepted_first": np.where(b, 0, m.size),
                "blocked": sim["blocked"],
            }
        ).to_csv(path / "sends.csv", index=False)
        pd.DataFrame(
            {
                "seq": seq[b],
                "t_start_ns": s_start_ns[b],
                "t_end_ns": s_end_ns[b],
                "accepted_first": 0,
                "bytes_after_wait": m.size,
                "outq_start": sim["outq_start"][b],
                "outq_nsd_start": sim["outq_start"][b],
                "sndbuf_start": m.sndbuf_granted,
                "outq_end": sim["outq_end"][b],
                "outq_nsd_end": sim["outq_end"][b],
                "sndbuf_end": m.sndbuf_granted,
                "waits": 1,
                # SO_MEMINFO: not modelled, written as unavailable
                "wmem_queued_start": np.nan,
                "sk_sndbuf_start": np.nan,
                "wmem_queued_end": np.nan,
                "sk_sndbuf_end": np.nan,
            }
        ).to_csv(path / "blocking_sends.csv", index=False)
        _samples(m, sim, "sender").to_csv(path / "sender_samples.csv", index=False)
    if "receiver" in sides:
        pd.DataFrame(
            {
                "seq": seq,
                "t_read_ns": _ns(sim["read"]),
                "t_start_ns": _ns(sim["start"]),
                "t_end_ns": _ns(sim["end"]),
                "intact": np.ones(m.messages, dtype=np.int8),
            }
        ).to_csv(path / "consumed.csv", index=False)
        _samples(m, sim, "receiver").to_csv(path / "receiver_samples.csv", index=False)
    (path / "meta.json").write_text(json.dumps(_meta(m, sim, sides), indent=2) + "\n")
    # Truth in the same rounding as the files: seconds from the written nanoseconds.
    return Truth(
        stall_starts=_secs(sim["s_start"][b]),
        stall_ends=_secs(sim["s_end"][b]),
        outq_start=sim["outq_start"][b],
        outq_wake=sim["outq_end"][b] - m.size,
        sender_done=float(_secs(sim["s_end"][-1:])[0]),
        receiver_done=float(_secs(sim["end"][-1:])[0]),
        extra={"sim": sim},
    )
