"""The receiver: a slow consumer with an exact, honest pace.

Service model (``recv_delay`` D): each message costs exactly D seconds of work.
Message i's service starts at ``max(target_end[i-1], arrival[i])`` and its target end
is ``start + D`` (the rule is :class:`~bufdemo.experiment.pacing.Pacer`'s). When the
frame was already waiting in the kernel, its arrival is not later than the previous
target end, so the start is that target: sleep overshoot is absorbed, not carried
forward, and the achieved mean service time is D. When the receiver had to wait for the
frame, the start is the moment it arrived: a receiver that was idle does not "catch up"
with a burst.

The receiver reads exactly one frame at a time (the decoder says how many bytes the
next frame still needs), so every byte not yet consumed stays in the kernel's receive
queue, where SIOCINQ and the advertised window can see it.

What reaches the loop: only the connection that presented a valid hello (and the run's
token, if one is set) within HELLO_TIMEOUT; strays are closed and counted. Then the
listener is closed. The consumed log is checkpointed to ``consumed.csv`` every 0.5 s by
the sampler thread, so even a SIGKILLed receiver leaves what it consumed.
"""

from __future__ import annotations

import hmac
import socket
import time
from collections.abc import Callable, MutableSequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bufdemo import probes, runformat
from bufdemo.errors import BufdemoError, PeerError, PeerTimeout, ProtocolError
from bufdemo.experiment.config import MAX_MESSAGES, MAX_SIZE, RunConfig
from bufdemo.experiment.pacing import WAITING, Pacer
from bufdemo.experiment.recorder import (
    PROGRESS_DONE,
    PROGRESS_INTACT,
    ConsumedLog,
    Sampler,
    TableCheckpoint,
)
from bufdemo.experiment.wire import (
    CLOCK_SIZE,
    HEADER_SIZE,
    HELLO_SIZE,
    KIND_CLOCK,
    KIND_DATA,
    ClockReading,
    Decoder,
    Hello,
    Message,
    decode_clock,
    decode_hello,
    encode_clock,
)
from bufdemo.net import Address, timeval
from bufdemo.runformat import ReceiverRecord

__all__ = ["ReceiverResult", "listen", "receive_loop", "run_receiver"]

# How long a new connection may take to present its hello frame before it is dropped:
# our sender sends it right after connect(); a port scanner or a stray client does not.
HELLO_TIMEOUT = 2.0
# Sleep until this close to a target, then spin: time.sleep overshoots ~80 us here.
SPIN_NS = 100_000
MAX_REJECTED = 100  # stray connections remembered in receiver.json (the count is exact)
# Rows preallocated from the hello's announced count; beyond this the log grows as
# messages actually arrive, so a hello cannot make the receiver allocate gigabytes.
PREALLOC_LIMIT = 1_000_000


@dataclass
class ReceiverResult:
    address: str = ""
    peer: str = ""
    t_connected_ns: int | None = None
    t_done_ns: int | None = None
    messages_expected: int | None = None
    messages: int = 0
    intact: int = 0
    corrupt: int = 0
    out_of_order: int = 0
    truncated_bytes: int = 0
    rejected: int = 0
    rejected_peers: list[str] = field(default_factory=list)
    buffers: dict[str, Any] = field(default_factory=dict)
    complete: bool = False
    error: str | None = None
    cookie: int | None = None  # SO_COOKIE of the connected socket (the trace's id)
    # The clock frames this receiver answered ({"seq", "t1", "t2", "t3"}), and the test
    # hook's shift of its clock (bufdemo.experiment.clocksync), 0 in normal use.
    clock: list[dict[str, int]] = field(default_factory=list)
    clock_shift_ns: int = 0

    def as_dict(self) -> ReceiverRecord:
        """The receiver's record in meta.json (and receiver.json)."""
        return {
            "address": self.address,
            "peer": self.peer,
            "t_connected_ns": self.t_connected_ns,
            "t_done_ns": self.t_done_ns,
            "messages_expected": self.messages_expected,
            "messages": self.messages,
            "intact": self.intact,
            "corrupt": self.corrupt,
            "out_of_order": self.out_of_order,
            "truncated_bytes": self.truncated_bytes,
            "rejected": self.rejected,
            "rejected_peers": list(self.rejected_peers),
            "buffers": self.buffers,
            "complete": self.complete,
            "error": self.error,
            "cookie": self.cookie,
            "clock": list(self.clock),
        }


def listen(cfg: RunConfig, address: Address) -> socket.socket:
    """A listening socket; SO_RCVBUF is set before listen() so the window scale fits it."""
    try:
        infos = socket.getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise BufdemoError(
            f"cannot resolve listen address {address.host!r}: {exc.strerror}"
        ) from exc
    family, socktype, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, socktype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if cfg.rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, cfg.rcvbuf)
        sock.bind(sockaddr)
        sock.listen(8)
    except OSError as exc:
        sock.close()
        raise BufdemoError(f"cannot listen on {address}: {exc.strerror or exc}") from exc
    return sock


def _read_hello(conn: socket.socket, max_size: int) -> Hello:
    """Read and check the hello; the whole frame must arrive within HELLO_TIMEOUT."""
    decoder = Decoder(max_length=HELLO_SIZE)
    deadline = time.monotonic() + HELLO_TIMEOUT
    while (msg := decoder.next_message()) is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:  # a peer trickling bytes must not hold the door open
            raise TimeoutError("no complete hello in time")
        conn.settimeout(remaining)
        data = conn.recv(decoder.bytes_needed())
        if not data:
            raise ProtocolError("connection closed before a hello frame")
        decoder.receive_data(data)
    hello = decode_hello(msg)
    if not HEADER_SIZE <= hello.size <= max_size:
        raise ProtocolError(f"hello announces frames of {hello.size} bytes (max {max_size})")
    if not 1 <= hello.messages <= MAX_MESSAGES:
        raise ProtocolError(f"hello announces {hello.messages} messages (max {MAX_MESSAGES})")
    return hello


def accept_sender(
    lsock: socket.socket,
    token: bytes | None,
    result: ReceiverResult,
    *,
    max_size: int = MAX_SIZE,
    timeout: float | None = None,
) -> tuple[socket.socket, Hello]:
    """Accept connections until one presents a valid hello (and ``token``, if given).

    Anything else (random bytes, a wrong token, silence) is closed and counted in
    ``result.rejected``; it never reaches the experiment.
    """
    lsock.settimeout(timeout)
    while True:
        try:
            conn, peer = lsock.accept()
        except TimeoutError as exc:
            raise PeerTimeout(f"no sender connected within {timeout} s") from exc
        try:
            hello = _read_hello(conn, max_size)
            if token is not None and not hmac.compare_digest(hello.token, token):
                raise ProtocolError("wrong run token")
        except (ProtocolError, OSError) as exc:
            conn.close()
            result.rejected += 1
            if len(result.rejected_peers) < MAX_REJECTED:
                reason = "silent" if isinstance(exc, TimeoutError) else str(exc)
                result.rejected_peers.append(f"{peer[0]}:{peer[1]}: {reason}")
            continue
        conn.settimeout(None)
        return conn, hello


def receive_loop(
    sock: socket.socket,
    hello: Hello,
    recv_delay: float,
    log: ConsumedLog,
    result: ReceiverResult,
    timeout: float | None = None,
) -> None:
    """Consume frames one at a time at the configured pace until the sender's FIN.

    ``timeout`` only names the SO_RCVTIMEO the caller set, for the error message.
    The service model is a :class:`Pacer`'s: the loop tells it when each frame was ready
    and sleeps until the target end it returns.
    """
    plen = hello.size - HEADER_SIZE
    decoder = Decoder(max_length=max(plen, CLOCK_SIZE))
    delay_ns = round(recv_delay * 1e9)
    now = time.perf_counter_ns
    sleep = time.sleep
    recv = sock.recv
    dontwait = socket.MSG_DONTWAIT
    expected = 0
    # Ready to serve from now on: a first frame already waiting starts here.
    pacer = Pacer(delay_ns, origin_ns=now())
    pace = pacer.pace
    while True:
        waited = False
        while (msg := decoder.next_message()) is None:
            need = decoder.bytes_needed()
            try:
                data = recv(need, dontwait)
            except BlockingIOError:
                waited = True
                try:
                    data = recv(need)
                except (TimeoutError, BlockingIOError) as exc:  # SO_RCVTIMEO expired
                    raise PeerTimeout(
                        f"sender stuck: no data for {timeout} s after {log.rows} of "
                        f"{hello.messages} messages; the sender is not sending"
                    ) from exc
            if not data:
                result.truncated_bytes = decoder.buffered
                return
            decoder.receive_data(data)
        t_read = now()
        if msg.kind == KIND_CLOCK:  # answered at once, outside the service model
            _answer_clock(sock, msg, t_read, result)
            continue
        if msg.kind != KIND_DATA:
            raise ProtocolError(f"unexpected frame kind {msg.kind} after the hello")
        # A frame we had to wait for arrived when it was read; one that was already in
        # the kernel was there before the previous target end (WAITING).
        target = pace(t_read if waited else WAITING)
        start = pacer.start_ns
        if delay_ns:
            remaining = target - now()
            if remaining > SPIN_NS:
                sleep((remaining - SPIN_NS) / 1e9)
            while now() < target:
                pass
        t_end = now()
        in_order = msg.seq == expected
        intact = msg.intact and in_order and len(msg.payload) == plen
        expected = msg.seq + 1
        i = log.rows
        if i == log.capacity:
            log.grow()
        log.seq[i] = msg.seq
        log.t_read_ns[i] = t_read
        log.t_start_ns[i] = start
        log.t_end_ns[i] = t_end
        log.intact[i] = intact
        log.rows = i + 1
        result.messages = i + 1
        result.t_done_ns = t_end
        if intact:
            result.intact += 1
        else:
            result.corrupt += not msg.intact
            result.out_of_order += not in_order


def _answer_clock(sock: socket.socket, msg: Message, t_read: int, result: ReceiverResult) -> None:
    """Answer a clock frame with t2 (read) and t3 (now), on this side's clock (+ the
    test hook's shift, bufdemo.experiment.clocksync); keep the three readings."""
    shift = result.clock_shift_ns
    asked = decode_clock(msg)
    reading = ClockReading(asked.seq, asked.t1, t_read + shift, time.perf_counter_ns() + shift)
    sock.sendall(encode_clock(reading))
    result.clock.append(reading._asdict())


_ACCEPT_TIMEOUT_FROM_CONFIG = -1.0  # sentinel: "use cfg.timeout" (None means no limit)


def run_receiver(
    cfg: RunConfig,
    address: Address,
    run_dir: Path | Callable[[], Path],
    *,
    token: bytes | None,
    on_listening: Callable[[Address], None] = lambda a: None,
    progress: MutableSequence[int] | None = None,
    max_size: int = MAX_SIZE,
    accept_timeout: float | None = _ACCEPT_TIMEOUT_FROM_CONFIG,
    result: ReceiverResult | None = None,
) -> ReceiverResult:
    """Listen, accept our sender, consume until its FIN, write the receiver's tables.

    ``run_dir`` may be a callable that creates it: it is then called only once a sender
    has been accepted, so a receiver that fails before (port in use, no sender within
    ``accept_timeout``, Ctrl-C while waiting) leaves no run directory behind.
    ``accept_timeout`` defaults to ``cfg.timeout``; None waits for ever. Pass ``result``
    to keep the record when this raises: it is filled as the run goes.
    """
    result = result if result is not None else ReceiverResult()
    if accept_timeout == _ACCEPT_TIMEOUT_FROM_CONFIG:
        accept_timeout = cfg.timeout
    lsock = listen(cfg, address)
    try:
        host, port = lsock.getsockname()[:2]
        result.address = str(Address(host, port))
        on_listening(Address(host, port))
        conn, hello = accept_sender(lsock, token, result, max_size=max_size, timeout=accept_timeout)
    finally:
        lsock.close()  # one sender per run: later connections are refused by the kernel
    try:
        result.t_connected_ns = time.perf_counter_ns()
        peer = conn.getpeername()
        result.peer = f"{peer[0]}:{peer[1]}"
        result.cookie = probes.so_cookie(conn)
        result.messages_expected = hello.messages
        if cfg.timeout is not None:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval(cfg.timeout))
        if callable(run_dir):
            run_dir = run_dir()
    except BaseException:
        conn.close()
        raise
    log = ConsumedLog(min(hello.messages, PREALLOC_LIMIT))
    consumed_path = run_dir / runformat.CONSUMED.file
    samples_path = run_dir / runformat.RECEIVER_SAMPLES.file
    sampler = Sampler(
        conn,
        cfg.sample_interval,
        count=lambda: log.rows,
        progress=progress,
        counters={PROGRESS_INTACT: lambda: result.intact},
        checkpoints=[TableCheckpoint(consumed_path, log.columns, lambda: log.rows)],
        checkpoint_samples=samples_path,
    )
    start_sizes = probes.buffer_sizes(conn)
    try:
        sampler.start()
        try:
            receive_loop(conn, hello, cfg.recv_delay, log, result, timeout=cfg.timeout)
        except KeyboardInterrupt:
            result.error = f"interrupted after {log.rows} of {hello.messages} messages"
            raise
        except ConnectionResetError as exc:
            result.error = (
                f"the sender reset the connection after {log.rows} of {hello.messages} "
                f"messages; message {log.rows} never arrived whole"
            )
            raise PeerError(result.error) from exc
        except BufdemoError as exc:
            result.error = str(exc)
            raise
        finally:
            sampler.stop()
            result.buffers = {
                "requested": {"sndbuf": None, "rcvbuf": cfg.rcvbuf},
                "granted_start": start_sizes.as_dict(),
                "granted_end": probes.buffer_sizes(conn).as_dict(),
            }
        if result.messages < hello.messages:
            cut = (
                f"message {result.messages} arrived only in part "
                f"({result.truncated_bytes} of {hello.size} bytes)"
                if result.truncated_bytes
                else f"message {result.messages} never arrived"
            )
            result.error = (
                f"truncated stream: the sender closed the connection after "
                f"{result.messages} of {hello.messages} messages; {cut}"
            )
        else:
            result.complete = result.messages == hello.messages
    finally:
        if progress is not None:
            progress[PROGRESS_DONE] = 1
        conn.close()
        log.write(consumed_path)
        sampler.write(samples_path)
    return result
