"""Sender overhead: bufdemo's instrumented sender vs a bare ``sendall`` loop.

Method: an unthrottled receiver in another process reads and discards (1 MiB reads, so
it never limits the sender). Each round connects once per variant and sends N messages:

- bare: ``for _ in range(N): sock.sendall(msg)`` with one pre-built message;
- instrumented: bufdemo's ``send_loop`` exactly as ``bufdemo run`` uses it (framing and
  checksums, every send timestamped, queue probes at blocking sends, the 1 ms samples
  taken inline by the loop); also shown without sampling, to separate the two costs.

A and B alternate for ROUNDS rounds, so drift on a noisy machine hits both alike; the
ratio of the median throughputs is reported.

    python -m bench.sender [--messages 100000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import socket
import time
from array import array

from bench.common import drain_receiver, median, send_bare, spread
from bufdemo.experiment.config import RunConfig
from bufdemo.experiment.recorder import BlockingLog, Sampler, SendLog
from bufdemo.experiment.sender import frames_per_block, send_loop
from bufdemo.experiment.wire import FrameBlock


def bare(addr: tuple[str, int], n: int, size: int) -> float:
    msg = b"x" * size
    with socket.create_connection(addr) as sock:
        t0 = time.perf_counter()
        send_bare(sock, n, msg)
        return n / (time.perf_counter() - t0)


def instrumented(addr: tuple[str, int], n: int, size: int, sampling: bool = True) -> float:
    """bufdemo's send loop as `bufdemo run` runs it (gated 1 ms sampler included)."""
    cfg = RunConfig(messages=n, size=size)
    with socket.create_connection(addr) as sock:
        log, blocking, sent = SendLog(n, size), BlockingLog(), array("q", [0])
        block = FrameBlock(size, frames_per_block(size))
        sampler = Sampler(sock, cfg.sample_interval, count=lambda: sent[0], gated=True)
        if sampling:
            sampler.start()
        t0 = time.perf_counter()
        send_loop(sock, cfg, log, blocking, sent, block, sampler if sampling else None)
        rate = n / (time.perf_counter() - t0)
        sampler.stop()
        if log.rows != n:
            raise SystemExit(f"instrumented sender recorded {log.rows} of {n} sends")
        if sampling and sampler.rows < 2:
            raise SystemExit("the sampler took no samples")
        return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"sender overhead: {args.messages:,} messages, {args.rounds} alternating rounds")
    with drain_receiver() as addr:
        for size in (64, 1024):
            rates: dict[str, list[float]] = {"bare": [], "instrumented": [], "unsampled": []}
            for _ in range(args.rounds):
                rates["bare"].append(bare(addr, args.messages, size))
                rates["instrumented"].append(instrumented(addr, args.messages, size))
                rates["unsampled"].append(instrumented(addr, args.messages, size, False))
            b, i = median(rates["bare"]), median(rates["instrumented"])
            u = median(rates["unsampled"])
            print(
                f"  {size:>5} B  bare {b:>9,.0f} msg/s ({spread(rates['bare'])})  "
                f"instrumented {i:>9,.0f} msg/s ({spread(rates['instrumented'])})  "
                f"ratio {i / b:.3f}  (goal >= 0.90; without the 1 ms sampling {u / b:.3f})"
            )


if __name__ == "__main__":
    main()
