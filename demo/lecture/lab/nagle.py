"""Many small writes: TCP sends segments and delivers bytes, not messages.

The sender makes WRITES writes of one 10-byte line each, with Nagle's algorithm on and
with TCP_NODELAY. It counts the data segments the kernel sent (tcp_info data_segs_out);
a receiver in another process (so it runs at its own pace, not the sender's GIL) counts
its recv() calls and the bytes each returned. Nagle holds small segments back while data
is unacknowledged; with TCP_NODELAY each write may leave as its own segment (autocorking
can still merge writes made while the previous segment has not left the host; measured
here: anywhere from a few dozen segments to one per write). Either way the receiver's
recv() calls return whatever has arrived: the number and sizes of reads do not match
the writes. Counting newlines, the receiver recovers every message: a byte stream needs
framing, which is why bufdemo's wire format frames every message.
"""

from __future__ import annotations

import json
import socket
import subprocess
from typing import Any

from bufdemo import probes
from bufdemo.lecture.lab._core import LabResult, peer_command, read_line_within, wait_until

__all__ = ["nagle"]

WRITES = 2000  # back-to-back writes: far more than one RTT's worth (picked arbitrarily)
MESSAGE_SIZE = 10  # b"msg 00001\n": smaller than any segment, so merging is possible
PEER_TIMEOUT = 5.0  # seconds for the helper to start or report (slack for a loaded host)

NAGLE_CLAIM = (
    "many small writes: with Nagle the kernel sends fewer segments than writes, and with "
    "or without TCP_NODELAY the receiver's recv() calls do not match the writes: message "
    "boundaries are not preserved, so messages must be framed"
)


def _one_run(port: int, peer: subprocess.Popen[bytes], nodelay: bool) -> dict[str, Any]:
    with socket.create_connection(("127.0.0.1", port), timeout=PEER_TIMEOUT) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(nodelay))
        before: dict[str, int | None] = probes.tcp_info(s) or {}
        for i in range(WRITES):
            s.sendall(b"msg %05d\n" % i)
        # Count the segments once everything has been sent and acknowledged.
        wait_until(lambda: probes.queue_out(s) == 0, PEER_TIMEOUT)
        after: dict[str, int | None] = probes.tcp_info(s) or {}
        s.shutdown(socket.SHUT_WR)
        report: dict[str, Any] = json.loads(read_line_within(peer, PEER_TIMEOUT))
    segs = None
    if before.get("data_segs_out") is not None and after.get("data_segs_out") is not None:
        segs = int(after["data_segs_out"] or 0) - int(before["data_segs_out"] or 0)
    return {
        "writes": WRITES,
        "bytes_written": WRITES * MESSAGE_SIZE,
        "data_segments_sent": segs,
        "recv_calls": report["recv_calls"],
        "bytes_received": report["bytes"],
        "first_recv_sizes": report["first_sizes"],
        "messages_recovered_by_newline_framing": report["frames"],
    }


def nagle() -> LabResult:
    peer = subprocess.Popen(
        peer_command("--mode", "count"),
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        bufsize=0,
    )
    try:
        port = int(read_line_within(peer, PEER_TIMEOUT))
        with_nagle = _one_run(port, peer, nodelay=False)
        no_delay = _one_run(port, peer, nodelay=True)
    finally:
        peer.kill()
        peer.wait()
        if peer.stdout is not None:
            peer.stdout.close()

    def boundaries_lost(run: dict[str, Any]) -> bool:
        return run["recv_calls"] != WRITES or any(
            size != MESSAGE_SIZE for size in run["first_recv_sizes"]
        )

    holds = (
        with_nagle["data_segments_sent"] is not None
        and with_nagle["data_segments_sent"] < WRITES
        and boundaries_lost(with_nagle)
        and boundaries_lost(no_delay)
        and with_nagle["messages_recovered_by_newline_framing"] == WRITES
        and no_delay["messages_recovered_by_newline_framing"] == WRITES
        and with_nagle["bytes_received"] == no_delay["bytes_received"] == WRITES * MESSAGE_SIZE
    )
    evidence: dict[str, Any] = {"nagle_on": with_nagle, "tcp_nodelay": no_delay}
    autocork = None
    try:
        with open("/proc/sys/net/ipv4/tcp_autocorking") as f:
            autocork = int(f.read())
    except (OSError, ValueError):
        pass
    evidence["tcp_autocorking_sysctl"] = autocork

    def line(label: str, run: dict[str, Any]) -> str:
        return (
            f"{label}: {WRITES} writes -> {run['data_segments_sent']} segments, "
            f"{run['recv_calls']} recv() calls (first sizes {run['first_recv_sizes'][:6]}), "
            f"{run['messages_recovered_by_newline_framing']} messages recovered by framing"
        )

    explanation = (
        line("Nagle on   ", with_nagle),
        line("TCP_NODELAY", no_delay),
        "Nagle holds a small segment while earlier data is unacknowledged; TCP_NODELAY "
        "sends at once, so its segment count is up to one per write (tcp_autocorking "
        f"= {autocork} can still merge writes queued behind a segment not yet sent)",
        "the receiver cannot tell where one write ended: framing (here, newlines) is the "
        "only way to get the messages back",
    )
    return LabResult("nagle", NAGLE_CLAIM, holds, evidence, explanation)
