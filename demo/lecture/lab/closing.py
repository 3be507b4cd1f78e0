"""What close() and reconnecting do to data still in the buffers.

- sender-close: close() only hands the socket to the kernel. Bytes still in the send
  buffer are sent afterwards, then a FIN; the receiver reads all of them, after the
  sender's close() has returned.
- receiver-close: close() with bytes the application never read cannot deliver them to
  anyone. Linux then sends RST instead of FIN (RFC 2525 section 2.17) and counts
  TcpExt TCPAbortOnClose; the peer's next recv() fails with ECONNRESET and its sends
  with EPIPE. The counter is per network namespace, so the delta can include other
  programs' aborts; it is reported as such.
- reconnect: a new connection is a new socket with new, empty buffers. Nothing queued
  on the old one moves over; the old one stays, with its queue, until the application
  closes it.
"""

from __future__ import annotations

import hashlib
import select
import socket
import time
from typing import Any

from bufdemo import probes
from bufdemo.lecture.lab._core import (
    CHUNK,
    LabResult,
    errno_name,
    fill,
    loopback_pair,
    repeated,
    state_name,
    wait_until,
)

__all__ = ["receiver_close", "reconnect", "sender_close"]

# Small buffers (Linux doubles both): the sender's queue fills with a few dozen KiB,
# so the bytes still queued at close() are a large share of everything sent.
SNDBUF = 16384
RCVBUF = 16384
# Not all one byte, and a prime length: a lost, repeated or misplaced chunk would show.
PATTERN = bytes(range(251))
UNREAD = 4096  # bytes the receiver leaves unread before it closes (picked arbitrarily)
WAIT = 2.0  # seconds to wait for loopback to deliver what is already sent (slack)

SENDER_CLOSE_CLAIM = (
    "data still in the sender's send buffer when it calls close() is delivered in full"
)
RECEIVER_CLOSE_CLAIM = (
    "closing with unread data in the receive buffer loses that data and resets the "
    "connection: the peer gets RST instead of FIN, its next recv()/send() fails with "
    "ECONNRESET/EPIPE, and TCPAbortOnClose rises"
)
RECONNECT_CLAIM = (
    "a new connection starts with empty buffers: nothing queued on the old socket moves "
    "over, and the old socket stays until the application closes it"
)


def sender_close() -> LabResult:
    with loopback_pair(sndbuf=SNDBUF, rcvbuf=RCVBUF) as pair:
        # Fill with the pattern while nobody reads: the receive buffer fills, then the
        # send buffer; what the kernel took is what must arrive.
        accepted = fill(pair.sender, PATTERN)
        sent_hash = hashlib.sha256(repeated(PATTERN, accepted))
        queued = probes.queue_out(pair.sender)
        unsent = probes.queue_out_unsent(pair.sender)
        in_receiver = probes.queue_in(pair.receiver)
        t0 = time.perf_counter()
        pair.sender.close()
        close_s = time.perf_counter() - t0
        got_hash = hashlib.sha256()
        received = 0
        ending = "timeout"
        pair.receiver.settimeout(WAIT)
        try:
            while data := pair.receiver.recv(65536):
                received += len(data)
                got_hash.update(data)
            ending = "FIN (recv returned b'')"
        except OSError as exc:
            ending = errno_name(exc) or "error"
    intact = received == accepted and sent_hash.digest() == got_hash.digest()
    holds = bool(queued) and intact and ending.startswith("FIN")
    evidence: dict[str, Any] = {
        "sndbuf": {"requested": SNDBUF, "granted_doubled": SNDBUF * 2},
        "bytes_accepted_by_send": accepted,
        "sender_queue_at_close_SIOCOUTQ": queued,
        "sender_unsent_at_close_SIOCOUTQNSD": unsent,
        "receiver_unread_at_close_SIOCINQ": in_receiver,
        "close_returned_after_s": round(close_s, 6),
        "bytes_read_after_close_returned": received,
        "content_identical_sha256": sent_hash.digest() == got_hash.digest(),
        "stream_ended_with": ending,
    }
    explanation = (
        f"the sender's send() accepted {accepted:,} B while nobody read; at close() "
        f"{queued:,} B were still in its send queue (SIOCOUTQ) and {in_receiver:,} B in "
        "the receiver's buffer",
        f"close() returned in {close_s * 1e6:.0f} us; the receiver then read "
        f"{received:,} B, content {'identical' if intact else 'NOT identical'} "
        f"(sha256), ending with {ending}",
        "close() does not discard the send buffer: the kernel keeps sending it, then FIN",
    )
    return LabResult("sender-close", SENDER_CLOSE_CLAIM, holds, evidence, explanation)


def _peer_reaction(sock: socket.socket) -> dict[str, Any]:
    """What the side that did not close sees next: a recv(), then a send()."""
    out: dict[str, Any] = {"readable": bool(select.select([sock], [], [], WAIT)[0])}
    try:
        data = sock.recv(65536)
        out["recv"] = "b'' (FIN: orderly end of stream)" if not data else f"{len(data)} bytes"
    except OSError as exc:
        out["recv"] = errno_name(exc)
    info = probes.tcp_info(sock)
    out["tcp_state_after_recv"] = state_name(info["state"] if info else None)
    try:
        sock.send(b"x", socket.MSG_NOSIGNAL)
        out["send"] = "accepted"
    except OSError as exc:
        out["send"] = errno_name(exc)
    return out


def receiver_close() -> LabResult:
    counter = "TCPAbortOnClose"
    before = probes.netstat_counters() or {}
    with loopback_pair(sndbuf=SNDBUF, rcvbuf=RCVBUF) as pair:
        pair.sender.sendall(b"u" * UNREAD)
        arrived = wait_until(lambda: probes.queue_in(pair.receiver) == UNREAD, WAIT)
        unread = probes.queue_in(pair.receiver)
        pair.receiver.close()  # with UNREAD bytes never read
        reset = _peer_reaction(pair.sender)
    after = probes.netstat_counters() or {}
    # Contrast: the same, but the receiver reads everything before it closes.
    with loopback_pair(sndbuf=SNDBUF, rcvbuf=RCVBUF) as pair:
        pair.sender.sendall(b"u" * UNREAD)
        read = 0
        while read < UNREAD:
            read += len(pair.receiver.recv(65536))
        pair.receiver.close()
        orderly = _peer_reaction(pair.sender)
    delta = after.get(counter, 0) - before.get(counter, 0) if before and after else None
    holds = (
        arrived
        and reset["recv"] == "ECONNRESET"
        and reset["send"] in ("EPIPE", "ECONNRESET")
        and reset["tcp_state_after_recv"] == "CLOSE"
        and orderly["recv"].startswith("b''")
        and orderly["tcp_state_after_recv"] == "CLOSE_WAIT"
        and (delta is None or delta >= 1)
    )
    evidence: dict[str, Any] = {
        "unread_bytes_at_close_SIOCINQ": unread,
        "peer_after_close_with_unread_data": reset,
        "peer_after_close_with_everything_read": orderly,
        f"{counter}_delta_this_namespace": delta,
    }
    explanation = (
        f"the receiver closed with {unread:,} B unread (SIOCINQ): those bytes are gone, "
        f"no application ever reads them",
        f"the sender's next recv() gave {reset['recv']}, its next send() {reset['send']}, "
        f"its TCP state {reset['tcp_state_after_recv']}: the kernel sent RST, not FIN",
        f"contrast, receiver read everything first: recv() gave {orderly['recv']}, state "
        f"{orderly['tcp_state_after_recv']}",
        f"{counter} rose by {delta} in this network namespace (a namespace-wide counter: "
        "other programs' aborts would count too)"
        if delta is not None
        else f"{counter} unavailable: no /proc/net/netstat",
    )
    return LabResult("receiver-close", RECEIVER_CLOSE_CLAIM, holds, evidence, explanation)


def reconnect() -> LabResult:
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        listener.bind(("127.0.0.1", 0))
        listener.listen(2)
        addr = listener.getsockname()
        old = socket.socket()
        new = socket.socket()
        conns: list[socket.socket] = []
        try:
            old.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
            old.connect(addr)
            conns.append(listener.accept()[0])
            # The receiver stops reading: the old connection's queue fills and stays.
            stuck = fill(old, b"o" * CHUNK)
            old_queue = probes.queue_out(old)
            # "Reconnect": a new socket, a new connection to the same server.
            new.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
            new.connect(addr)
            new_conn = listener.accept()[0]
            conns.append(new_conn)
            new_queue_at_start = probes.queue_out(new)
            new_inq_at_start = probes.queue_in(new_conn)
            marker = b"first message on the new connection\n"
            new.sendall(marker)
            new_conn.settimeout(WAIT)
            got = b""
            while len(got) < len(marker):
                chunk = new_conn.recv(65536)
                if not chunk:
                    break
                got += chunk
            time.sleep(0.05)  # anything more that would arrive on loopback has by now
            extra = probes.queue_in(new_conn)
            old_queue_after = probes.queue_out(old)
            info = probes.tcp_info(old)
            old_state = state_name(info["state"] if info else None)
            old_fd = old.fileno()
            old.close()  # the application's job: nothing else would ever close it
            old_fd_after_close = old.fileno()
        finally:
            old.close()
            new.close()
            for conn in conns:
                conn.close()
    holds = (
        new_queue_at_start == 0
        and new_inq_at_start == 0
        and got == marker
        and extra == 0
        and bool(old_queue)
        and old_queue_after == old_queue
        and old_state == "ESTABLISHED"
    )
    evidence: dict[str, Any] = {
        "old_socket_bytes_accepted": stuck,
        "old_socket_queue_SIOCOUTQ": old_queue,
        "new_socket_queue_at_start_SIOCOUTQ": new_queue_at_start,
        "new_connection_receiver_SIOCINQ_at_start": new_inq_at_start,
        "new_connection_received": got.decode(errors="replace").strip(),
        "new_connection_extra_bytes": extra,
        "old_socket_queue_after_reconnect": old_queue_after,
        "old_socket_state_after_reconnect": old_state,
        "old_socket_fd_before_close": old_fd,
        "old_socket_fd_after_application_close": old_fd_after_close,
    }
    explanation = (
        f"the old socket had {old_queue:,} B stuck in its send queue (receiver not reading)",
        f"the new connection started with send queue {new_queue_at_start} B and receive "
        f"queue {new_inq_at_start} B; the server read exactly the new message "
        f"({len(got)} B) and {extra} B more",
        f"the old socket still held {old_queue_after:,} B and was {old_state} until the "
        f"application closed it (fd {old_fd} -> {old_fd_after_close})",
    )
    return LabResult("reconnect", RECONNECT_CLAIM, holds, evidence, explanation)
