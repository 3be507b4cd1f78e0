"""How far this machine's own speed moves: the bare sender loop against itself.

Every ratio the other benchmarks print compares two runs made one after the other. This
one runs the *same* loop in both places of each pair (an A/A test): `sendall` of one
pre-built message, ``--messages`` times, into a reader in another process doing 1 MiB
reads, as ``bench.cli``'s bare sender does. Any pair's ratio away from 1 is the machine,
so the spread of these ratios is the least spread an A/B ratio of runs this long can
have here, and the 95% interval of their median (``bench.common.median_interval``) is
how close to a goal a verdict over that many rounds can come.

Per run it also prints the loop's CPU time (``time.thread_time``) and the steal time of
its CPU (/proc/stat): CPU time equal to the wall time and no steal mean the loop was
never off its CPU, so what moved was the speed of the CPU itself (a busy neighbour on
the host, its caches, its clock), which no choice of clock in the benchmark removes.

    python -m bench.noise [--pairs 10] [--messages 1000000] [--size 64] [--pin]
"""

from __future__ import annotations

import argparse
import os
import socket
import time

from bench.common import drain_receiver, median, median_interval, send_bare, spread

_STEAL_FIELD = 8  # /proc/stat: cpuN user nice system idle iowait irq softirq steal


def steal_ticks(cpu: int | None) -> int | None:
    """Steal time of ``cpu`` (all CPUs if None) in clock ticks; None where not reported."""
    name = "cpu " if cpu is None else f"cpu{cpu} "
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith(name):
                    fields = line.split()
                    return int(fields[_STEAL_FIELD]) if len(fields) > _STEAL_FIELD else None
    except OSError:
        return None
    return None


def bare_run(addr: tuple[str, int], n: int, size: int, cpu: int | None) -> float:
    """One bare loop, printed with its CPU time and steal: its rate (messages/s)."""
    msg = b"x" * size
    steal0, t0, c0 = steal_ticks(cpu), time.perf_counter_ns(), time.thread_time_ns()
    with socket.create_connection(addr) as sock:  # timed from before it, as bench.cli's
        send_bare(sock, n, msg)
        t1, c1, steal1 = time.perf_counter_ns(), time.thread_time_ns(), steal_ticks(cpu)
    wall = (t1 - t0) / 1e9
    stolen = "" if steal0 is None or steal1 is None else f", steal {steal1 - steal0} ticks"
    print(f"    {n / wall:>11,.0f} msg/s  CPU time {(c1 - c0) / (t1 - t0):.3f} of wall{stolen}")
    return n / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument(
        "--pin", action="store_true", help="the reader on CPU 1, the loop on CPU 0 (as bench.cli)"
    )
    args = parser.parse_args()
    if args.pairs < 1 or args.messages < 1 or args.size < 1:
        parser.error("--pairs, --messages and --size must be at least 1")
    if args.pin and not {0, 1} <= os.sched_getaffinity(0):
        parser.error("--pin needs CPUs 0 and 1")
    cpu = 0 if args.pin else None
    if args.pin:
        os.sched_setaffinity(0, {0})
    print(f"the bare loop against itself: {args.pairs} pairs of {args.messages:,} x {args.size} B")
    rates: list[float] = []
    with drain_receiver(cpu=1 if args.pin else None) as addr:
        for _ in range(2 * args.pairs):
            rates.append(bare_run(addr, args.messages, args.size, cpu))
    ratios = [b / a for a, b in zip(rates[::2], rates[1::2], strict=True)]
    low, high, coverage = median_interval(ratios)
    print(
        f"  rate {median(rates):,.0f} msg/s ({spread(rates)}); second of a pair / first: "
        f"median {median(ratios):.3f} ({min(ratios):.3f} .. {max(ratios):.3f}), the "
        f"median's {coverage:.1%} interval {low:.3f} .. {high:.3f} (1 for a quiet machine)"
    )


if __name__ == "__main__":
    main()
