"""How big the buffers are, when select() calls a socket writable, and the small-window trap.

- buffer-sizes: Linux stores twice what setsockopt(SO_SNDBUF/SO_RCVBUF) asks for (room
  for per-packet bookkeeping), clamps the request at wmem_max/rmem_max first, and a
  socket nobody set starts at tcp_wmem[1]/tcp_rmem[1] and is grown by autotuning. The
  lecture's "8K default" is compared with what this kernel does.
- writable: select()/poll() call a TCP socket writable while
  ``sndbuf - wmem_queued >= wmem_queued / 2``, i.e. while the queue (counted in truesize,
  read here with SO_MEMINFO) is at most 2/3 of SO_SNDBUF (net/core/stream.c, tcp_poll).
  So a select()-driven writer stops at ~2/3, before send() would block; and after a
  blocking writer filled the buffer, writability returns only once the queue drained back
  to ~2/3. The lecture's simplification "writable as long as the buffer is not full" is
  measured too.
- small-window: on loopback the MSS is ~32-64 KB. If SO_RCVBUF is made small *after* the
  handshake, the receiver's free space never reaches one MSS, its window stays shut and
  data moves only when the sender's zero-window probe (persist) timer fires, >= 200 ms
  apart, with both sides idle. Set before listen(), the sender sees the small window in
  the handshake and bounds its MSS to half of it (tcp_bound_to_half_wnd): no trap.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from typing import Any

from bufdemo import probes
from bufdemo.lecture.lab._core import CHUNK, LabResult, loopback_pair

__all__ = ["buffer_sizes", "small_window", "writable"]

LECTURE_DEFAULT = 8192  # "输入输出缓冲区的默认大小一般都是 8K"
SMALL_REQUEST = 8192  # the lecture's 8K, requested explicitly
# 16 MiB read as fast as possible: enough for receive autotuning to grow SO_RCVBUF well
# past tcp_rmem[1] on loopback (measured: 131072 -> several MB), in well under a second.
AUTOTUNE_BYTES = 16 * 1024 * 1024

BUFFER_SIZES_CLAIM = (
    "getsockopt reports twice what setsockopt asked for, and the request is clamped at "
    "wmem_max/rmem_max; a socket nobody set starts at tcp_wmem[1]/tcp_rmem[1], not at "
    "the lecture's 8K, and autotuning grows it"
)
WRITABLE_CLAIM = (
    "select() reports a socket writable only while its send queue is at most ~2/3 of "
    "SO_SNDBUF: it stops before the buffer is full, and after the buffer filled it "
    "reports writable again only once the queue drained to ~2/3"
)
SMALL_WINDOW_CLAIM = (
    "with SO_RCVBUF small relative to the loopback MSS, a transfer stalls on the "
    "zero-window probe timer (>= 200 ms per stall) with both sides idle"
)


def _bufs(sock: socket.socket) -> tuple[int, int]:
    return (
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
    )


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) else None


def _drain(sock: socket.socket, total: int) -> None:
    got = 0
    while got < total:
        data = sock.recv(1 << 20)
        if not data:
            return
        got += len(data)


def buffer_sizes() -> LabResult:
    sysctls = probes.read_sysctls()
    wmem, rmem = sysctls.get("tcp_wmem"), sysctls.get("tcp_rmem")
    wmem_max = _int_or_none(sysctls.get("wmem_max"))
    rmem_max = _int_or_none(sysctls.get("rmem_max"))
    with socket.socket() as fresh:
        fresh_snd, fresh_rcv = _bufs(fresh)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_REQUEST)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_REQUEST)
        set_snd, set_rcv = _bufs(s)
        huge = 4 * max(wmem_max or 0, rmem_max or 0, 1 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, huge)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, huge)
        clamp_snd, clamp_rcv = _bufs(s)
    with loopback_pair() as pair:
        connected_snd, connected_rcv = _bufs(pair.sender)
        _, receiver_rcv_before = _bufs(pair.receiver)
        reader = threading.Thread(target=_drain, args=(pair.receiver, AUTOTUNE_BYTES))
        reader.start()
        pair.sender.sendall(b"a" * AUTOTUNE_BYTES)
        reader.join()
        after_snd, _ = _bufs(pair.sender)
        _, receiver_rcv_after = _bufs(pair.receiver)
    checks = {
        "setsockopt_doubles": set_snd == 2 * SMALL_REQUEST and set_rcv == 2 * SMALL_REQUEST,
        "clamped_at_2x_max": wmem_max is not None
        and rmem_max is not None
        and clamp_snd == 2 * wmem_max
        and clamp_rcv == 2 * rmem_max,
        "unset_starts_at_sysctl_default": isinstance(wmem, list)
        and isinstance(rmem, list)
        and fresh_snd == wmem[1]
        and fresh_rcv == rmem[1],
        "autotuning_grows_rcvbuf": receiver_rcv_after > receiver_rcv_before,
        "lecture_8k_default_matches": LECTURE_DEFAULT in (fresh_snd, fresh_rcv),
    }
    holds = (
        all(v for k, v in checks.items() if k != "lecture_8k_default_matches")
        and not (checks["lecture_8k_default_matches"])
    )
    evidence: dict[str, Any] = {
        "sysctls": {"tcp_wmem": wmem, "tcp_rmem": rmem, "wmem_max": wmem_max, "rmem_max": rmem_max},
        "fresh_unconnected": {"sndbuf": fresh_snd, "rcvbuf": fresh_rcv},
        "setsockopt_8192": {"requested": SMALL_REQUEST, "sndbuf": set_snd, "rcvbuf": set_rcv},
        "setsockopt_huge": {"requested": huge, "sndbuf": clamp_snd, "rcvbuf": clamp_rcv},
        "unset_after_connect": {"sndbuf": connected_snd, "rcvbuf": connected_rcv},
        "unset_after_16MiB": {
            "sender_sndbuf": after_snd,
            "receiver_rcvbuf_before": receiver_rcv_before,
            "receiver_rcvbuf_after": receiver_rcv_after,
        },
        "lecture_default": LECTURE_DEFAULT,
        "checks": checks,
    }
    explanation = (
        f"nothing set, before connect: SO_SNDBUF {fresh_snd:,}, SO_RCVBUF {fresh_rcv:,} "
        f"(tcp_wmem[1], tcp_rmem[1]); the lecture's {LECTURE_DEFAULT:,} is "
        + ("what this kernel uses" if checks["lecture_8k_default_matches"] else "not what it uses"),
        f"right after connect SO_SNDBUF already reads {connected_snd:,}: send autotuning",
        f"setsockopt({SMALL_REQUEST:,}) reads back {set_snd:,} / {set_rcv:,}: doubled "
        "(setting it also turns autotuning off for that socket: net/core/sock.c)",
        f"setsockopt({huge:,}) reads back {clamp_snd:,} / {clamp_rcv:,}: clamped to "
        f"wmem_max {wmem_max:,} / rmem_max {rmem_max:,}, then doubled"
        if wmem_max is not None and rmem_max is not None
        else "wmem_max/rmem_max unavailable",
        f"after 16 MiB read at full speed the receiver's SO_RCVBUF grew "
        f"{receiver_rcv_before:,} -> {receiver_rcv_after:,} (receive autotuning)",
    )
    return LabResult("buffer-sizes", BUFFER_SIZES_CLAIM, holds, evidence, explanation)


# -- writable ------------------------------------------------------------------------

WRITABLE_SNDBUF = 16384  # doubled to 32768: fills with ~30 KiB, drains in ~1 KiB steps
# The receiver's buffer is as small, so it stops taking data early and the sender's queue
# fills; reading it 1 KiB at a time then drains the sender's queue in small steps.
WRITABLE_RCVBUF = 16384


def _observe(sock: socket.socket) -> tuple[int, bool] | None:
    """(wmem_queued, writable) when both reads agree; None if an ACK landed in between."""
    before = probes.sk_meminfo(sock)
    w = bool(select.select([], [sock], [], 0)[1])
    after = probes.sk_meminfo(sock)
    if before is None or after is None or before["wmem_queued"] != after["wmem_queued"]:
        return None
    return after["wmem_queued"], w


def writable() -> LabResult:
    chunk = b"w" * CHUNK
    with loopback_pair(sndbuf=WRITABLE_SNDBUF, rcvbuf=WRITABLE_RCVBUF) as pair:
        s = pair.sender
        s.setblocking(False)
        sndbuf = s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        if probes.sk_meminfo(s) is None:
            return LabResult(
                "writable",
                WRITABLE_CLAIM,
                False,
                {"error": "SO_MEMINFO unavailable"},
                ("cannot read the send queue's truesize (SO_MEMINFO) on this system",),
            )

        def rule(queued: int) -> bool:  # tcp_poll -> __sk_stream_is_writeable
            return sndbuf - queued >= queued >> 1

        observations: list[tuple[int, bool]] = []
        # Edge 1: a select()-driven writer writes only while select() says writable.
        last_writable = (0, 0)
        while True:
            obs = _observe(s)
            if obs is None:
                continue
            observations.append(obs)
            if not obs[1]:
                break
            last_writable = (obs[0], probes.queue_out(s) or 0)
            s.send(chunk)
        stop_queued, stop_outq = observations[-1][0], probes.queue_out(s) or 0
        # Then write past select(): send() takes more until the buffer is really full.
        extra = 0
        try:
            while True:
                extra += s.send(chunk)
        except BlockingIOError:
            pass
        meminfo = probes.sk_meminfo(s) or {}
        full_queued, full_outq = meminfo.get("wmem_queued", 0), probes.queue_out(s) or 0
        full_writable = bool(select.select([], [s], [], 0)[1])
        # Edge 2: the receiver reads 1 KiB at a time; note when select() says writable again.
        last_blocked: tuple[int, int] | None = None
        resume: tuple[int, int] | None = None
        pair.receiver.settimeout(2.0)
        for _ in range(10_000):
            try:
                pair.receiver.recv(CHUNK)
            except TimeoutError:
                break  # nothing left to read and still not writable: reported below
            obs = _observe(s)
            if obs is None:
                continue
            observations.append(obs)
            if obs[1]:
                resume = (obs[0], probes.queue_out(s) or 0)
                break
            last_blocked = (obs[0], probes.queue_out(s) or 0)
    threshold = 2 * sndbuf // 3
    violations = sum(1 for queued, w in observations if w != rule(queued))
    holds = (
        resume is not None
        and violations == 0
        and extra > 0
        and not full_writable
        and stop_queued <= full_queued
        and resume[0] <= threshold < (last_blocked or (full_queued, 0))[0]
    )
    evidence: dict[str, Any] = {
        "sndbuf": sndbuf,
        "two_thirds_of_sndbuf": threshold,
        "last_writable": {"wmem_queued": last_writable[0], "SIOCOUTQ": last_writable[1]},
        "select_stopped_writable": {"wmem_queued": stop_queued, "SIOCOUTQ": stop_outq},
        "send_still_accepted_after_select_stopped": extra,
        "buffer_full_EAGAIN": {"wmem_queued": full_queued, "SIOCOUTQ": full_outq},
        "last_unwritable_while_draining": (
            {"wmem_queued": last_blocked[0], "SIOCOUTQ": last_blocked[1]} if last_blocked else None
        ),
        "writable_again": {"wmem_queued": resume[0], "SIOCOUTQ": resume[1]} if resume else None,
        "observations": len(observations),
        "observations_breaking_the_2/3_rule": violations,
        "lecture_simplification_writable_until_full": extra == 0,
    }
    stop_pct = 100 * stop_queued / sndbuf
    explanation = (
        f"SO_SNDBUF {sndbuf:,}; 2/3 of it is {threshold:,} (queue sizes in truesize, "
        "SO_MEMINFO wmem_queued; SIOCOUTQ shows the payload part)",
        f"select() stopped reporting writable at wmem_queued {stop_queued:,} "
        f"({stop_pct:.0f}% of SO_SNDBUF, SIOCOUTQ {stop_outq:,} B), yet send() still took "
        f"{extra:,} B until EAGAIN at wmem_queued {full_queued:,} (SIOCOUTQ {full_outq:,} B)",
        (
            f"draining 1 KiB at a time: still unwritable at wmem_queued "
            f"{(last_blocked or (full_queued, 0))[0]:,}, writable again at {resume[0]:,} "
            f"(SIOCOUTQ {resume[1]:,} B)"
            if resume
            else "select() never reported writable again while draining"
        ),
        f"{len(observations)} observations, {violations} against the rule "
        "'writable iff sndbuf - queued >= queued/2'",
        "so the lecture's 'writable as long as the buffer is not full' is a simplification: "
        + ("it held here" if extra == 0 else "select() says no at ~2/3 full"),
    )
    return LabResult("writable", WRITABLE_CLAIM, holds, evidence, explanation)


# -- small-window ----------------------------------------------------------------------

SMALL_RCVBUF = 8192  # the lecture's 8K; Linux makes it 16384, far below the loopback MSS
# 256 KiB in 1 KiB writes: the first ~100 KiB may pass before the window first shuts;
# the rest gives ~12 stalls, ~2.5-3 s when trapped (measured), well inside 10 s.
TRANSFER = 256 * 1024
STALL_GAP = 0.1  # a pause in the receiver's reads longer than this is a stall
PERSIST_MIN = 0.18  # the persist timer is >= TCP_RTO_MIN (200 ms); slack for timer slop
VARIANT_DEADLINE = 6.0  # give up on one variant after this long (the trap is slow)


def _transfer(rcvbuf: int | None = None, rcvbuf_after_accept: int | None = None) -> dict[str, Any]:
    before = probes.netstat_counters() or {}
    with loopback_pair(rcvbuf=rcvbuf, rcvbuf_after_accept=rcvbuf_after_accept) as pair:
        gaps: list[float] = []
        result: dict[str, Any] = {}

        def receive() -> None:
            pair.receiver.settimeout(VARIANT_DEADLINE)
            cpu0 = time.thread_time()
            got = 0
            last = time.monotonic()
            try:
                while got < TRANSFER:
                    data = pair.receiver.recv(CHUNK)
                    if not data:
                        break
                    now = time.monotonic()
                    gaps.append(now - last)
                    last = now
                    got += len(data)
            except TimeoutError:
                pass
            result["received"] = got
            result["receiver_cpu_s"] = time.thread_time() - cpu0

        reader = threading.Thread(target=receive, name="small-window receiver")
        t0 = time.monotonic()
        reader.start()
        cpu0 = time.thread_time()
        msg = b"s" * CHUNK
        pair.sender.settimeout(VARIANT_DEADLINE)
        try:
            for _ in range(TRANSFER // CHUNK):
                pair.sender.sendall(msg)
        except TimeoutError:
            result["sender_timed_out"] = True
        sender_cpu = time.thread_time() - cpu0
        reader.join()
        elapsed = time.monotonic() - t0
        info: dict[str, int | None] = probes.tcp_info(pair.sender) or {}
        rcvbuf_read = pair.receiver.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    after = probes.netstat_counters() or {}
    stalls = [g for g in gaps if g > STALL_GAP]
    # TCPTimeouts/TCPRcvQDrop would show a retransmission timeout or dropped data instead.
    counters = (
        "TCPToZeroWindowAdv",
        "TCPFromZeroWindowAdv",
        "TCPWinProbe",
        "TCPTimeouts",
        "TCPRcvQDrop",
    )
    return {
        "receiver_rcvbuf": rcvbuf_read,
        "sender_mss": info.get("snd_mss"),
        "bytes": result.get("received", 0),
        "elapsed_s": round(elapsed, 3),
        "stalls": len(stalls),
        "stall_s_min": round(min(stalls), 3) if stalls else None,
        "stall_s_max": round(max(stalls), 3) if stalls else None,
        "stalled_s_total": round(sum(stalls), 3),
        "cpu_s_sender": round(sender_cpu, 4),
        "cpu_s_receiver": round(result.get("receiver_cpu_s", 0.0), 4),
        "counters_delta_this_namespace": {
            k: after.get(k, 0) - before.get(k, 0) for k in counters if before and after
        },
    }


def small_window() -> LabResult:
    baseline = _transfer()
    before_listen = _transfer(rcvbuf=SMALL_RCVBUF)
    after_accept = _transfer(rcvbuf_after_accept=SMALL_RCVBUF)
    trapped = after_accept
    cpu = trapped["cpu_s_sender"] + trapped["cpu_s_receiver"]
    idle = cpu < 0.2 * max(trapped["elapsed_s"], 1e-9)
    holds = (
        trapped["bytes"] == TRANSFER
        and trapped["stalls"] >= 2
        and (trapped["stall_s_min"] or 0) >= PERSIST_MIN
        and idle
        and baseline["stalls"] == 0
        and (trapped["sender_mss"] or 0) > trapped["receiver_rcvbuf"] // 2
    )
    evidence: dict[str, Any] = {
        "transfer_bytes": TRANSFER,
        "default_buffers": baseline,
        "rcvbuf_8192_set_before_listen": before_listen,
        "rcvbuf_8192_set_after_handshake": after_accept,
        "both_sides_idle_during_stalls": idle,
    }
    explanation = (
        f"{TRANSFER // 1024} KiB in 1 KiB writes, receiver reading as fast as it can:",
        f"  default buffers: {baseline['elapsed_s']} s, {baseline['stalls']} stalls "
        f"(sender MSS {baseline['sender_mss']})",
        f"  SO_RCVBUF {SMALL_RCVBUF} set after the handshake (reads {trapped['receiver_rcvbuf']:,}"
        f", sender MSS {trapped['sender_mss']}): {trapped['elapsed_s']} s, "
        f"{trapped['stalls']} stalls of {trapped['stall_s_min']}-{trapped['stall_s_max']} s, "
        f"CPU sender {trapped['cpu_s_sender']} s + receiver {trapped['cpu_s_receiver']} s: "
        "both idle, waiting for the sender's persist timer",
        f"  counters (this namespace): {trapped['counters_delta_this_namespace']}; a probe "
        "carrying new data is not counted as TCPWinProbe",
        f"  SO_RCVBUF {SMALL_RCVBUF} set before listen(): {before_listen['elapsed_s']} s, "
        f"{before_listen['stalls']} stalls: the handshake showed the small window and the "
        f"sender cut its MSS to {before_listen['sender_mss']} (half the largest window seen)",
        "so set SO_RCVBUF before listen()/connect(); set late, a receive buffer smaller "
        "than two MSS shuts the window until a zero-window probe reopens it",
    )
    return LabResult("small-window", SMALL_WINDOW_CLAIM, holds, evidence, explanation)
