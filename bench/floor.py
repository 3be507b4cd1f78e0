"""The sender's floor: what a loop that records every send can reach, next to bufdemo's.

All in this process, into a reader in another process (1 MiB reads), alternated for
--rounds rounds, medians compared with the bare ``sendall`` loop of the same rounds:

- ``bare``: ``sock.sendall(msg)`` per message, one pre-built message;
- ``write``: ``os.write(fd, msg)`` per message (the call bufdemo's loop makes);
- ``floor``: ``os.write``, a check of the count, ``stamps.append(perf_counter_ns())``:
  the least a loop that records every send must do;
- ``write+ts``: ``write`` on a socket with ``--timestamps``' SO_TIMESTAMPING flags, the
  reports left in the error queue (what the kernel's timestamping costs the sender);
- ``write+ts+thread``: the same with a reader thread draining them in this process
  (``txstamps.TxStampReader``, what ``--timestamps`` used to do);
- ``write+ts+process``: the same with the reader process ``bufdemo send --timestamps``
  starts (``txstamps.TxStampProcess``; with ``--pin`` it shares CPU 0 with the sender);
- ``loop-B``: bufdemo's ``send_loop`` without sampling, frames framed B at a time (the
  default is ``frames_per_block``: 1,024 at 64 B and 1 KiB);
- ``run_sender``: the whole sender of ``bufdemo send`` (connection set-up, sampler,
  clock frames, tables), its rate from ``t_connected_ns`` to ``t_done_ns`` as in
  ``bench.cli``: the command without the command line.

``--pin`` puts the reader on CPU 1 and this process on CPU 0.

    python -m bench.floor [--messages 200000] [--rounds 5] [--blocks 1024 256] [--pin]

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
import tempfile
import time
from array import array
from collections.abc import Callable
from pathlib import Path

from bench.common import drain_receiver, median, recording_floor
from bufdemo.experiment import txstamps
from bufdemo.experiment.config import RunConfig
from bufdemo.experiment.recorder import BlockingLog, SendLog
from bufdemo.experiment.sender import SenderResult, run_sender, send_loop
from bufdemo.experiment.wire import FrameBlock
from bufdemo.net import Address

Variant = Callable[[tuple[str, int], int, int], float]


def _timed(addr: tuple[str, int], n: int, body: Callable[[socket.socket], None]) -> float:
    with socket.create_connection(addr) as sock:
        t0 = time.perf_counter()
        body(sock)
        return n / (time.perf_counter() - t0)


def bare(addr: tuple[str, int], n: int, size: int) -> float:
    msg = b"x" * size

    def body(sock: socket.socket) -> None:
        sendall = sock.sendall
        for _ in range(n):
            sendall(msg)

    return _timed(addr, n, body)


def write(addr: tuple[str, int], n: int, size: int) -> float:
    msg = b"x" * size

    def body(sock: socket.socket) -> None:
        fd, w = sock.fileno(), os.write
        for _ in range(n):
            w(fd, msg)

    return _timed(addr, n, body)


def floor(addr: tuple[str, int], n: int, size: int) -> float:
    return _timed(addr, n, lambda sock: recording_floor(sock, n, size))


def stamped(reader_kind: type[txstamps.TxStampReader] | None) -> Variant:
    def variant(addr: tuple[str, int], n: int, size: int) -> float:
        msg = b"x" * size
        with socket.create_connection(addr) as sock:
            if (why := txstamps.enable(sock)) is not None:
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


def loop(block: int) -> Variant:
    def variant(addr: tuple[str, int], n: int, size: int) -> float:
        cfg = RunConfig(messages=n, size=size)
        log, blocking, sent = SendLog(n, size), BlockingLog(), array("q", [0])
        frames = FrameBlock(size, block)
        return _timed(addr, n, lambda sock: send_loop(sock, cfg, log, blocking, sent, frames))

    return variant


def whole_sender(out: Path) -> Variant:
    def variant(addr: tuple[str, int], n: int, size: int) -> float:
        result = SenderResult()
        run_dir = Path(tempfile.mkdtemp(dir=out))
        run_sender(RunConfig(messages=n, size=size, out=out), Address(*addr), run_dir, None, result)
        if result.t_done_ns is None or result.t_connected_ns is None:
            raise SystemExit(f"run_sender did not finish: {result.error}")
        return n / ((result.t_done_ns - result.t_connected_ns) / 1e9)

    return variant


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--blocks", type=int, nargs="+", default=[1024])
    parser.add_argument("--pin", action="store_true", help="reader on CPU 1, senders on CPU 0")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 1024])
    parser.add_argument(
        "--only", nargs="+", help="these variants only (rates, no ratios without bare)"
    )
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="bufdemo-bench-floor-"))
    variants: dict[str, Variant] = {"bare": bare, "write": write, "floor": floor}
    variants |= {
        "write+ts": stamped(None),
        "write+ts+thread": stamped(txstamps.TxStampReader),
        "write+ts+process": stamped(txstamps.TxStampProcess),
    }
    variants |= {f"loop-{b}": loop(b) for b in args.blocks}
    variants["run_sender"] = whole_sender(out)
    if args.only:
        variants = {k: v for k, v in variants.items() if k in args.only}
    if args.pin:
        os.sched_setaffinity(0, {0})
    print(f"the sender's floor: {args.messages:,} messages, {args.rounds} alternated rounds")
    with drain_receiver(cpu=1 if args.pin else None) as addr:
        for size in args.sizes:
            rates: dict[str, list[float]] = {name: [] for name in variants}
            for _ in range(args.rounds):
                for name, variant in variants.items():
                    rates[name].append(variant(addr, args.messages, size))
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
