"""A receiver that vanishes without FIN, against one that is merely stopped.

Dead peer: the receiver runs in a network namespace of its own, reached over a veth
pair; after the connection is up, its side of the link is taken down. Nothing answers
any more, not even the receiver's kernel: the sender keeps writing until its send buffer
is full (every byte stays unacknowledged, SIOCOUTQ = everything accepted), then blocks
while the kernel retransmits. With TCP_USER_TIMEOUT set, the blocked send() fails with
ETIMEDOUT once data has gone unacknowledged that long.

Stopped peer (SIGSTOP): the process is frozen but its kernel is alive. It acknowledges
everything that fits in its receive buffer, then advertises a zero window and answers
the sender's zero-window probes: the sender's data is *acknowledged* up to the
receiver's buffer and the rest waits *unsent* (snd_wnd = 0), and the connection stays
ESTABLISHED. (Since Linux 6.x, tcp_probe_timer also aborts such a stall once
TCP_USER_TIMEOUT has passed since the first probe; that is measured too.)

The namespace, the veth pair and the helper processes are removed afterwards, also when
the experiment fails. Without root or ``ip netns``, only the stopped-peer half runs, and
the result says why.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from typing import Any

from bufdemo import probes
from bufdemo.lecture.lab._core import (
    LabResult,
    errno_name,
    fill,
    peer_command,
    read_line_within,
    state_name,
    wait_until,
)

__all__ = ["dead_peer"]

USER_TIMEOUT_MS = 1000  # TCP_USER_TIMEOUT: short enough to watch, >> loopback RTO_MIN
SNDBUF = 16384  # doubled to 32 KiB: the buffer fills with a few dozen 1 KiB writes
PEER_RCVBUF = 16384  # the stopped peer's kernel buffers this much (doubled) for it
STOPPED_WAIT = 1.5  # s a blocked send waits on the stopped peer: > USER_TIMEOUT_MS
WARMUP = 16 * 1024  # bytes sent and acknowledged before the peer goes away
HELPER_TIMEOUT = 5.0  # s for a helper process to start (slack for a loaded host)
# After ETIMEDOUT the sender may learn of it at the next retransmission timer, so allow
# the failure up to this long after the user timeout (RTO backoff on a ~1 ms path).
TIMEOUT_SLACK = 1.5

DEAD_PEER_CLAIM = (
    "a receiver that vanishes without FIN: the sender keeps writing until its buffer is "
    "full, then blocks; with TCP_USER_TIMEOUT it fails after that timeout; a SIGSTOPped "
    "receiver is different: its kernel still ACKs"
)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def _netns_refusal() -> str | None:
    """Why namespaces cannot be used here, or None if they can."""
    if os.geteuid() != 0:
        return "needs root (ip netns add)"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    return None


@contextmanager
def _namespace() -> Iterator[tuple[str, str, str, str]]:
    """A namespace with a veth link to this one; yields (ns, peer_if, host_ip, peer_ip)."""
    pid = os.getpid()
    ns = f"bufdemo-lab-{pid}"
    host_if, peer_if = f"bdl{pid}h", f"bdl{pid}p"  # interface names: at most 15 chars
    # A /30 per process id from 10.213.0.0/16 (picked arbitrarily, rarely used).
    block = (pid % 16384) * 4
    host_ip = f"10.213.{block // 256}.{block % 256 + 1}"
    peer_ip = f"10.213.{block // 256}.{block % 256 + 2}"
    try:
        _ip("netns", "add", ns)
        _ip("link", "add", host_if, "type", "veth", "peer", "name", peer_if, "netns", ns)
        _ip("addr", "add", f"{host_ip}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("-n", ns, "addr", "add", f"{peer_ip}/30", "dev", peer_if)
        _ip("-n", ns, "link", "set", peer_if, "up")
        yield ns, peer_if, host_ip, peer_ip
    finally:
        with suppress(subprocess.SubprocessError, OSError):
            _ip("link", "del", host_if)
        with suppress(subprocess.SubprocessError, OSError):
            _ip("netns", "del", ns)


@contextmanager
def _helper(argv: list[str]) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, bufsize=0)
    try:
        yield proc, int(read_line_within(proc, HELPER_TIMEOUT))
    finally:
        with suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)  # a stopped process cannot die of SIGKILL late
            proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _queues(sock: socket.socket) -> dict[str, Any]:
    info: dict[str, int | None] = probes.tcp_info(sock) or {}
    return {
        "SIOCOUTQ": probes.queue_out(sock),
        "SIOCOUTQNSD_unsent": probes.queue_out_unsent(sock),
        "unacked_packets": info.get("unacked"),
        "snd_wnd": info.get("snd_wnd"),
        "backoff": info.get("backoff"),
        "tcp_state": state_name(info.get("state")),
    }


def _connect(host: str, port: int, user_timeout_ms: int | None) -> socket.socket:
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
        if user_timeout_ms is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, user_timeout_ms)
        sock.settimeout(HELPER_TIMEOUT)
        sock.connect((host, port))
        sock.sendall(b"w" * WARMUP)
        if not wait_until(lambda: probes.queue_out(sock) == 0, HELPER_TIMEOUT):
            raise RuntimeError("the peer did not acknowledge the warm-up data")
    except BaseException:
        sock.close()
        raise
    return sock


def _blocked_send(sock: socket.socket, wait: float) -> tuple[str, float]:
    """A blocking send on a full socket: ('ETIMEDOUT', s) if the kernel gave up,
    ('still blocked', wait) if it was still waiting after ``wait`` seconds."""
    sock.settimeout(wait)
    t0 = time.monotonic()
    try:
        sock.send(b"b" * 1024)
    except OSError as exc:
        elapsed = time.monotonic() - t0
        if exc.errno is None:  # Python's own socket timeout, not the kernel's
            return "still blocked", elapsed
        return errno_name(exc) or "error", elapsed
    return "sent", time.monotonic() - t0


def _dead(refusal: list[str]) -> dict[str, Any] | None:
    with ExitStack() as stack:
        try:
            ns, peer_if, _host_ip, peer_ip = stack.enter_context(_namespace())
        except (subprocess.SubprocessError, OSError) as exc:
            stderr = getattr(exc, "stderr", b"") or b""
            refusal.append(f"ip netns failed: {stderr.decode(errors='replace').strip() or exc}")
            return None
        argv = ["ip", "netns", "exec", ns, *peer_command("--bind", peer_ip, "--mode", "sink")]
        _, port = stack.enter_context(_helper(argv))
        sock = stack.enter_context(_connect(peer_ip, port, USER_TIMEOUT_MS))
        _ip("-n", ns, "link", "set", peer_if, "down")
        t0 = time.monotonic()
        accepted = fill(sock)
        at_full = _queues(sock)
        outcome, _ = _blocked_send(sock, USER_TIMEOUT_MS / 1000 * 3 + TIMEOUT_SLACK)
        failed_after = time.monotonic() - t0
        after = _queues(sock)
    return {
        "user_timeout_ms": USER_TIMEOUT_MS,
        "bytes_accepted_after_link_down": accepted,
        "at_full": at_full,
        "blocked_send_outcome": outcome,
        "failed_after_s_since_first_unacked_write": round(failed_after, 3),
        "after_failure": after,
    }


def _stopped(user_timeout_ms: int | None, wait: float) -> dict[str, Any]:
    argv = peer_command("--bind", "127.0.0.1", "--mode", "sink", "--rcvbuf", str(PEER_RCVBUF))
    with _helper(argv) as (proc, port), _connect("127.0.0.1", port, user_timeout_ms) as sock:
        proc.send_signal(signal.SIGSTOP)
        t0 = time.monotonic()
        accepted = fill(sock)
        at_full = _queues(sock)
        outcome, _ = _blocked_send(sock, wait)
        elapsed = time.monotonic() - t0
        after = _queues(sock)
    queued = at_full["SIOCOUTQ"] or 0
    return {
        "user_timeout_ms": user_timeout_ms,
        "bytes_accepted_after_SIGSTOP": accepted,
        "acked_by_stopped_peers_kernel": accepted - queued,
        "at_full": at_full,
        "blocked_send_outcome": outcome,
        "outcome_after_s": round(elapsed, 3),
        "after_wait": after,
    }


def dead_peer() -> LabResult:
    refusal: list[str] = []
    reason = _netns_refusal()
    if reason:
        refusal.append(reason)
    dead = None if reason else _dead(refusal)
    stopped = _stopped(None, STOPPED_WAIT)
    stopped_ut = _stopped(USER_TIMEOUT_MS, STOPPED_WAIT * 2)
    limit_s = USER_TIMEOUT_MS / 1000
    dead_ok = dead is not None and (
        dead["bytes_accepted_after_link_down"] > 0
        and dead["at_full"]["SIOCOUTQ"] == dead["bytes_accepted_after_link_down"]
        and (dead["at_full"]["unacked_packets"] or 0) > 0
        and dead["blocked_send_outcome"] == "ETIMEDOUT"
        and 0.9 * limit_s
        <= dead["failed_after_s_since_first_unacked_write"]
        <= limit_s + TIMEOUT_SLACK
    )
    stopped_ok = (
        stopped["acked_by_stopped_peers_kernel"] > 0
        and stopped["at_full"]["snd_wnd"] == 0
        and stopped["at_full"]["SIOCOUTQNSD_unsent"] == stopped["at_full"]["SIOCOUTQ"]
        and stopped["blocked_send_outcome"] == "still blocked"
        and stopped["after_wait"]["tcp_state"] == "ESTABLISHED"
    )
    holds = stopped_ok and (dead_ok if dead is not None else True)
    evidence: dict[str, Any] = {
        "netns": "used" if dead is not None else f"not permitted: {'; '.join(refusal)}",
        "dead_peer_link_down": dead,
        "sigstopped_peer": stopped,
        "sigstopped_peer_with_user_timeout": stopped_ut,
    }
    lines: list[str] = []
    if dead is not None:
        lines += [
            f"dead peer (own namespace, link down): the sender still wrote "
            f"{dead['bytes_accepted_after_link_down']:,} B, then blocked; all of it "
            f"unacknowledged (SIOCOUTQ {dead['at_full']['SIOCOUTQ']:,}, "
            f"{dead['at_full']['unacked_packets']} packets in flight, snd_wnd "
            f"{dead['at_full']['snd_wnd']})",
            f"with TCP_USER_TIMEOUT {USER_TIMEOUT_MS} ms the blocked send() failed with "
            f"{dead['blocked_send_outcome']} {dead['failed_after_s_since_first_unacked_write']}"
            " s after the first unacknowledged write",
        ]
    else:
        lines.append(
            f"dead-peer half skipped: network namespaces not permitted "
            f"({'; '.join(refusal)}); only the SIGSTOP contrast ran"
        )
    lines += [
        f"SIGSTOPped peer: its kernel acknowledged {stopped['acked_by_stopped_peers_kernel']:,}"
        f" B into its buffer; {stopped['at_full']['SIOCOUTQ']:,} B wait unsent for a "
        f"window (snd_wnd {stopped['at_full']['snd_wnd']}); after {STOPPED_WAIT} s the "
        f"send was {stopped['blocked_send_outcome']}, connection "
        f"{stopped['after_wait']['tcp_state']}",
        f"SIGSTOPped peer with TCP_USER_TIMEOUT {USER_TIMEOUT_MS} ms: "
        f"{stopped_ut['blocked_send_outcome']} after {stopped_ut['outcome_after_s']} s "
        "(this kernel also bounds zero-window probing by the user timeout)",
    ]
    return LabResult("dead-peer", DEAD_PEER_CLAIM, holds, evidence, tuple(lines))
