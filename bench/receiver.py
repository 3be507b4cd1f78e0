"""The receiver's own cost per message: bufdemo's loops against a bare ``recv_into``.

Method: ~3 MB of frames are written into a socket pair first (the sender thread is done
before the clock starts), then the reader consumes them, in one process:

- bare: ``recv_into(buf, size, MSG_WAITALL)`` per message, nothing else;
- one at a time: bufdemo's receive loop with a 1 ns --recv-delay (one frame per
  ``recv_into``, every check, a consumed row per message, the pacer; it never sleeps);
- bulk: bufdemo's receive loop at --recv-delay 0 (as many frames per ``recv_into`` as
  the kernel holds, checked as a block).

Then the block check alone, per frame, on 256 frames already in memory: the whole-block
comparison with the frames expected next (what a bufdemo sender's stream takes) against
the field-by-field numpy checks (what any other stream takes). And a full batch of the
paced loop (``--recv-delay`` > 0) as its loop pays for it at once: 256 frames checked
and their three times recorded (``receiver._flush``), in microseconds per batch.

Alternated for --rounds rounds; medians compared. Nothing else runs, so this is the
receiver's ceiling; a loaded machine inflates all three alike. Under valgrind
(``valgrind --tool=callgrind python -m bench.receiver --rounds 1``) the instruction
counts are repeatable on a busy machine.

    python -m bench.receiver [--rounds 5]
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
from collections.abc import Callable

from bench.common import median
from bufdemo.experiment.framecheck import EXPECTED_MISSES, FrameChecker
from bufdemo.experiment.receiver import ReceiverResult, _flush, receive_loop
from bufdemo.experiment.recorder import ConsumedLog
from bufdemo.experiment.wire import FrameBlock, Hello

PREFILL = 3_000_000  # bytes queued before the clock starts (fits the socket pair's buffers)
BUFFER = 8 << 20


def prefilled(size: int) -> tuple[socket.socket, int]:
    """A socket with PREFILL bytes of frames waiting, its peer already closed."""
    n = PREFILL // size
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER)
    block = FrameBlock(size, n)
    block.fill(0)

    def write() -> None:
        with a:
            a.sendall(block.buf)

    writer = threading.Thread(target=write)
    writer.start()
    writer.join()
    return b, n


def bare(size: int) -> float:
    sock, n = prefilled(size)
    buf = bytearray(size)
    recv_into, waitall = sock.recv_into, socket.MSG_WAITALL
    t0 = time.perf_counter_ns()
    while recv_into(buf, size, waitall):
        pass
    t1 = time.perf_counter_ns()
    sock.close()
    return (t1 - t0) / n / 1e3


def bufdemo(size: int, delay: float) -> float:
    sock, n = prefilled(size)
    log, result = ConsumedLog(n), ReceiverResult()
    t0 = time.perf_counter_ns()
    receive_loop(sock, Hello(b"", n, size), delay, log, result)
    t1 = time.perf_counter_ns()
    sock.close()
    if result.intact != n:
        raise SystemExit(f"receiver: {result.intact} of {n} messages intact")
    return (t1 - t0) / n / 1e3


def block_check(size: int, whole: bool, frames: int = 256, reps: int = 200) -> float:
    """us per frame to check blocks of ``frames`` clean frames, compared whole or not."""
    block = FrameBlock(size, frames * (reps + 1))
    block.fill(0)
    checker = FrameChecker(size)
    if not whole:
        checker._expect_misses = EXPECTED_MISSES  # as after a stream of other payloads
    chunks = [
        bytearray(block.buf[k * frames * size : (k + 1) * frames * size]) for k in range(reps + 1)
    ]
    checker.check_block(chunks[0], frames)  # learns the reference payload
    t0 = time.perf_counter_ns()
    for chunk in chunks[1:]:
        if not checker.check_block(chunk, frames).intact.all():
            raise SystemExit("block check: a clean frame was not intact")
    return (time.perf_counter_ns() - t0) / (reps * frames) / 1e3


def batch_flush(size: int, frames: int = 256, reps: int = 200) -> float:
    """us to check and record one full batch of the paced loop (clean frames)."""
    block = FrameBlock(size, frames * (reps + 1))
    block.fill(0)
    chunks = [
        bytearray(block.buf[k * frames * size : (k + 1) * frames * size]) for k in range(reps + 1)
    ]
    checker, log, result = FrameChecker(size), ConsumedLog(frames * (reps + 1)), ReceiverResult()
    times = [time.perf_counter_ns() + j for j in range(frames)]
    _flush(chunks[0], frames, 0, checker, log, result, times, times, times)  # learns the payload
    t0 = time.perf_counter_ns()
    for chunk in chunks[1:]:
        _flush(chunk, frames, 0, checker, log, result, times, times, times)
    elapsed = time.perf_counter_ns() - t0
    if result.intact != frames * (reps + 1):
        raise SystemExit(f"batch flush: {result.intact} of {frames * (reps + 1)} intact")
    return elapsed / reps / 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"receiver cost per message, from a prefilled socket pair, {args.rounds} rounds")
    variants: dict[str, Callable[[int], float]] = {
        "bare": bare,
        "one at a time": lambda size: bufdemo(size, 1e-9),
        "bulk (delay 0)": lambda size: bufdemo(size, 0.0),
    }
    for size in (64, 1024):
        costs: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, measure in variants.items():
                costs[name].append(measure(size))
        b = median(costs["bare"])
        parts = [f"{name} {median(c):.2f} us ({median(c) / b:.2f}x)" for name, c in costs.items()]
        print(f"  {size:>5} B  " + "  ".join(parts))
    print("block check per frame, 256-frame blocks in memory: compared whole / field by field")
    for size in (64, 1024):
        whole = median([block_check(size, True) for _ in range(args.rounds)])
        fields = median([block_check(size, False) for _ in range(args.rounds)])
        print(
            f"  {size:>5} B  whole {whole:.3f} us  fields {fields:.3f} us ({fields / whole:.1f}x)"
        )
    print("a full batch of the paced loop, 256 frames checked and recorded:")
    for size in (64, 1024):
        print(f"  {size:>5} B  {median([batch_flush(size) for _ in range(args.rounds)]):.1f} us")


if __name__ == "__main__":
    main()
