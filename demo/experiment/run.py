"""Orchestration: one experiment, two processes, one run directory.

``bufdemo run`` starts the receiver in its own process (listening on 127.0.0.1, port
chosen by the kernel) and, at the same time, the sender in another, which is given the
receiver's address once it listens; this process only watches them and shows
progress. Sender and receiver must not share a process: a shared GIL would couple their
timing (docs/kernel.md, "One process per side").

Both children write their own tables into the run directory, also when they fail or are
interrupted; this process then merges their records into ``meta.json`` with the host's
facts and the kernel counters' delta, and says whether the run is complete and, if not,
why. A run directory is created fresh and never reused.

Faults, and what this module does about them (docs/reliability.md has the full list):

- one side dies or fails: the survivor may go on while it makes progress (a receiver
  still draining what a killed sender had queued); after GRACE without progress it is
  asked to stop (SIGINT, SIGCONT in case it was stopped), then killed;
- a side killed outright (SIGKILL) writes no record: meta.json names the signal and keeps
  the last counts this process saw in the live progress (``last_progress``); the
  receiver's own checkpoints keep what it consumed until half a second before;
- Ctrl-C / SIGTERM on this process (alone or with its process group): both children stop
  and write their tables, meta.json says "interrupted", and a second Ctrl-C cannot cut
  that short. The children are started with SIGINT/SIGTERM blocked, so a Ctrl-C during
  their start-up is held until they can handle it (no traceback from a half-started
  interpreter); each child also stops by itself if this process disappears. That is
  bufdemo's one signal policy, :mod:`bufdemo.signals`.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as mp_wait
from pathlib import Path
from typing import Any, cast

from bufdemo import probes, runformat
from bufdemo.errors import BufdemoError, ConfigError, Interrupted, RunDirError
from bufdemo.experiment import netns
from bufdemo.experiment.config import RunConfig
from bufdemo.experiment.recorder import (
    PROGRESS_BLOCKED_SINCE,
    PROGRESS_BLOCKING,
    PROGRESS_COUNT,
    PROGRESS_INQ,
    PROGRESS_INTACT,
    PROGRESS_OUTQ,
    PROGRESS_SLOTS,
)
from bufdemo.net import Address
from bufdemo.runformat import (
    FORMAT_VERSION,
    LastProgress,
    Meta,
    ReceiverRecord,
    SenderRecord,
    WitnessRecord,
)
from bufdemo.signals import EXIT_INTERRUPTED, StopSignals, blocked, stop_when_orphaned, unblock

__all__ = [
    "LazyRunDir",
    "Progress",
    "RunResult",
    "check_out_dir",
    "create_run_dir",
    "kept_on_failure",
    "run_experiment",
    "write_meta",
]

LOOPBACK = Address("127.0.0.1", 0)
READY_TIMEOUT = 30.0  # receiver start-up: a spawned interpreter importing bufdemo
GRACE = 2.0  # after one side fails or on Ctrl-C, how long the other may take to stop
# Writing the tables after a stop: measured ~0.35 us per row here; 2 us leaves room for
# a busy machine, so a stopped child is not killed while it writes what it recorded.
WRITE_SECONDS_PER_ROW = 2e-6


@dataclass(frozen=True)
class Progress:
    """A snapshot of both sides for a live display."""

    elapsed: float
    sent: int
    consumed: int
    send_queue: int
    recv_queue: int
    blocking_sends: int
    # perf_counter_ns() when the sender's current blocking send began; 0: not blocked now.
    # On the clock of time.perf_counter_ns(), the same in every process of this host.
    blocked_since_ns: int = 0


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    complete: bool
    reason: str | None
    interrupted: bool = False
    # One line per witness (--trace/--capture) skipped or degraded, and why.
    notes: tuple[str, ...] = ()


def check_out_dir(out: Path) -> None:
    """Fail early if run directories cannot be created under ``out`` (nothing is created).

    The by-hand halves call this before they connect and create their run directory
    only once there is something to record.
    """
    probe = out
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise RunDirError(f"cannot create output directory {out}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RunDirError(f"cannot create output directory {out}: {probe} is not writable")


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
    if cfg.send_rate is not None:
        parts.append(f"rate{cfg.send_rate:g}")
    if cfg.notsent_lowat is not None:
        parts.append(f"lowat{cfg.notsent_lowat}")
    return "-".join(parts)


def _side_main(role: str, run_dir: Path, result: Any, body: Callable[[], object]) -> None:
    """Run one side in a child process: record its result, exit 0/1/130, no traceback.

    The child starts with SIGINT/SIGTERM blocked (:func:`bufdemo.signals.blocked` around
    its start); they are unblocked only once the handler is in place, so a Ctrl-C that
    arrived during start-up is handled here, as an interruption. ``result`` (a
    SenderResult or ReceiverResult) is filled by ``body`` as it goes and written also
    when it raises.
    """
    # Installed for good: a late Ctrl-C is only counted, up to the child's very exit.
    stops = StopSignals().install()
    code = 0
    error: str | None = None
    try:
        unblock()
        stop_when_orphaned()
        body()
        stops.raising = False  # done: nothing left to interrupt but the record below
        code = 0 if result.complete else 1
    except KeyboardInterrupt:
        error, code = "interrupted", EXIT_INTERRUPTED
    except BufdemoError as exc:
        error, code = str(exc), 1
    except Exception as exc:  # a bug: still leave a record, never a bare traceback
        error, code = f"{type(exc).__name__}: {exc}", 1
    stops.raising = False
    record = result.as_dict()
    if error is not None and not record.get("error"):
        record["error"] = error
    (run_dir / runformat.SIDE_RECORD_FILES[role]).write_text(json.dumps(record, indent=2))
    sys.exit(code)


def _receiver_child(
    cfg: RunConfig,
    run_dir: Path,
    ready: Connection,
    progress: Any,
    netns_name: str | None = None,
    listen: Address = LOOPBACK,
) -> None:  # pragma: no cover - runs in a child process
    from bufdemo.experiment.receiver import ReceiverResult, run_receiver

    if netns_name is not None:
        netns.enter(netns_name)

    def on_listening(addr: Address) -> None:
        ready.send((addr.host, addr.port))
        ready.close()

    result = ReceiverResult()
    _side_main(
        "receiver",
        run_dir,
        result,
        lambda: run_receiver(
            cfg,
            listen,
            run_dir,
            token=cfg.token,
            on_listening=on_listening,
            progress=progress,
            # The sender is given the address right after listen() (and bufdemo run's
            # warm-up, at most cli.WARM_UP_WAIT): it connects within that time, whatever
            # --timeout says about waits during the run.
            accept_timeout=READY_TIMEOUT,
            result=result,
        ),
    )


def _sender_child(
    cfg: RunConfig, go: Connection, run_dir: Path, progress: Any, netns_name: str | None = None
) -> None:  # pragma: no cover - runs in a child process
    """The sender, started beside the receiver: it loads while the receiver does, then
    waits for the receiver's address on ``go``. End of file there (the receiver never
    listened, the run was stopped, the parent died) ends it at once, with no record:
    it never started."""
    from bufdemo.experiment.sender import SenderResult, run_sender

    if netns_name is not None:
        netns.enter(netns_name)
    try:
        host, port = go.recv()
    except EOFError:
        return
    finally:
        go.close()
    to = Address(host, port)

    result = SenderResult()
    _side_main(
        "sender",
        run_dir,
        result,
        lambda: run_sender(cfg, to, run_dir, progress=progress, result=result),
    )


def _read_side(run_dir: Path, role: str) -> dict[str, Any] | None:
    path = run_dir / runformat.SIDE_RECORD_FILES[role]
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    path.unlink()
    return data


def _exit_description(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"ended with exit code {code}"


def _tidy_after_death(run_dir: Path) -> None:
    """A side killed mid-write: cut a checkpoint's partial line, drop ``*.part`` files."""
    from bufdemo.experiment.recorder import trim_partial_line

    # The checkpointed ones (the samples of the asyncio sender are spooled too).
    for table in (
        runformat.CONSUMED,
        runformat.RECEIVER_SAMPLES,
        runformat.SENDER_SAMPLES,
        runformat.TRANSPORT_SAMPLES,
    ):
        path = run_dir / table.file
        trim_partial_line(path)
        # Killed between creating the file and its first write (or inside the header):
        # no row reached it, and a table with no rows is its header line.
        if path.is_file() and path.stat().st_size == 0:
            path.write_text(",".join(table.columns) + "\n")
    for part in run_dir.glob("*.part"):
        with contextlib.suppress(OSError):
            part.unlink()


class LazyRunDir:
    """A run directory created only when there is something to record."""

    def __init__(self, out: Path, label: str) -> None:
        self.out = out
        self.label = label
        self.path: Path | None = None

    def create(self) -> Path:
        self.path = create_run_dir(self.out, self.label)
        return self.path


@contextlib.contextmanager
def kept_on_failure(
    made: LazyRunDir, cfg: RunConfig, *, sender: Any = None, receiver: Any = None
) -> Iterator[None]:
    """For a by-hand half (`bufdemo send` / `receive`): write meta.json into the run
    directory, if one was made, whatever happens; on a failure, the one-line error
    names the kept directory. Exactly one of ``sender`` and
    ``receiver`` (the side's result, filled as the run goes) is given."""
    side = sender if sender is not None else receiver
    reason: str | None = None
    try:
        yield
    except KeyboardInterrupt:
        if made.path is None:
            raise
        side.error = side.error or "interrupted"
        reason = "interrupted by the user"
        raise Interrupted(f"partial run kept in {made.path}") from None
    except BufdemoError as exc:
        if made.path is None or isinstance(exc, ConfigError):
            raise
        side.error = side.error or str(exc)
        reason = side.error
        raise type(exc)(f"{exc} (partial run kept in {made.path})") from exc
    finally:
        if made.path is not None:
            write_meta(
                made.path,
                cfg,
                sender=sender.as_dict() if sender is not None else None,
                receiver=receiver.as_dict() if receiver is not None else None,
                netstat=None,
                complete=bool(side.complete) and reason is None,
                reason=reason or side.error or (None if side.complete else "failed"),
            )


NETSTAT_SCOPE = "network namespace: shared by every socket in it, not per connection"
NETNS_SCOPE = (
    "the run's own two network namespaces (sender's + receiver's, summed): this run's "
    "connection alone"
)


def _netstat_delta(
    before: dict[str, int] | None, after: dict[str, int] | None, scope: str = NETSTAT_SCOPE
) -> dict[str, Any] | None:
    if before is None or after is None:
        return None
    keys = probes.NETSTAT_COUNTERS
    return {
        "scope": scope,
        "before": {k: before.get(k) for k in keys},
        "after": {k: after.get(k) for k in keys},
        "delta": {k: (after[k] - before[k]) if k in after and k in before else None for k in keys},
    }


def write_meta(
    run_dir: Path,
    cfg: RunConfig,
    *,
    sender: SenderRecord | None,
    receiver: ReceiverRecord | None,
    netstat: dict[str, Any] | None,
    complete: bool,
    reason: str | None,
    last_progress: LastProgress | None = None,
    witnesses: dict[str, WitnessRecord] | None = None,
    link: dict[str, Any] | None = None,
) -> Meta:
    """Write ``meta.json`` (:class:`bufdemo.runformat.Meta`) atomically; return it."""
    t0 = (sender["t_connected_ns"] if sender else None) or (
        receiver["t_connected_ns"] if receiver else None
    )
    meta: Meta = {
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
    if last_progress is not None:
        meta["last_progress"] = last_progress
    if witnesses:
        meta["witnesses"] = witnesses
    if link is not None:
        meta["link"] = link
    path = run_dir / runformat.META_FILE
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(path)
    return meta


def _stop(procs: list[mp.process.BaseProcess], grace: float = GRACE) -> None:
    """Ask the children to stop, all at once (they write their logs), then insist.

    All at once, as a terminal's Ctrl-C would: stopping the sender first would let the
    receiver see a closed stream instead of an interruption. SIGCONT follows the SIGINT:
    a stopped (SIGSTOP) child would otherwise hold the signal pending and be killed
    without writing anything.
    """
    started = [p for p in procs if p.pid is not None]
    for proc in started:
        if proc.is_alive() and proc.pid is not None:
            for sig in (signal.SIGINT, signal.SIGCONT):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, sig)
    deadline = time.monotonic() + grace
    for proc in started:
        proc.join(max(0.0, deadline - time.monotonic()))
    for proc in started:
        if proc.is_alive():
            proc.kill()
            proc.join()


@contextlib.contextmanager
def _without_blas_threads() -> Iterator[None]:
    """A child started in this block runs without numpy's OpenBLAS worker threads (unless
    the user set OPENBLAS_NUM_THREADS): a second thread in a process, even asleep, slows
    its loop of system calls (the kernel and the C library take their multi-threaded
    paths; docs/benchmarks.md). Only the children see it: a spawned child's environment
    is this process's at its start."""
    if "OPENBLAS_NUM_THREADS" in os.environ:
        yield
        return
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    try:
        yield
    finally:
        os.environ.pop("OPENBLAS_NUM_THREADS", None)


def run_experiment(
    cfg: RunConfig,
    on_progress: Callable[[Progress], None] = lambda p: None,
    *,
    run_dir: Path | None = None,
    before_sender: Callable[[], None] = lambda: None,
) -> RunResult:
    """Run one experiment end to end; always leaves a run directory with meta.json.

    ``before_sender`` is called once the receiver listens, right before the sender
    is given its address (``bufdemo run`` finishes loading its analysis there); the
    sender's interpreter has been loading beside the receiver's meanwhile.

    Ctrl-C (KeyboardInterrupt) or SIGTERM during the run stops both sides and returns
    a result with ``interrupted=True``; the run directory is complete up to that point.
    """
    run_dir = run_dir or create_run_dir(cfg.out, run_label(cfg))
    ctx = mp.get_context("spawn")
    send_progress = ctx.RawArray("q", PROGRESS_SLOTS)
    recv_progress = ctx.RawArray("q", PROGRESS_SLOTS)
    receiver: mp.process.BaseProcess | None = None
    sender: mp.process.BaseProcess | None = None
    failure: str | None = None
    interrupted = False
    survivor: str | None = None  # the side stopped by us after the other one failed
    t_start = time.monotonic()
    grace = GRACE + cfg.messages * WRITE_SECONDS_PER_ROW
    from bufdemo.experiment.witnesses import Witnesses

    witnesses = Witnesses(cfg, run_dir)
    link: netns.Link | None = None
    queue: netns.QueueSampler | None = None
    read_netstat: Callable[[], dict[str, int] | None] = probes.netstat_counters
    before: dict[str, int] | None = None
    listen, recv_ns, send_ns = LOOPBACK, None, None
    go_send: Connection | None = None
    with StopSignals() as interrupts, contextlib.ExitStack() as cleanup:
        cleanup.callback(witnesses.close)  # every exit path: tcpdump stopped, instance gone
        try:
            if cfg.netns:
                link = cleanup.enter_context(netns.Link(cfg.link()))
                read_netstat = _netns_netstat(link)
                listen = Address(link.plan.receiver_addr, 0)
                recv_ns, send_ns = link.plan.receiver_ns, link.plan.sender_ns
                if cfg.link_rate is not None:
                    queue = netns.QueueSampler(link)
                    queue.start()
                    cleanup.callback(queue.stop)
            before = read_netstat()
            # Both sides start at once, each a fresh interpreter loading bufdemo; the
            # sender then waits for the receiver's address on `go`, sent only once the
            # receiver listens and before_sender() has returned.
            ready_recv, ready_send = ctx.Pipe(duplex=False)
            go_recv, go_send = ctx.Pipe(duplex=False)
            cleanup.callback(go_send.close)  # any exit: a sender still waiting ends
            try:
                receiver = ctx.Process(
                    target=_receiver_child,
                    args=(cfg, run_dir, ready_send, recv_progress, recv_ns, listen),
                    name="bufdemo-receiver",
                )
                sender = ctx.Process(
                    target=_sender_child,
                    args=(cfg, go_recv, run_dir, send_progress, send_ns),
                    name="bufdemo-sender",
                )
                with blocked(), _without_blas_threads():
                    receiver.start()
                    sender.start()
                ready_send.close()
                go_recv.close()
                address = _wait_listening(receiver, ready_recv)
            finally:
                ready_send.close()
                ready_recv.close()
                go_recv.close()
            if isinstance(address, str):
                failure = address
                go_send.close()
            else:
                witnesses.start(address.port)  # before the sender connects: SYN recorded
                before_sender()
                with contextlib.suppress(OSError):  # a sender already dead: _watch says so
                    go_send.send((address.host, address.port))
                go_send.close()
                survivor = _watch(
                    receiver, sender, send_progress, recv_progress, on_progress, t_start
                )
        except KeyboardInterrupt:
            interrupted = True
        interrupts.raising = False  # from here on, Ctrl-C is only counted
        if go_send is not None:
            go_send.close()  # a sender still waiting for the address ends
        _stop([p for p in (sender, receiver) if p is not None], grace)
        if queue is not None:
            queue.stop()
            queue.write(run_dir / runformat.LINK_SAMPLES.file, runformat.LINK_SAMPLES.columns)
        return _conclude(
            cfg,
            run_dir,
            before=before,
            sides=(("sender", sender, send_progress), ("receiver", receiver, recv_progress)),
            failure=failure,
            interrupted=interrupted or interrupts.count > 0,
            survivor=survivor,
            witnesses=witnesses,
            read_netstat=read_netstat,
            link=None if link is None else _link_record(link, queue),
        )


def _netns_netstat(link: netns.Link) -> Callable[[], dict[str, int] | None]:
    """The TcpExt counters of the run's two namespaces, summed (each counts one side)."""

    def read() -> dict[str, int] | None:
        total: dict[str, int] = {}
        for ns in (link.plan.sender_ns, link.plan.receiver_ns):
            text = link.netstat_text(ns)
            counters = None if text is None else probes.parse_netstat(text)
            if counters is None:
                return None
            for k, v in counters.items():
                total[k] = total.get(k, 0) + v
        return total

    return read


def _link_record(link: netns.Link, queue: netns.QueueSampler | None) -> dict[str, Any]:
    record = link.record()
    record["queue_samples"] = None if queue is None else len(queue.rows)
    record["queue_samples_error"] = None if queue is None else queue.error
    record["swept_leftovers"] = [r.name for r in link.swept]
    return record


def _wait_listening(receiver: mp.process.BaseProcess, ready: Connection) -> Address | str:
    """The receiver's address once it listens, or why it never did."""
    deadline = time.monotonic() + READY_TIMEOUT
    while not ready.poll(0.1):
        if not receiver.is_alive():
            break  # a dead child may still have sent its address before dying
        if time.monotonic() > deadline:
            return "the receiver did not start listening"
    try:
        host, port = ready.recv()
    except EOFError:
        return "the receiver failed before listening"
    return Address(host, port)


def _conclude(
    cfg: RunConfig,
    run_dir: Path,
    *,
    before: dict[str, int] | None,
    sides: tuple[tuple[str, mp.process.BaseProcess | None, Any], ...],
    failure: str | None,
    interrupted: bool,
    survivor: str | None = None,
    witnesses: Any = None,
    read_netstat: Callable[[], dict[str, int] | None] = probes.netstat_counters,
    link: dict[str, Any] | None = None,
) -> RunResult:
    """Merge both sides' records into meta.json and say whether the run is complete."""
    after = read_netstat()
    records = {role: _read_side(run_dir, role) for role, _, _ in sides}
    reasons = []
    for role, rec in records.items():
        if rec and rec.get("error"):
            if role == survivor:
                other = "receiver" if role == "sender" else "sender"
                reasons.append(
                    f"{role}: stopped by bufdemo run after the {other} failed ({rec['error']})"
                )
            else:
                reasons.append(f"{role}: {rec['error']}")
    died = False
    for role, proc, _ in sides:
        if records[role] is None and proc is not None and proc.exitcode not in (None, 0):
            died = True  # the cause goes first: the survivor's error is its consequence
            reasons.insert(0, f"{role} process {_exit_description(proc.exitcode)}")
    if failure:
        reasons.insert(0, failure)
    if interrupted:
        reasons.insert(0, "interrupted by the user")
    if died:
        _tidy_after_death(run_dir)
    # Each was written by the side's as_dict(): a SenderRecord / ReceiverRecord.
    send_rec = cast(SenderRecord | None, records["sender"])
    recv_rec = cast(ReceiverRecord | None, records["receiver"])
    complete = (
        not reasons
        and bool(send_rec and send_rec.get("complete"))
        and bool(recv_rec and recv_rec.get("complete"))
    )
    reason = "; ".join(reasons) if reasons else (None if complete else "a side did not finish")
    progress = {role: prog for role, _, prog in sides}
    if witnesses is not None:
        witnesses.finish(send_rec, recv_rec)
    write_meta(
        run_dir,
        cfg,
        sender=send_rec,
        receiver=recv_rec,
        netstat=_netstat_delta(before, after, NETSTAT_SCOPE if link is None else NETNS_SCOPE),
        complete=complete,
        reason=reason,
        last_progress=_last_progress(progress["sender"], progress["receiver"]),
        witnesses=witnesses.records if witnesses is not None else None,
        link=link,
    )
    notes = tuple(witnesses.notes) if witnesses is not None else ()
    return RunResult(run_dir, complete, reason, interrupted, notes)


def _last_progress(send_progress: Any, recv_progress: Any) -> LastProgress:
    """The counts the live display last showed: what is known of a side that died."""
    return {
        "source": "the live progress display of bufdemo run (each side's sampler, every "
        "--sample-interval); a lower bound, the only count left for a side killed "
        "before it wrote its record",
        "sender": {
            "messages": send_progress[PROGRESS_COUNT],
            "blocking_sends": send_progress[PROGRESS_BLOCKING],
        },
        "receiver": {
            "messages": recv_progress[PROGRESS_COUNT],
            "intact": recv_progress[PROGRESS_INTACT],
        },
    }


def _watch(
    receiver: mp.process.BaseProcess,
    sender: mp.process.BaseProcess,
    send_progress: Any,
    recv_progress: Any,
    on_progress: Callable[[Progress], None],
    t_start: float,
) -> str | None:
    """Report progress until both sides end.

    If one side fails, the other may go on while it makes progress (a receiver still
    draining what a killed sender had queued); after GRACE without progress, return
    the survivor's role: the caller stops it, and it writes its logs.
    """

    def snapshot() -> Progress:
        return Progress(
            elapsed=time.monotonic() - t_start,
            sent=send_progress[PROGRESS_COUNT],
            consumed=recv_progress[PROGRESS_COUNT],
            send_queue=send_progress[PROGRESS_OUTQ],
            recv_queue=recv_progress[PROGRESS_INQ],
            blocking_sends=send_progress[PROGRESS_BLOCKING],
            blocked_since_ns=send_progress[PROGRESS_BLOCKED_SINCE],
        )

    last_counts = (-1, -1)
    last_change = time.monotonic()
    while sender.is_alive() or receiver.is_alive():
        on_progress(snapshot())
        now = time.monotonic()
        counts = (send_progress[PROGRESS_COUNT], recv_progress[PROGRESS_COUNT])
        if counts != last_counts:
            last_counts, last_change = counts, now
        failed = any(not p.is_alive() and p.exitcode != 0 for p in (sender, receiver))
        if failed and now - last_change > GRACE:
            return "sender" if sender.is_alive() else "receiver"
        # Sleep until a live side ends or 0.1 s passes (joining an ended sender would
        # return at once and spin a core during the drain phase).
        mp_wait([p.sentinel for p in (sender, receiver) if p.is_alive()], 0.1)
    on_progress(snapshot())
    return None
