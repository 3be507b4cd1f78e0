"""Helpers for the fault tests: real bufdemo processes, found and cleaned up with psutil.

Every process is started in a session of its own, so a test can signal the whole process
group (a terminal's Ctrl-C) and the cleanup can kill whatever is left of it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

BUFDEMO = [sys.executable, "-m", "bufdemo"]

# A long run that stalls at once and keeps stalling: small buffers, a slow receiver.
# It never finishes by itself within a test; the test breaks it on purpose.
LONG_RUN = [
    "--messages", "200000", "--recv-delay", "0.0005", "--sndbuf", "16384", "--rcvbuf", "16384",
]  # fmt: skip

STARTUP = 60.0  # spawning interpreters on a loaded 2-core machine: generous, not a claim


class Bufdemo:
    """A ``bufdemo`` command running in its own session; :meth:`cleanup` kills what is left."""

    def __init__(self, argv: list[str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [*BUFDEMO, *argv],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.pid = self.proc.pid
        self.seen: list[psutil.Process] = []  # every descendant ever seen, for the orphan check
        self.leftover: tuple[str, str] = ("", "")  # stdout, stderr read by cleanup()

    def first_stderr_line(self) -> str:
        assert self.proc.stderr is not None
        return self.proc.stderr.readline()

    def listening_port(self) -> int:
        line = self.first_stderr_line()
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        assert match, line
        return int(match.group(1))

    def finish(self, timeout: float = STARTUP) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err

    def descendants(self) -> list[psutil.Process]:
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(self.pid).children(recursive=True):
                if child not in self.seen:
                    self.seen.append(child)
        return self.seen

    def cleanup(self) -> None:
        for child in self.descendants():
            with contextlib.suppress(psutil.NoSuchProcess):
                child.resume()  # a SIGSTOPped child must not outlive the test
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        for child in self.seen:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        with contextlib.suppress(subprocess.TimeoutExpired, ValueError):
            self.leftover = self.proc.communicate(timeout=30)
        if self.proc.returncode is None:
            self.proc.kill()
            self.proc.communicate()


def complete_run(out: Path, **settings: Any) -> Path:
    """A real run in this process (no plots) under ``out``: its directory, once complete."""
    import bufdemo

    result = bufdemo.run_experiment(bufdemo.RunConfig(out=out, plot=False, **settings))
    assert result.complete, result.reason
    return result.run_dir


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def run_sides(run: Bufdemo) -> tuple[psutil.Process, psutil.Process]:
    """(receiver, sender): the two spawned children of a `bufdemo run`, once connected.

    The receiver is the child whose established connection's local port is the port the
    other child is connected to.
    """
    found: list[tuple[psutil.Process, psutil.Process]] = []

    def connected() -> bool:
        kids = [
            c for c in run.descendants() if c.is_running() and "spawn_main" in " ".join(c.cmdline())
        ]
        conns = {}
        for kid in kids:
            with contextlib.suppress(psutil.NoSuchProcess):
                est = [
                    c
                    for c in kid.net_connections("tcp")
                    if c.status == psutil.CONN_ESTABLISHED and c.raddr
                ]
                if est:
                    conns[kid] = est[0]
        if len(conns) != 2:
            return False
        (a, ca), (b, cb) = conns.items()
        if ca.laddr.port == cb.raddr.port:
            found.append((a, b))
        elif cb.laddr.port == ca.raddr.port:
            found.append((b, a))
        return bool(found)

    wait_until(connected, STARTUP, "the receiver and the sender to connect")
    return found[0]


def only_run_dir(out: Path) -> Path:
    dirs = list(out.iterdir())
    assert len(dirs) == 1, dirs
    return dirs[0]


def csv_rows(path: Path) -> int:
    """Data rows in a CSV file (0 if it does not exist yet)."""
    try:
        return max(0, path.read_bytes().count(b"\n") - 1)
    except FileNotFoundError:
        return 0


def wait_for_checkpoint(out: Path, rows: int = 1) -> Path:
    """Wait until the receiver's checkpoint holds ``rows`` consumed rows; its run dir."""
    found: list[Path] = []

    def checkpointed() -> bool:
        for d in out.glob("*"):
            if csv_rows(d / "consumed.csv") >= rows:
                found.append(d)
                return True
        return False

    wait_until(checkpointed, STARTUP, "the receiver's first checkpoint")
    return found[0]


def sides_named(procs: list[psutil.Process], receiver: psutil.Process) -> str:
    """``procs`` of a `bufdemo run` by role: "the receiver", "the sender", or both."""
    return " and ".join("the receiver" if p.pid == receiver.pid else "the sender" for p in procs)


def gone_within(procs: list[psutil.Process], seconds: float) -> list[psutil.Process]:
    """The processes still alive (not even a zombie) after ``seconds``."""
    deadline = time.monotonic() + seconds
    alive = list(procs)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _alive(p)]
        time.sleep(0.02)
    return [p for p in alive if _alive(p)]


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    return lines[0]


def write_signal_mask(path: str) -> None:
    """A child's target: write the signals this process holds blocked (/proc SigBlk)."""
    with open("/proc/self/status") as status:
        line = next(x for x in status if x.startswith("SigBlk:"))
    Path(path).write_text(line)
