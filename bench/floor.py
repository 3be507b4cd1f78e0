"""The sender's floor: what a loop that records every send can reach, next to bufdemo's.

All in this process, into a reader in another process (1 MiB reads), alternated for
--rounds rounds, medians compared with the bare ``sendall`` loop of the same rounds:

- ``bare``: ``sock.sendall(msg)`` per message, one pre-built message;
- ``write``: ``os.write(fd, msg)`` per message (the call bufdemo's loop makes);
- ``floor``: ``os.write``, a check of the count, ``stamps.append(perf_counter_ns())``:
  the least a loop that records every send must do;
- ``write+ts``: ``write`` on a socket with ``--timestamps``' SO_TIMESTAMPING flags on
  loopback (SND and ACK), the reports left in the error queue (what the kernel's
  timestamping costs the sender);
- ``write+ts+sched``: the same with SCHED reports too, as ``--timestamps`` asks when
  the connection does not go through ``lo`` (``txstamps.sched_reason``);
- ``write+ts+thread``: the same with a reader thread draining them in this process
  (``txstamps.TxStampReader``, what ``--timestamps`` used to do);
- ``write+ts+process``: the same with the reader process ``bufdemo send --timestamps``
  starts (``txstamps.TxStampProcess``; with ``--pin`` it shares CPU 0 with the sender);
- ``frames-B``: ``floor`` with distinct frames: ``os.write`` of the B frames of one
  block in turn (framed once, never refilled), a check, a clock read appended. What
  sending from B places instead of one costs, before any per-block work (``--blocks``
  sets B; ``frames-1`` is ``floor`` with a real frame);
- ``loop-B``: bufdemo's ``send_loop`` without sampling, frames framed B at a time (the
  default is ``frames_per_block``: 1,024 at 64 B and 1 KiB);
- ``loop+parked``: ``loop-1024`` with a second thread alive in the process, parked on
  an event that is never set (what a sampler thread started at the connection cost);
- ``run_sender``: the whole sender of ``bufdemo send`` without the command line (set-up,
  inline samples, tables), its rate from ``t_connected_ns`` to ``t_done_ns`` as in
  ``bench.cli``;
- ``run_sender+clock``: the same with the clock frames of a by-hand ``bufdemo send``,
  whose answers a thread waits for (this reader never answers: the thread lives through
  the run, as in ``bench.cli``'s sender figure);
- ``run_sender/1s``: ``run_sender`` sampling every second instead of every millisecond
  (what the inline samples cost it);
- ``asyncio``: the sender of ``bufdemo send --mode asyncio`` (``write()`` and
  ``drain()`` per message), its rate as ``run_sender``'s;
- ``asyncio/no-transport-samples``: the same without its transport sampler's thread (the
  transport's buffer, the send queue and RSS every 1 ms): what the asyncio modes'
  sampling costs the sender.

``--breakdown`` instead times, inside bufdemo's ``send_loop`` with a 1 ms sampler, each
piece of the work it does between blocks of frames (framing the next block, storing the
timestamps, the inline sample), alternating a sampler that keeps the kernel's answers raw
(``probes.RawSample``, the default) with one that parses each as it is read: medians per
call, and their share of the sending time.

``--interleave`` instead runs bare, ``bare again``, write, floor, ``frames-B``, ``loop-B``
and ``loop+sampler`` (bufdemo's loop as ``bufdemo send`` runs it: its block size and
sampler) a step of ``--step`` messages at a time (16,384), each in turn, on one
connection, and gives each against bare by step: the median of the per-step ratios and
its 95% interval (``bench.common.median_interval``), and the ratio of the totals. Run
beside each other within a fraction of a second, the variants see the same machine:
``bare again`` against ``bare`` (the same code) stays within 1 – 2%, where whole runs
seconds apart differ by up to 3.4x (``bench.noise``). A step must be long enough for a
variant's buffers to be warm for most of it: with steps of 1,024 messages the other
variants evicted a 1 MiB block of frames before every pass, which a run of bufdemo
never does, and smaller blocks looked 3 – 4.5 points better than they are (within the
noise, with steps of 16,384). ``--only`` keeps bare and the variants named.

``--pin`` puts the reader on CPU 1 and the senders on CPU 0. ``--fresh`` runs each
measurement in a new process of its own: a variant that starts a thread (the
``+thread``, ``+parked`` and ``+clock`` ones) leaves the process slower for every
variant after it, since the C library keeps its multi-threaded paths once a second
thread has existed.

    python -m bench.floor [--messages 200000] [--rounds 5] [--blocks 1024 256] [--pin]
        [--fresh] [--only VARIANT ...]
    python -m bench.floor --breakdown [--pin] [--messages 1000000] [--rounds 3]
    python -m bench.floor --interleave [--pin] [--steps 100] [--step 16384] [--blocks 1024 256]

Instructions per message, which do not move with the machine's load: run one variant
under valgrind at two message counts and divide the difference (the reader, a forked
child, reports its own count on its own line):

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        python -m bench.floor --only floor --sizes 64 --rounds 1 --messages 20000
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from collections.abc import Callable
from itertools import cycle, islice
from pathlib import Path
from typing import Any

from bench.common import (
    drain_receiver,
    in_turn,
    median,
    median_interval,
    recording_floor,
    send_bare,
)
from bufdemo.experiment import txstamps
from bufdemo.experiment.asyncio_sender import run_asyncio_sender
from bufdemo.experiment.config import Mode, RunConfig
from bufdemo.experiment.recorder import PROGRESS_BLOCKING, BlockingLog, Sampler, SendLog
from bufdemo.experiment.sender import SenderResult, frames_per_block, run_sender, send_loop
from bufdemo.experiment.wire import FrameBlock
from bufdemo.net import Address

Variant = Callable[[tuple[str, int], int, int], float]


def _timed(addr: tuple[str, int], n: int, body: Callable[[socket.socket], None]) -> float:
    with socket.create_connection(addr) as sock:
        t0 = time.perf_counter()
        body(sock)
        return n / (time.perf_counter() - t0)


def send_write(sock: socket.socket, n: int, msg: bytes) -> None:
    """``os.write(fd, msg)``, ``n`` times: the call bufdemo's loop makes."""
    fd, w = sock.fileno(), os.write
    for _ in range(n):
        w(fd, msg)


def send_frames(sock: socket.socket, n: int, frame_block: FrameBlock) -> None:
    """The recording floor with distinct frames: ``n`` of the block's frames in turn (as
    framed, never refilled), each write checked and followed by a clock read appended."""
    fd, w, now, size = sock.fileno(), os.write, time.perf_counter_ns, frame_block.size
    stamps: list[int] = []
    stamp = stamps.append
    for view in islice(cycle(frame_block.views), n):  # as cheap a step as range()'s
        if w(fd, view) != size:
            raise SystemExit("a partial write: the reader did not keep up")
        stamp(now())


def bare(addr: tuple[str, int], n: int, size: int) -> float:
    msg = b"x" * size
    return _timed(addr, n, lambda sock: send_bare(sock, n, msg))


def write(addr: tuple[str, int], n: int, size: int) -> float:
    msg = b"x" * size
    return _timed(addr, n, lambda sock: send_write(sock, n, msg))


def floor(addr: tuple[str, int], n: int, size: int) -> float:
    return _timed(addr, n, lambda sock: recording_floor(sock, n, size))


def stamped(reader_kind: type[txstamps.TxStampReader] | None, sched: bool = False) -> Variant:
    def variant(addr: tuple[str, int], n: int, size: int) -> float:
        msg = b"x" * size
        with socket.create_connection(addr) as sock:
            if (why := txstamps.enable(sock, sched)) is not None:
                raise SystemExit(why)
            reader = (reader_kind or txstamps.TxStampReader)(sock, 0)
            if reader_kind is not None:
                reader.start()
            fd, w = sock.fileno(), os.write
            t0 = time.perf_counter()
            for _ in range(n):
                w(fd, msg)
            rate = n / (time.perf_counter() - t0)
            if reader_kind is not None:
                reader.stop()
            return rate

    return variant


def frames(block: int) -> Variant:
    def variant(addr: tuple[str, int], n: int, size: int) -> float:
        frame_block = FrameBlock(size, block)
        frame_block.fill(0)
        return _timed(addr, n, lambda sock: send_frames(sock, n, frame_block))

    return variant


def loop(block: int) -> Variant:
    def variant(addr: tuple[str, int], n: int, size: int) -> float:
        cfg = RunConfig(messages=n, size=size)
        log, blocking, sent = SendLog(n, size), BlockingLog(), array("q", [0])
        frames = FrameBlock(size, block)
        return _timed(addr, n, lambda sock: send_loop(sock, cfg, log, blocking, sent, frames))

    return variant


def parked(inner: Variant) -> Variant:
    def variant(addr: tuple[str, int], n: int, size: int) -> float:
        never = threading.Event()
        threading.Thread(target=never.wait, daemon=True).start()
        try:
            return inner(addr, n, size)
        finally:
            never.set()

    return variant


# One whole sender: given its configuration, where to connect, its run directory and the
# result to fill (bufdemo's run_sender or run_asyncio_sender, with their options bound).
SenderRun = Callable[[RunConfig, Address, Path, SenderResult], object]


def blocking_sender(clock_sync: bool = False) -> SenderRun:
    return lambda cfg, to, run_dir, result: run_sender(
        cfg, to, run_dir, None, result, clock_sync=clock_sync
    )


def asyncio_sender(sample_transport: bool = True) -> SenderRun:
    return lambda cfg, to, run_dir, result: run_asyncio_sender(
        cfg, to, run_dir, None, result, sample_transport=sample_transport
    )


def whole_sender(out: Path, run: SenderRun, **settings: Any) -> Variant:
    """A whole sender's rate from ``t_connected_ns`` to ``t_done_ns``, as in bench.cli;
    ``settings`` are RunConfig's (``sample_interval``, ``mode``)."""

    def variant(addr: tuple[str, int], n: int, size: int) -> float:
        result = SenderResult()
        cfg = RunConfig(messages=n, size=size, out=out, **settings)
        run(cfg, Address(*addr), Path(tempfile.mkdtemp(dir=out)), result)
        if result.t_done_ns is None or result.t_connected_ns is None:
            raise SystemExit(f"the sender did not finish: {result.error}")
        return n / ((result.t_done_ns - result.t_connected_ns) / 1e9)

    return variant


def variants_of(blocks: list[int], out: Path) -> dict[str, Variant]:
    variants: dict[str, Variant] = {"bare": bare, "write": write, "floor": floor}
    variants |= {
        "write+ts": stamped(None),
        "write+ts+sched": stamped(None, sched=True),
        "write+ts+thread": stamped(txstamps.TxStampReader),
        "write+ts+process": stamped(txstamps.TxStampProcess),
    }
    variants |= {f"frames-{b}": frames(b) for b in [1, *blocks]}
    variants |= {f"loop-{b}": loop(b) for b in blocks}
    variants["loop+parked"] = parked(loop(1024))
    variants["run_sender"] = whole_sender(out, blocking_sender())
    variants["run_sender+clock"] = whole_sender(out, blocking_sender(clock_sync=True))
    variants["run_sender/1s"] = whole_sender(out, blocking_sender(), sample_interval=1.0)
    asyncio_mode = {"mode": Mode.ASYNCIO}
    variants["asyncio"] = whole_sender(out, asyncio_sender(), **asyncio_mode)
    variants["asyncio/no-transport-samples"] = whole_sender(
        out, asyncio_sender(sample_transport=False), **asyncio_mode
    )
    return variants


def breakdown(addr: tuple[str, int], n: int, size: int, raw: bool) -> dict[str, float]:
    """One send_loop of ``n`` frames with a 1 ms sampler, each piece of the work between
    blocks timed: median microseconds a call, and (``"% <piece>"``) the share of the
    sending time all its calls took. "sample" is every ``sample_if_due`` call, those that
    find no sample due included (few: a block takes longer than the interval)."""
    cfg = RunConfig(messages=n, size=size)
    log, blocking, sent = SendLog(n, size), BlockingLog(), array("q", [0])
    frame_block = FrameBlock(size, 1024)
    now = time.perf_counter_ns
    spent: dict[str, list[int]] = {"framing": [], "storing": [], "sample": []}

    def timed(call: Callable[..., Any], into: list[int]) -> Callable[..., Any]:
        def run(*args: Any) -> Any:
            t0 = now()
            result = call(*args)
            into.append(now() - t0)
            return result

        return run

    with socket.create_connection(addr) as sock:
        sampler = Sampler(sock, 0.001, count=lambda: sent[0], gated=True, raw=raw)
        frame_block.fill = timed(frame_block.fill, spent["framing"])  # type: ignore[method-assign]
        log.store = timed(log.store, spent["storing"])  # type: ignore[method-assign]
        sampler.sample_if_due = timed(sampler.sample_if_due, spent["sample"])  # type: ignore[method-assign]
        t0 = now()
        send_loop(sock, cfg, log, blocking, sent, frame_block, sampler)
        span = now() - t0
    out = {name: median([float(v) for v in ns]) / 1e3 for name, ns in spent.items()}
    out |= {f"% {name}": sum(ns) / span * 100 for name, ns in spent.items()}
    return out


def print_breakdown(args: argparse.Namespace) -> None:
    print(
        f"work between blocks inside send_loop: {args.messages:,} messages, {args.rounds} "
        "rounds (medians of rounds; us a call, % of the sending time)"
    )
    with drain_receiver(cpu=1 if args.pin else None) as addr:
        for size in args.sizes:
            got: dict[bool, list[dict[str, float]]] = {True: [], False: []}
            for _ in range(args.rounds):
                for raw in (True, False):
                    got[raw].append(breakdown(addr, args.messages, size, raw))
            for raw, label in ((True, "raw samples"), (False, "parsed samples")):
                cells = "  ".join(
                    f"{name} {median([r[name] for r in got[raw]]):.1f} us "
                    f"({median([r['% ' + name] for r in got[raw]]):.1f}%)"
                    for name in ("framing", "storing", "sample")
                )
                print(f"  {size:>5} B  {label:<15} {cells}")


# -- step by step, on one connection ------------------------------------------------------

STEP = 16_384  # messages a step: 16 of bufdemo's blocks at 64 B and 1 KiB (module docstring)


def steps_of(
    sock: socket.socket, size: int, blocks: list[int], step: int = STEP
) -> tuple[dict[str, Callable[[], object]], Sampler]:
    """For ``--interleave``: each variant as a step of ``step`` messages on ``sock``, and the
    sampler of ``loop+sampler`` (to stop at the end). ``bare again`` is ``bare`` itself: its
    ratio to ``bare`` is the method's own error. ``frames-B`` and ``loop-B`` are the
    variants of the same names (module docstring), one per ``blocks``; ``loop+sampler`` is
    bufdemo's loop as `bufdemo send` runs it: blocks of ``frames_per_block``, and the
    gated sampler at the default interval."""
    msg = b"x" * size

    def frames(block: int) -> Callable[[], object]:
        frame_block = FrameBlock(size, block)
        frame_block.fill(0)
        return lambda: send_frames(sock, step, frame_block)

    cfg = RunConfig(messages=step, size=size)
    log, blocking, sent = SendLog(step, size), BlockingLog(), array("q", [0])

    def loop(block: int, sampler: Sampler | None = None) -> Callable[[], object]:
        frame_block = FrameBlock(size, block)
        return lambda: send_loop(sock, cfg, log, blocking, sent, frame_block, sampler)

    sampler = Sampler(
        sock,
        cfg.sample_interval,
        count=lambda: sent[0],
        counters={PROGRESS_BLOCKING: lambda: len(blocking)},
        gated=True,
    )
    sampler.start()  # as run_sender does: the thread itself starts at the first wait
    steps: dict[str, Callable[[], object]] = {
        "bare": lambda: send_bare(sock, step, msg),
        "bare again": lambda: send_bare(sock, step, msg),
        "write": lambda: send_write(sock, step, msg),
        "floor": lambda: recording_floor(sock, step, size),
    }
    steps |= {f"frames-{b}": frames(b) for b in blocks}
    steps |= {f"loop-{b}": loop(b) for b in blocks}
    steps["loop+sampler"] = loop(frames_per_block(size), sampler)
    return steps, sampler


def interleaved(
    addr: tuple[str, int],
    size: int,
    steps: int,
    blocks: list[int],
    step: int = STEP,
    only: list[str] | None = None,
) -> dict[str, list[int]]:
    """Nanoseconds of each variant's steps: one connection, one step of each variant in
    turn (the order reversed every other time, :func:`bench.common.in_turn`), ``steps``
    times. Each step of a variant runs beside the others' in the same milliseconds, so a
    change of the machine's speed, which moves whole runs seconds apart by up to 3.4x
    here (``bench.noise``), falls on all of them alike."""
    now = time.perf_counter_ns
    with socket.create_connection(addr) as sock:
        variants, sampler = steps_of(sock, size, blocks, step)
        if only:  # bare always: the others are given against it
            if unknown := set(only) - set(variants):
                raise SystemExit(f"--only: no such variant: {', '.join(sorted(unknown))}")
            variants = {k: v for k, v in variants.items() if k in {"bare", *only}}
        spent: dict[str, list[int]] = {name: [] for name in variants}
        try:
            for i in range(steps):
                for name in in_turn(list(variants), i):
                    run = variants[name]
                    t0 = now()
                    run()
                    spent[name].append(now() - t0)
        finally:
            sampler.stop()
    return spent


def print_interleaved(args: argparse.Namespace) -> None:
    print(
        f"the sender's floor, step by step on one connection: {args.steps:,} steps of "
        f"{args.step:,} messages for each variant, in turn"
    )
    with drain_receiver(cpu=1 if args.pin else None) as addr:
        for size in args.sizes:
            spent = interleaved(addr, size, args.steps, args.blocks, args.step, args.only)
            bare_ns = spent["bare"]
            rate = args.step * len(bare_ns) / (sum(bare_ns) / 1e9)
            cells = []
            for name, ns in spent.items():
                if name == "bare":
                    continue
                by_step = [b / v for b, v in zip(bare_ns, ns, strict=True)]
                low, high, coverage = median_interval(by_step)
                cells.append(
                    f"{name} {sum(bare_ns) / sum(ns):.3f} (by step {median(by_step):.3f}, "
                    f"{coverage:.0%} interval {low:.3f} .. {high:.3f})"
                )
            print(f"  {size:>5} B  bare {rate:>9,.0f} msg/s  " + "  ".join(cells))


def in_fresh_process(
    name: str, addr: tuple[str, int], n: int, size: int, args: argparse.Namespace, out: Path
) -> float:
    """One measurement of variant ``name`` in a new process (``--child``)."""
    argv = [sys.executable, "-m", "bench.floor", "--child", name, "--to", f"{addr[0]}:{addr[1]}",
            "--messages", str(n), "--sizes", str(size), "--out", str(out),
            "--blocks", *map(str, args.blocks)]  # fmt: skip
    if args.pin:
        argv.append("--pin")
    return float(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--blocks", type=int, nargs="+", default=[1024])
    parser.add_argument("--pin", action="store_true", help="reader on CPU 1, senders on CPU 0")
    parser.add_argument("--fresh", action="store_true", help="each measurement in a new process")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 1024])
    parser.add_argument(
        "--only", nargs="+", help="these variants only (rates, no ratios without bare)"
    )
    parser.add_argument(
        "--breakdown", action="store_true", help="time the work between blocks, piece by piece"
    )
    parser.add_argument(
        "--interleave",
        action="store_true",
        help="bare, the floor and bufdemo's loop a step at a time, in turn, on one connection",
    )
    parser.add_argument(
        "--steps", type=int, default=100, help="--interleave: steps of each variant"
    )
    parser.add_argument("--step", type=int, default=STEP, help="--interleave: messages a step")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # one measurement, for --fresh
    parser.add_argument("--to", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pin:
        os.sched_setaffinity(0, {0})
    if args.breakdown:
        print_breakdown(args)
        return
    if args.interleave:
        print_interleaved(args)
        return
    if args.child:
        host, port = args.to.rsplit(":", 1)
        variant = variants_of(args.blocks, args.out)[args.child]
        print(variant((host, int(port)), args.messages, args.sizes[0]))
        return
    out = Path(tempfile.mkdtemp(prefix="bufdemo-bench-floor-"))
    variants = variants_of(args.blocks, out)
    if args.only:
        variants = {k: v for k, v in variants.items() if k in args.only}
    where = "each in a new process" if args.fresh else "in this process"
    print(f"the sender's floor: {args.messages:,} messages, {args.rounds} rounds, {where}")
    with drain_receiver(cpu=1 if args.pin else None) as addr:
        for size in args.sizes:
            rates: dict[str, list[float]] = {name: [] for name in variants}
            for _ in range(args.rounds):
                for name, variant in variants.items():
                    if args.fresh:
                        rate = in_fresh_process(name, addr, args.messages, size, args, out)
                    else:
                        rate = variant(addr, args.messages, size)
                    rates[name].append(rate)
            if "bare" not in rates:
                cells = "  ".join(f"{k} {median(v):,.0f} msg/s" for k, v in rates.items())
                print(f"  {size:>5} B  {cells}")
                continue
            b = median(rates["bare"])
            cells = "  ".join(f"{k} {median(v) / b:.3f}" for k, v in rates.items() if k != "bare")
            print(f"  {size:>5} B  bare {b:>9,.0f} msg/s  {cells}")
    print(f"  runs kept in {out}")


if __name__ == "__main__":
    main()
