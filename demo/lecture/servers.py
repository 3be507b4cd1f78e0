"""Echo servers in the lecture's five shapes, sharing one echo core.

The lecture builds the same echo server several ways; what differs is only *how the
server waits for work*:

- ``fork``: a loop that accepts, then forks a child per client. The parent closes its
  copy of the client socket, the child its copy of the listener, and the parent reaps
  every child that exits so none stays a zombie.
- ``thread``: a loop that accepts, then starts a thread per client.
- ``select``: one select() call watches the listening socket and every client. As in the
  lecture it keeps the set of sockets to read and the highest descriptor in it. select()
  can only watch descriptors below FD_SETSIZE (1024): a client whose descriptor is 1024
  or more is refused with a message, and the others keep being served.
- ``poll`` / ``epoll``: the same loop on poll() and epoll, which have no such limit.

What happens to the bytes is the same in all five and lives in :class:`EchoSession`,
which does no I/O: bytes in, bytes to send out. The three event loops add the rule the
lecture's *writable* event exists for: a reply that cannot be written at once stays in
the session and the loop waits for the socket to become writable, instead of blocking in
send() while every other client waits. While a client has more than ``HIGH_WATER`` bytes
of unsent replies the loop stops reading from it, so a client that sends without reading
is slowed by TCP backpressure instead of growing the server's memory.

Events, named as the lecture names them: *new connection*, *data readable*, *peer closed*
(the three readable events) and *writable*.
"""

from __future__ import annotations

import contextlib
import os
import select
import selectors
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import NoReturn, Protocol

from bufdemo.errors import BufdemoError, ConfigError
from bufdemo.signals import StopSignals, held, stop_when_orphaned, unblock

__all__ = [
    "FD_SETSIZE",
    "HIGH_WATER",
    "MODELS",
    "EchoSession",
    "Event",
    "EventKind",
    "Model",
    "ServeStats",
    "open_listener",
    "parse_model",
    "serve",
]

# glibc's fd_set is a fixed bitmap of 1024 bits; select() cannot watch a higher fd.
FD_SETSIZE = 1024
# One recv() reads up to 64 KiB: the loopback MSS, so a full segment is one call.
RECV_SIZE = 65536
# asyncio's default high-water mark: past it, stop reading from the client
# until its replies have drained, so the server's memory per client stays bounded.
HIGH_WATER = 64 * 1024
# How often a waiting loop wakes to check the stop flag and reap children: short enough
# that stopping feels immediate, long enough to cost nothing measurable when idle.
POLL_INTERVAL = 0.1
# The kernel caps the accept queue at net.core.somaxconn; ask for all of it so a burst of
# 1,000 connects is not dropped by a short backlog (Python's default is 128).
LISTEN_BACKLOG = socket.SOMAXCONN
# Accept at most this many connections per readable event, so a connect storm cannot
# starve the clients already connected (picked arbitrarily).
ACCEPT_BATCH = 64
REFUSAL = (
    f"server full: select() can only watch descriptors below FD_SETSIZE ({FD_SETSIZE}); "
    "this server uses select(), try again later\n"
).encode()


class Model(StrEnum):
    FORK = "fork"
    THREAD = "thread"
    SELECT = "select"
    POLL = "poll"
    EPOLL = "epoll"


MODELS: tuple[str, ...] = tuple(m.value for m in Model)


def parse_model(text: str, what: str = "model") -> Model:
    """The model named ``text``; ``what`` names the value in the :class:`ConfigError`
    (the setting ``model``, or what the caller read it from)."""
    try:
        return Model(text)
    except ValueError:
        raise ConfigError(what, f"must be one of {', '.join(MODELS)}, got {text!r}") from None


class EventKind(StrEnum):
    NEW_CONNECTION = "new connection"
    DATA_READABLE = "data readable"
    PEER_CLOSED = "peer closed"
    WRITABLE = "writable"


@dataclass(frozen=True, slots=True)
class Event:
    kind: EventKind
    fd: int
    peer: str
    detail: str = ""

    def __str__(self) -> str:
        text = f"{self.kind.value:<14} fd={self.fd:<4} {self.peer}"
        return f"{text}  {self.detail}" if self.detail else text


EventSink = Callable[[Event], None]
NoticeSink = Callable[[str], None]


@dataclass(slots=True)
class ServeStats:
    """What a server did; filled in as it runs, final when :func:`serve` returns."""

    model: str
    accepted: int = 0
    refused: int = 0
    # Clients still connected when the server stopped: closed by the server (event
    # loops), threads joined (thread), children terminated and reaped (fork).
    open_at_stop: int = 0
    interrupted: bool = False


# -- the echo core: no I/O -------------------------------------------------------------


class EchoSession:
    """One client's echo state: what it sent, what is still to be sent back.

    ``receive(b"")`` means the peer closed its side. The session is *done* once the peer
    closed and every reply has been handed to the kernel.
    """

    def __init__(self, high_water: int = HIGH_WATER) -> None:
        self._out = bytearray()
        self._high_water = high_water
        self.eof = False
        self.bytes_in = 0
        self.bytes_out = 0

    def receive(self, data: bytes) -> None:
        if not data:
            self.eof = True
            return
        self._out += data
        self.bytes_in += len(data)

    def outgoing(self) -> bytes:
        return bytes(self._out)

    def sent(self, n: int) -> None:
        del self._out[:n]
        self.bytes_out += n

    @property
    def pending(self) -> int:
        return len(self._out)

    @property
    def wants_read(self) -> bool:
        return not self.eof and len(self._out) < self._high_water

    @property
    def wants_write(self) -> bool:
        return bool(self._out)

    @property
    def done(self) -> bool:
        return self.eof and not self._out


def _peer_name(addr: object) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        host, port = addr[0], addr[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(addr)


def _ignore(_: object) -> None:
    return None


# -- blocking models: one worker per client ------------------------------------------


def _echo_blocking(conn: socket.socket, peer: str, emit: EventSink) -> None:
    """Serve one client with blocking calls until it closes; always closes ``conn``."""
    session = EchoSession()
    fd = conn.fileno()
    try:
        while True:
            try:
                data = conn.recv(RECV_SIZE)
            except ConnectionResetError:
                emit(Event(EventKind.PEER_CLOSED, fd, peer, "reset by peer"))
                return
            if not data:
                emit(Event(EventKind.PEER_CLOSED, fd, peer))
                return
            emit(Event(EventKind.DATA_READABLE, fd, peer, f"{len(data)} bytes"))
            session.receive(data)
            # A blocking sendall: this worker waits for buffer space, nobody else does.
            conn.sendall(session.outgoing())
            session.sent(session.pending)
    except (BrokenPipeError, ConnectionResetError):
        emit(Event(EventKind.PEER_CLOSED, fd, peer, "reset while replying"))
    finally:
        conn.close()


def _accept(listener: socket.socket) -> tuple[socket.socket, str] | None:
    try:
        conn, addr = listener.accept()
    except TimeoutError:
        return None
    conn.settimeout(None)
    return conn, _peer_name(addr)


def _run_child(
    listener: socket.socket, conn: socket.socket, peer: str, emit: EventSink, parent: int
) -> NoReturn:
    """The forked child: serve one client, then leave without returning into the parent's
    code (no atexit handlers, no second copy of the accept loop).

    bufdemo's signal policy (:mod:`bufdemo.signals`): SIGTERM (the parent stopping its
    children) or Ctrl-C ends the echo loop cleanly, and so does the parent's death.
    """
    code = 0
    try:
        StopSignals().install()  # inherited from the parent otherwise: this child's own
        stop_when_orphaned(parent)
        unblock()  # forked with the stop signals held (signals.held): one held is raised now
        listener.close()  # the child's copy: only the parent accepts
        _echo_blocking(conn, peer, emit)
    except KeyboardInterrupt:
        conn.close()
    except BaseException:
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _reap(children: set[int]) -> None:
    """Collect every exited child so none stays a zombie."""
    while children:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            children.clear()
            return
        if pid == 0:
            return
        children.discard(pid)


def _serve_fork(
    listener: socket.socket, emit: EventSink, stop: threading.Event, stats: ServeStats
) -> None:
    children: set[int] = set()
    listener.settimeout(POLL_INTERVAL)  # wake to reap children and check the stop flag
    try:
        while not stop.is_set():
            _reap(children)
            accepted = _accept(listener)
            if accepted is None:
                continue
            conn, peer = accepted
            stats.accepted += 1
            emit(Event(EventKind.NEW_CONNECTION, conn.fileno(), peer, "forking a child"))
            sys.stdout.flush()  # or the child would print the parent's buffered text again
            sys.stderr.flush()
            parent = os.getpid()
            # Held across the fork: handled inside an at-fork handler, a stop would be
            # lost; after the block, the new child is in ``children`` and is stopped too.
            with held():
                pid = os.fork()
                if pid == 0:
                    _run_child(listener, conn, peer, emit, parent)
                children.add(pid)
                conn.close()  # the parent's copy: the child owns the connection now
    finally:
        _reap(children)
        stats.open_at_stop = len(children)
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def _serve_thread(
    listener: socket.socket, emit: EventSink, stop: threading.Event, stats: ServeStats
) -> None:
    workers: dict[threading.Thread, socket.socket] = {}
    lock = threading.Lock()

    def work(conn: socket.socket, peer: str) -> None:
        try:
            _echo_blocking(conn, peer, emit)
        finally:
            with lock:
                workers.pop(threading.current_thread(), None)

    listener.settimeout(POLL_INTERVAL)
    try:
        while not stop.is_set():
            accepted = _accept(listener)
            if accepted is None:
                continue
            conn, peer = accepted
            stats.accepted += 1
            emit(Event(EventKind.NEW_CONNECTION, conn.fileno(), peer))
            thread = threading.Thread(target=work, args=(conn, peer), name=f"echo {peer}")
            with lock:
                workers[thread] = conn
            thread.start()
    finally:
        with lock:
            live = list(workers.items())
        stats.open_at_stop = len(live)
        for _, conn in live:
            # Wakes a worker blocked in recv() or sendall(); it then closes its socket.
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread, _ in live:
            thread.join()


# -- event loops: one thread, many clients -------------------------------------------


class _Poller(Protocol):
    def can_watch(self, fd: int) -> bool: ...
    def watch(self, fd: int, read: bool, write: bool) -> None: ...
    def wait(self, timeout: float) -> list[tuple[int, bool, bool]]: ...
    def describe(self) -> str: ...
    def close(self) -> None: ...


class _SelectPoller:
    """The lecture's select() bookkeeping: a read set, a write set, the highest fd."""

    def __init__(self) -> None:
        self.read_fds: set[int] = set()
        self.write_fds: set[int] = set()
        self.max_fd = -1  # what C passes as select()'s first argument, minus one

    def can_watch(self, fd: int) -> bool:
        return fd < FD_SETSIZE

    def watch(self, fd: int, read: bool, write: bool) -> None:
        (self.read_fds.add if read else self.read_fds.discard)(fd)
        (self.write_fds.add if write else self.write_fds.discard)(fd)
        if read or write:
            self.max_fd = max(self.max_fd, fd)
        elif fd == self.max_fd:
            # The highest descriptor left: search down for the new highest, as in C.
            self.max_fd = max(self.read_fds | self.write_fds, default=-1)

    def wait(self, timeout: float) -> list[tuple[int, bool, bool]]:
        readable, writable, _ = select.select(self.read_fds, self.write_fds, [], timeout)
        r, w = set(readable), set(writable)
        return [(fd, fd in r, fd in w) for fd in r | w]

    def describe(self) -> str:
        return f"maxfd {self.max_fd}"

    def close(self) -> None:
        self.read_fds.clear()
        self.write_fds.clear()


class _SelectorPoller:
    """poll() or epoll through the selectors module: no limit on descriptor numbers."""

    def __init__(self, selector: selectors.BaseSelector) -> None:
        self._sel = selector

    def can_watch(self, fd: int) -> bool:
        return True

    def watch(self, fd: int, read: bool, write: bool) -> None:
        mask = (selectors.EVENT_READ if read else 0) | (selectors.EVENT_WRITE if write else 0)
        try:
            key = self._sel.get_key(fd)
        except KeyError:
            if mask:
                self._sel.register(fd, mask)
            return
        if not mask:
            self._sel.unregister(fd)
        elif key.events != mask:
            self._sel.modify(fd, mask)

    def wait(self, timeout: float) -> list[tuple[int, bool, bool]]:
        return [
            (key.fd, bool(ev & selectors.EVENT_READ), bool(ev & selectors.EVENT_WRITE))
            for key, ev in self._sel.select(timeout)
        ]

    def describe(self) -> str:
        return f"{len(self._sel.get_map())} watched"

    def close(self) -> None:
        self._sel.close()


@dataclass(slots=True)
class _Client:
    sock: socket.socket
    peer: str
    session: EchoSession
    broken: bool = False


class _EventLoop:
    def __init__(
        self,
        listener: socket.socket,
        poller: _Poller,
        emit: EventSink,
        notice: NoticeSink,
        stats: ServeStats,
    ) -> None:
        self.listener = listener
        self.poller = poller
        self.emit = emit
        self.notice = notice
        self.stats = stats
        self.clients: dict[int, _Client] = {}

    def run(self, stop: threading.Event) -> None:
        lfd = self.listener.fileno()
        self.listener.setblocking(False)
        self.poller.watch(lfd, True, False)
        try:
            while not stop.is_set():
                for fd, readable, writable in self.poller.wait(POLL_INTERVAL):
                    if fd == lfd:
                        self._accept()
                        continue
                    if readable and fd in self.clients:
                        self._on_readable(self.clients[fd])
                    if writable and fd in self.clients:
                        self._on_writable(self.clients[fd])
        finally:
            self.stats.open_at_stop = len(self.clients)
            for client in self.clients.values():
                client.sock.close()
            self.clients.clear()
            self.poller.close()

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, addr = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:  # EMFILE/ENFILE: out of descriptors; retry later
                self.notice(f"accept failed: {exc.strerror or exc}; retrying")
                time.sleep(POLL_INTERVAL)
                return
            peer = _peer_name(addr)
            fd = conn.fileno()
            if not self.poller.can_watch(fd):
                self._refuse(conn, peer, fd)
                continue
            conn.setblocking(False)
            self.stats.accepted += 1
            self.clients[fd] = _Client(conn, peer, EchoSession())
            self.poller.watch(fd, True, False)
            self.emit(Event(EventKind.NEW_CONNECTION, fd, peer, self.poller.describe()))

    def _refuse(self, conn: socket.socket, peer: str, fd: int) -> None:
        self.stats.refused += 1
        self.notice(
            f"refused {peer}: its descriptor {fd} is not below FD_SETSIZE ({FD_SETSIZE}), "
            "which select() cannot watch; the other clients are still served"
        )
        try:
            conn.setblocking(False)
            conn.send(REFUSAL)
            conn.shutdown(socket.SHUT_WR)  # FIN after the message
            # Discard what the client already sent: close() with unread data would send
            # RST instead of FIN, and the client could lose the message (docs/kernel.md, "close()").
            while conn.recv(RECV_SIZE):
                pass
        except OSError:
            pass  # nothing more to read now (EAGAIN), or the client is already gone
        conn.close()

    def _on_readable(self, client: _Client) -> None:
        fd = client.sock.fileno()
        try:
            data = client.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return  # a stale event for a descriptor number reused in this batch
        except ConnectionResetError:
            self.emit(Event(EventKind.PEER_CLOSED, fd, client.peer, "reset by peer"))
            client.broken = True
            self._update(client)
            return
        if data:
            self.emit(Event(EventKind.DATA_READABLE, fd, client.peer, f"{len(data)} bytes"))
        else:
            self.emit(Event(EventKind.PEER_CLOSED, fd, client.peer))
        client.session.receive(data)
        self._flush(client)
        self._update(client)

    def _on_writable(self, client: _Client) -> None:
        fd = client.sock.fileno()
        waiting = client.session.pending
        self.emit(Event(EventKind.WRITABLE, fd, client.peer, f"{waiting} bytes waiting"))
        self._flush(client)
        self._update(client)

    def _flush(self, client: _Client) -> None:
        """Hand the kernel as much of the reply as it takes now; never wait."""
        session = client.session
        while session.wants_write and not client.broken:
            try:
                n = client.sock.send(session.outgoing())
            except BlockingIOError:
                return  # send buffer full: the rest waits for the writable event
            except (BrokenPipeError, ConnectionResetError):
                client.broken = True
                return
            session.sent(n)

    def _update(self, client: _Client) -> None:
        fd = client.sock.fileno()
        if client.broken or client.session.done:
            self.poller.watch(fd, False, False)
            del self.clients[fd]
            client.sock.close()
            return
        self.poller.watch(fd, client.session.wants_read, client.session.wants_write)


def _make_poller(model: Model) -> _Poller:
    if model is Model.SELECT:
        return _SelectPoller()
    if model is Model.POLL:
        return _SelectorPoller(selectors.PollSelector())
    return _SelectorPoller(selectors.EpollSelector())


# -- public entry points --------------------------------------------------------------


def open_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: the kernel picks one)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise BufdemoError(f"cannot resolve {host!r}: {str(exc.strerror).lower()}") from exc
    family, _, _, _, sockaddr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # A restarted server can bind while the previous one's connections sit in
        # TIME_WAIT; it never lets two live servers share the port on Linux.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        reason = (exc.strerror or str(exc)).lower()
        raise BufdemoError(f"cannot listen on {host}:{port}: {reason}") from exc
    return sock


def serve(
    model: Model,
    listener: socket.socket,
    *,
    on_event: EventSink | None = None,
    on_notice: NoticeSink | None = None,
    stop: threading.Event | None = None,
) -> ServeStats:
    """Serve echo on ``listener`` until ``stop`` is set or Ctrl-C; then clean up.

    Cleaning up means: every client socket closed, every worker thread joined, every
    child process terminated and reaped. ``listener`` is left open for the caller.
    The fork model must run in a process's only thread (fork copies just the caller).
    """
    stats = ServeStats(model=model.value)
    emit: EventSink = on_event or _ignore
    notice: NoticeSink = on_notice or _ignore
    flag = stop or threading.Event()
    try:
        if model is Model.FORK:
            _serve_fork(listener, emit, flag, stats)
        elif model is Model.THREAD:
            _serve_thread(listener, emit, flag, stats)
        else:
            _EventLoop(listener, _make_poller(model), emit, notice, stats).run(flag)
    except KeyboardInterrupt:
        stats.interrupted = True
    return stats
