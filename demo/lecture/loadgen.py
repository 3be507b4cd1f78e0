"""Load: N concurrent echo clients, each checking every reply, and what the server pays.

The N clients run as one non-blocking event loop in this process (one socket each), so
1,000 clients cost this side one thread, not 1,000. Each client sends a message, waits
until the whole echo is back (TCP may return it in pieces), compares it byte for byte
and only then sends the next one. A client that is refused, reset, closed on, answered
wrongly or still waiting at the deadline counts as one failure, with the reason.

What the *server* pays is read with psutil from outside: its processes, threads and
resident memory at the moment every client is connected (all clients keep their
connection until every one has finished), and the CPU time it used, its reaped children
included. Resident memory (RSS) counts pages a forked child still shares with its parent
once per process, so the fork model's RSS sum overstates what it costs; the unique set
size (USS, pages no other process maps) is read once, at that same moment, and is the
fair comparison.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from bufdemo.errors import BufdemoError, ConfigError
from bufdemo.lecture.servers import MODELS

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.container import BarContainer

__all__ = [
    "DEFAULT_CLIENTS",
    "DEFAULT_LINE_SIZE",
    "DEFAULT_LOAD_TIMEOUT",
    "DEFAULT_MESSAGES_PER_CLIENT",
    "LoadConfig",
    "LoadResult",
    "ModelCost",
    "ResourcePeak",
    "ServerProcess",
    "compare_models",
    "find_listener_pid",
    "format_result",
    "plot_cost",
    "raise_nofile_limit",
    "run_load",
]

DEFAULT_CLIENTS = 50  # the acceptance load for every model
# Enough round trips to measure, short on a busy host.
DEFAULT_MESSAGES_PER_CLIENT = 100
# 64 B: a chat-sized line; the cost under test is per connection, not per byte.
DEFAULT_LINE_SIZE = 64
DEFAULT_LOAD_TIMEOUT = 60.0  # seconds for the whole load; a stuck server fails, never hangs
MAX_CLIENTS = 10_000  # each is a descriptor here and one (or a process) in the server
MAX_MESSAGES_PER_CLIENT = 1_000_000
MIN_LINE_SIZE, MAX_LINE_SIZE = 32, 65536  # 32: room for the client and message numbers
MAX_LOAD_TIMEOUT = 3600.0
RECV_SIZE = 65536
# psutil sampling period while the load runs; the peak is also sampled once at the
# moment every client is connected, so a short load cannot slip between samples.
SAMPLE_INTERVAL = 0.05
SERVER_START_TIMEOUT = 15.0  # a Python process on a loaded 2-core host starts in < 1 s
SERVER_STOP_TIMEOUT = 15.0
SERVING_LINE = re.compile(r"serving echo \(model (\w+)\) on (\S+):(\d+)")


def raise_nofile_limit(needed: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards the hard limit; return the soft."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard == resource.RLIM_INFINITY else min(hard, max(soft, needed))
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


@dataclass(frozen=True, slots=True)
class LoadConfig:
    host: str
    port: int
    clients: int = DEFAULT_CLIENTS
    messages: int = DEFAULT_MESSAGES_PER_CLIENT
    size: int = DEFAULT_LINE_SIZE
    timeout: float = DEFAULT_LOAD_TIMEOUT

    def __post_init__(self) -> None:
        for setting, value, low, high in (
            ("clients", self.clients, 1, MAX_CLIENTS),
            ("messages", self.messages, 1, MAX_MESSAGES_PER_CLIENT),
            ("size", self.size, MIN_LINE_SIZE, MAX_LINE_SIZE),
        ):
            if not low <= value <= high:
                raise ConfigError(setting, f"must be between {low} and {high}, got {value}")
        if not 0 < self.timeout <= MAX_LOAD_TIMEOUT:
            raise ConfigError(
                "timeout", f"must be > 0 and <= {MAX_LOAD_TIMEOUT}, got {self.timeout}"
            )


@dataclass(frozen=True, slots=True)
class LoadResult:
    clients: int
    messages: int
    size: int
    connected: int
    replies_ok: int
    failures: int
    reasons: dict[str, int]
    elapsed_s: float

    @property
    def expected(self) -> int:
        return self.clients * self.messages

    @property
    def messages_per_s(self) -> float:
        return self.replies_ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def ok(self) -> bool:
        return self.failures == 0 and self.replies_ok == self.expected

    def as_dict(self) -> dict[str, Any]:
        return {
            "clients": self.clients,
            "messages": self.messages,
            "size": self.size,
            "connected": self.connected,
            "replies_ok": self.replies_ok,
            "expected": self.expected,
            "failures": self.failures,
            "reasons": self.reasons,
            "elapsed_s": round(self.elapsed_s, 4),
            "messages_per_s": round(self.messages_per_s, 1),
        }


def _message(client: int, k: int, size: int) -> bytes:
    head = f"client {client:05d} message {k:07d} ".encode()
    return head + b"." * (size - len(head) - 1) + b"\n"


@dataclass(slots=True)
class _Client:
    index: int
    sock: socket.socket
    connecting: bool = True
    k: int = 0
    expected: bytes = b""
    out: memoryview = field(default_factory=lambda: memoryview(b""))
    got: bytearray = field(default_factory=bytearray)
    done: bool = False


def _fail_reason(exc: OSError) -> str:
    return (exc.strerror or type(exc).__name__).lower()


def run_load(cfg: LoadConfig, on_all_done: Callable[[], None] | None = None) -> LoadResult:
    """Run the load to completion or the deadline; ``on_all_done`` runs while every client
    that finished is still connected (the moment to sample the server)."""
    raise_nofile_limit(cfg.clients + 64)
    sel = selectors.DefaultSelector()
    clients: list[_Client] = []
    reasons: Counter[str] = Counter()
    finished = 0
    replies_ok = 0
    connected = 0

    def fail(c: _Client, reason: str) -> None:
        nonlocal finished
        reasons[reason] += 1
        c.done = True
        finished += 1
        sel.unregister(c.sock)
        c.sock.close()  # a failed client leaves now; the server sees it go

    def next_message(c: _Client) -> None:
        nonlocal finished
        if c.k == cfg.messages:
            c.done = True
            finished += 1
            sel.unregister(c.sock)
            return
        c.expected = _message(c.index, c.k, cfg.size)
        c.out = memoryview(c.expected)
        c.got.clear()
        sel.modify(c.sock, selectors.EVENT_WRITE, c)

    try:
        family = socket.getaddrinfo(cfg.host, cfg.port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise BufdemoError(f"cannot resolve {cfg.host!r}: {str(exc.strerror).lower()}") from exc
    address = family[4]
    start = time.perf_counter()
    try:
        for i in range(cfg.clients):
            sock = socket.socket(family[0], socket.SOCK_STREAM)
            sock.setblocking(False)
            c = _Client(i, sock)
            clients.append(c)
            sel.register(sock, selectors.EVENT_WRITE, c)
            err = sock.connect_ex(address)
            if err not in (0, 115):  # 115: EINPROGRESS, the connect completes later
                fail(c, f"connect: {os.strerror(err).lower()}")
        deadline = start + cfg.timeout
        while finished < cfg.clients:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            for key, events in sel.select(min(remaining, 1.0)):
                c = key.data
                if c.done:
                    continue
                if c.connecting:
                    err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        fail(c, f"connect: {os.strerror(err).lower()}")
                        continue
                    c.connecting = False
                    connected += 1
                    next_message(c)
                    continue
                if events & selectors.EVENT_WRITE:
                    try:
                        n = c.sock.send(c.out)
                    except BlockingIOError:
                        continue
                    except OSError as exc:
                        fail(c, f"send: {_fail_reason(exc)}")
                        continue
                    c.out = c.out[n:]
                    if not c.out:
                        sel.modify(c.sock, selectors.EVENT_READ, c)
                    continue
                try:
                    data = c.sock.recv(RECV_SIZE)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    fail(c, f"recv: {_fail_reason(exc)}")
                    continue
                if not data:
                    text = bytes(c.got).decode(errors="replace").strip()
                    fail(
                        c,
                        f"server closed the connection: {text[:60]!r}"
                        if text
                        else "server closed the connection",
                    )
                    continue
                c.got += data
                if len(c.got) >= len(c.expected):
                    if bytes(c.got) != c.expected:
                        fail(c, "reply differs from the message sent")
                        continue
                    replies_ok += 1
                    c.k += 1
                    next_message(c)
        elapsed = time.perf_counter() - start
        for c in clients:
            if not c.done:
                reasons["timed out" if not c.connecting else "connect: timed out"] += 1
        if on_all_done is not None:
            on_all_done()
    finally:
        for c in clients:
            c.sock.close()
        sel.close()
    return LoadResult(
        clients=cfg.clients,
        messages=cfg.messages,
        size=cfg.size,
        connected=connected,
        replies_ok=replies_ok,
        failures=sum(reasons.values()),
        reasons=dict(reasons),
        elapsed_s=elapsed,
    )


def format_result(result: LoadResult) -> list[str]:
    lines = [
        f"{result.clients} clients x {result.messages} messages of {result.size} B: "
        f"{result.replies_ok}/{result.expected} replies correct in {result.elapsed_s:.3f} s "
        f"({result.messages_per_s:,.0f} round trips/s)",
        f"connected: {result.connected}, failures: {result.failures}",
    ]
    lines += [f"  {n} x {reason}" for reason, n in sorted(result.reasons.items())]
    return lines


# -- the server's side, seen through psutil ------------------------------------------


@dataclass(slots=True)
class ResourcePeak:
    processes: int = 0
    threads: int = 0
    rss_bytes: int = 0
    uss_bytes: int = 0  # unique memory (not shared with any other process); full samples only

    def update(self, pid: int, *, full: bool = False) -> None:
        """Sample the process tree; ``full`` also reads USS (/proc/PID/smaps: slower)."""
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        processes = threads = rss = uss = 0
        for proc in procs:
            try:
                with proc.oneshot():
                    threads += proc.num_threads()
                    if full:
                        info = proc.memory_full_info()
                        rss, uss = rss + info.rss, uss + info.uss
                    else:
                        rss += proc.memory_info().rss
                processes += 1
            except psutil.Error:
                continue  # exited between listing and reading: not part of this sample
        self.processes = max(self.processes, processes)
        self.threads = max(self.threads, threads)
        self.rss_bytes = max(self.rss_bytes, rss)
        self.uss_bytes = max(self.uss_bytes, uss)


class _Sampler:
    def __init__(self, pid: int, interval: float = SAMPLE_INTERVAL) -> None:
        self.pid = pid
        self.peak = ResourcePeak()
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="psutil sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak.update(self.pid)

    def __enter__(self) -> _Sampler:
        self.peak.update(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and of its children it has reaped."""
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def find_listener_pid(port: int) -> int | None:
    """The local process listening on TCP ``port``, if this user may see it."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except psutil.Error:
        return None
    for conn in conns:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            return conn.pid
    return None


class ServerProcess:
    """``bufdemo serve`` in a process of its own on 127.0.0.1:0; its output goes to a file.

    It runs in a new session so that, if it does not stop when asked, killing its
    process group leaves no forked child behind.
    """

    def __init__(self, model: str, *, events: bool = False, listen: str = "127.0.0.1:0") -> None:
        fd, name = tempfile.mkstemp(prefix=f"bufdemo-serve-{model}-", suffix=".log")
        os.close(fd)
        self.log_path = Path(name)
        self.model = model
        args = [sys.executable, "-m", __package__.partition(".")[0], "serve", "--model", model]
        args += ["--listen", listen] + (["--events"] if events else [])
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.host, self.port = self._wait_serving()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _wait_serving(self) -> tuple[str, int]:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            match = SERVING_LINE.search(self.output())
            if match:
                return match.group(2), int(match.group(3))
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.kill()
        text = self.output().strip().replace("\n", " | ")
        self.log_path.unlink(missing_ok=True)
        raise BufdemoError(f"server model {self.model} did not start: {text[:300]}")

    def stop(self, sig: int = signal.SIGINT, timeout: float = SERVER_STOP_TIMEOUT) -> int:
        """Ask the server to stop (Ctrl-C by default); return its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            if self.proc.poll() is None:
                self.kill()
            self.log_path.unlink(missing_ok=True)


@dataclass(frozen=True, slots=True)
class ModelCost:
    model: str
    load: LoadResult
    processes: int
    threads: int
    rss_bytes: int
    uss_bytes: int
    cpu_s: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "processes": self.processes,
            "threads": self.threads,
            "rss_mib": round(self.rss_bytes / 2**20, 1),
            "uss_mib": round(self.uss_bytes / 2**20, 1),
            "cpu_s": round(self.cpu_s, 3),
            **{f"load_{k}": v for k, v in self.load.as_dict().items()},
        }


def _wait_no_children(pid: int, timeout: float = 5.0) -> None:
    """Fork servers reap children as clients leave; wait so their CPU time is counted."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not psutil.Process(pid).children():
                return
        except psutil.Error:
            return
        time.sleep(0.02)


def measure_server(pid: int, cfg: LoadConfig) -> tuple[LoadResult, ResourcePeak, float]:
    """Run the load against a local server and read its cost through psutil."""
    cpu0 = cpu_seconds(pid)
    with _Sampler(pid) as sampler:
        result = run_load(cfg, on_all_done=lambda: sampler.peak.update(pid, full=True))
    _wait_no_children(pid)
    return result, sampler.peak, cpu_seconds(pid) - cpu0


def compare_models(
    models: Sequence[str] = MODELS,
    *,
    clients: int = DEFAULT_CLIENTS,
    messages: int = DEFAULT_MESSAGES_PER_CLIENT,
    size: int = DEFAULT_LINE_SIZE,
    timeout: float = DEFAULT_LOAD_TIMEOUT,
) -> list[ModelCost]:
    """Start each server model in turn, give it the same load, and measure its cost."""
    LoadConfig("127.0.0.1", 1, clients, messages, size, timeout)  # validate once, up front
    costs = []
    for model in models:
        with ServerProcess(model) as server:
            cfg = LoadConfig(server.host, server.port, clients, messages, size, timeout)
            result, peak, cpu = measure_server(server.pid, cfg)
        costs.append(
            ModelCost(
                model, result, peak.processes, peak.threads, peak.rss_bytes, peak.uss_bytes, cpu
            )
        )
    return costs


COST_METRICS: dict[str, tuple[str, Callable[[ModelCost], float]]] = {
    "processes": ("processes", lambda c: c.processes),
    "threads": ("threads (all processes)", lambda c: c.threads),
    "rss": ("resident memory (RSS), MiB", lambda c: c.rss_bytes / 2**20),
    "uss": ("unique memory (USS), MiB", lambda c: c.uss_bytes / 2**20),
    "cpu": ("CPU seconds (children included)", lambda c: c.cpu_s),
}


def plot_cost(ax: Axes, costs: Sequence[ModelCost], metric: str) -> BarContainer:
    """One bar per server model for ``metric`` (a key of COST_METRICS); returns the bars."""
    label, value = COST_METRICS[metric]
    bars = ax.bar([c.model for c in costs], [value(c) for c in costs], color="tab:blue")
    ax.set_title(label, fontsize=9)
    ax.tick_params(axis="x", labelsize=8)  # five model names side by side must not touch
    ax.bar_label(bars, fmt="%.3g", fontsize=8)
    return bars
