"""Orchestration: one experiment, two processes, one run directory.

``bufdemo run`` starts the receiver in its own process (listening on 127.0.0.1, port
chosen by the kernel), then the sender in another; this process only watches them and
shows progress. Sender and receiver must not share a process: a shared GIL would couple
their timing (KERNEL.md, "Timing").

Both children write their own tables into the run directory, also when they fail or are
interrupted; this process then merges their records into ``meta.json`` with the host's
facts and the kernel counters' delta, and says whether the run is complete and, if not,
why. A run directory is created fresh and never reused.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from demo import probes
from demo.config import Address, RunConfig
from demo.errors import BufdemoError, RunDirError

__all__ = [
    "FORMAT_VERSION",
    "Progress",
    "RunResult",
    "create_run_dir",
    "run_experiment",
    "write_meta",
]

FORMAT_VERSION = 1
LOOPBACK = Address("127.0.0.1", 0)
READY_TIMEOUT = 30.0  # receiver start-up: a spawned interpreter importing bufdemo
GRACE = 2.0  # after one side fails or on Ctrl-C, how long the other may take to stop
PROGRESS_SLOTS = 5  # count, outq, inq, extra (blocking sends / intact), done

EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class Progress:
    """A snapshot of both sides for a live display."""

    elapsed: float
    sent: int
    consumed: int
    send_queue: int
    recv_queue: int
    blocking_sends: int


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    complete: bool
    reason: str | None
    interrupted: bool = False


def create_run_dir(out: Path, label: str) -> Path:
    """A new directory ``out/YYYYmmdd-HHMMSS-label[-N]``; an existing one is never reused."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"cannot create output directory {out}: {exc.strerror or exc}") from exc
    if not out.is_dir():
        raise RunDirError(f"output path {out} is not a directory")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(1, 1000):
        path = out / (f"{stamp}-{label}" + ("" if i == 1 else f"-{i}"))
        try:
            path.mkdir()
        except FileExistsError:
            continue
        except OSError as exc:
            raise RunDirError(f"cannot create run directory {path}: {exc.strerror or exc}") from exc
        return path
    raise RunDirError(f"too many runs named {stamp}-{label} in {out}")


def run_label(cfg: RunConfig) -> str:
    parts = [cfg.mode, f"n{cfg.messages}", f"d{cfg.recv_delay:g}"]
    if cfg.sndbuf is not None:
        parts.append(f"s{cfg.sndbuf}")
    if cfg.rcvbuf is not None:
        parts.append(f"r{cfg.rcvbuf}")
    return "-".join(parts)


def _interrupt_once(signum: int, frame: object) -> None:
    # The first Ctrl-C/SIGTERM stops the loop; later ones must not cut the log writing.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def _side_main(role: str, run_dir: Path, body: Callable[[], Any]) -> None:
    """Run one side in a child process: record its result, exit 0/1/130, no traceback."""
    signal.signal(signal.SIGINT, _interrupt_once)
    signal.signal(signal.SIGTERM, _interrupt_once)
    code = 0
    result: dict[str, Any] | None = None
    error: str | None = None
    try:
        result = body().as_dict()
        code = 0 if result.get("complete") else 1
    except KeyboardInterrupt:
        error, code = "interrupted", EXIT_INTERRUPTED
    except BufdemoError as exc:
        error, code = str(exc), 1
    except Exception as exc:  # a bug: still leave a record, never a bare traceback
        error, code = f"{type(exc).__name__}: {exc}", 1
    record: dict[str, Any] = result if result is not None else {"complete": False}
    if error is not None and not record.get("error"):
        record["error"] = error
    (run_dir / f"{role}.json").write_text(json.dumps(record, indent=2))
    sys.exit(code)


def _receiver_child(
    cfg: RunConfig, run_dir: Path, ready: Connection, progress: Any
) -> None:  # pragma: no cover - runs in a child process
    from demo.receiver import run_receiver

    def on_listening(addr: Address) -> None:
        ready.send((addr.host, addr.port))
        ready.close()

    _side_main(
        "receiver",
        run_dir,
        lambda: run_receiver(
            cfg, LOOPBACK, run_dir, token=cfg.token, on_listening=on_listening, progress=progress
        ),
    )


def _sender_child(
    cfg: RunConfig, to: Address, run_dir: Path, progress: Any
) -> None:  # pragma: no cover - runs in a child process
    from demo.sender import run_sender

    _side_main("sender", run_dir, lambda: run_sender(cfg, to, run_dir, progress=progress))


def _read_side(run_dir: Path, role: str) -> dict[str, Any] | None:
    path = run_dir / f"{role}.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    path.unlink()
    return data


def _netstat_delta(
    before: dict[str, int] | None, after: dict[str, int] | None
) -> dict[str, Any] | None:
    if before is None or after is None:
        return None
    keys = probes.NETSTAT_COUNTERS
    return {
        "scope": "network namespace: shared by every socket in it, not per connection",
        "before": {k: before.get(k) for k in keys},
        "after": {k: after.get(k) for k in keys},
        "delta": {k: (after[k] - before[k]) if k in after and k in before else None for k in keys},
    }


def write_meta(
    run_dir: Path,
    cfg: RunConfig,
    *,
    sender: dict[str, Any] | None,
    receiver: dict[str, Any] | None,
    netstat: dict[str, Any] | None,
    complete: bool,
    reason: str | None,
) -> dict[str, Any]:
    t0 = (sender or {}).get("t_connected_ns") or (receiver or {}).get("t_connected_ns")
    meta = {
        "format_version": FORMAT_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join(["bufdemo", *sys.argv[1:]]),
        "config": cfg.as_dict(),
        "host": probes.host_info(),
        "t0_ns": t0,
        "sender": sender,
        "receiver": receiver,
        "netstat": netstat,
        "outcome": {"complete": complete, "reason": reason},
    }
    tmp = run_dir / "meta.json.part"
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(run_dir / "meta.json")
    return meta


def _stop(proc: mp.process.BaseProcess, sig: int = signal.SIGINT) -> None:
    """Ask a child to stop (it writes its logs), then insist."""
    if proc.is_alive() and proc.pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
    proc.join(GRACE)
    if proc.is_alive():
        proc.kill()
        proc.join()


def run_experiment(
    cfg: RunConfig,
    on_progress: Callable[[Progress], None] = lambda p: None,
    *,
    run_dir: Path | None = None,
) -> RunResult:
    """Run one experiment end to end; always leaves a run directory with meta.json."""
    run_dir = run_dir or create_run_dir(cfg.out, run_label(cfg))
    ctx = mp.get_context("spawn")
    send_progress = ctx.RawArray("q", PROGRESS_SLOTS)
    recv_progress = ctx.RawArray("q", PROGRESS_SLOTS)
    ready_recv, ready_send = ctx.Pipe(duplex=False)
    before = probes.netstat_counters()
    receiver = ctx.Process(
        target=_receiver_child,
        args=(cfg, run_dir, ready_send, recv_progress),
        name="bufdemo-receiver",
    )
    sender: mp.process.BaseProcess | None = None
    interrupted = False
    failure: str | None = None
    t_start = time.monotonic()
    try:
        receiver.start()
        ready_send.close()
        if not ready_recv.poll(READY_TIMEOUT):
            failure = "the receiver did not start listening"
        else:
            try:
                host, port = ready_recv.recv()
            except EOFError:
                failure = "the receiver failed before listening"
        ready_recv.close()
        if failure is None:
            sender = ctx.Process(
                target=_sender_child,
                args=(cfg, Address(host, port), run_dir, send_progress),
                name="bufdemo-sender",
            )
            sender.start()
            _watch(receiver, sender, send_progress, recv_progress, on_progress, t_start)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        for proc in (sender, receiver):
            if proc is not None:
                _stop(proc)
    after = probes.netstat_counters()
    send_rec = _read_side(run_dir, "sender")
    recv_rec = _read_side(run_dir, "receiver")
    reasons = [
        f"{role}: {rec['error']}"
        for role, rec in (("sender", send_rec), ("receiver", recv_rec))
        if rec and rec.get("error")
    ]
    if failure:
        reasons.insert(0, failure)
    if interrupted:
        reasons.insert(0, "interrupted by the user")
    for role, rec, proc in (("sender", send_rec, sender), ("receiver", recv_rec, receiver)):
        if rec is None and proc is not None and proc.exitcode not in (None, 0):
            reasons.append(f"{role} process ended with exit code {proc.exitcode}")
    complete = (
        not reasons
        and bool(send_rec and send_rec.get("complete"))
        and bool(recv_rec and recv_rec.get("complete"))
    )
    reason = "; ".join(reasons) if reasons else (None if complete else "a side did not finish")
    write_meta(
        run_dir,
        cfg,
        sender=send_rec,
        receiver=recv_rec,
        netstat=_netstat_delta(before, after),
        complete=complete,
        reason=reason,
    )
    return RunResult(run_dir, complete, reason, interrupted)


def _watch(
    receiver: mp.process.BaseProcess,
    sender: mp.process.BaseProcess,
    send_progress: Any,
    recv_progress: Any,
    on_progress: Callable[[Progress], None],
    t_start: float,
) -> None:
    """Report progress until both sides end; if one side dies, give the other GRACE."""

    def snapshot() -> Progress:
        return Progress(
            elapsed=time.monotonic() - t_start,
            sent=send_progress[0],
            consumed=recv_progress[0],
            send_queue=send_progress[1],
            recv_queue=recv_progress[2],
            blocking_sends=send_progress[3],
        )

    first_exit: float | None = None
    while sender.is_alive() or receiver.is_alive():
        on_progress(snapshot())
        failed = [p for p in (sender, receiver) if not p.is_alive() and p.exitcode != 0]
        if failed and first_exit is None:
            first_exit = time.monotonic()
        if first_exit is not None and time.monotonic() - first_exit > GRACE:
            return  # the caller stops the survivor, which writes its logs
        sender.join(0.1)
    on_progress(snapshot())
