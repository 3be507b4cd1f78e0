"""One periodic sample's cost: bufdemo's Sampler against the system calls it makes.

Method: a loopback pair with a few hundred KB queued (the window closed, the queues
still), then in one process, alternated for --rounds rounds, N times each:

- syscalls: the four system calls a sample makes on Linux (SIOCOUTQ, SIOCINQ, TCP_INFO,
  SO_MEMINFO), the queues read into a buffer kept for them as ``probes.RawSample``
  does, results thrown away: the floor;
- one queue ``ioctl`` as ``probes.RawSample`` makes it, into a buffer kept for it, and
  with a fresh bytes argument (as ``probes.queue_out`` does);
- sample: ``Sampler.sample()``, as the sender's loop calls it inline and the thread
  calls it every millisecond (the probes, their answers staged as they came, the lock,
  and the parsing into 27 columns that follows every 1,024 samples, amortized).

Medians of the rounds; the ratio is sample / syscalls.

Then what a busy loop in another thread of the same process loses to a sampler thread
sampling every millisecond (why the send and receive loops sample inline, their threads
parked while they run): a loop that releases the GIL every iteration (an ``os.write``
of one byte to /dev/null, as ``recv_into`` and ``send`` do) counts its iterations for
--seconds alone, then beside the thread, alternated for --rounds rounds.

Last, what a thread costs that only exists: the same loop in a fresh process of its
own, alone, and beside a thread parked on an event (never scheduled), alternated. With
a second thread in the process, the kernel takes the reference-counted path of looking
up the descriptor on every system call, and the C library its multi-threaded paths;
this is why the sender's sampler starts its thread only at the loop's first wait.

    python -m bench.sampler [--rounds 5] [--samples 20000] [--seconds 1]
"""

from __future__ import annotations

import argparse
import fcntl
import os
import socket
import subprocess
import sys
import threading
import time
from array import array
from collections.abc import Callable

from bench.common import median
from bufdemo import probes
from bufdemo.experiment.recorder import Sampler


def _per_call_us(fn: Callable[[], object], n: int) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(n):
        fn()
    return (time.perf_counter_ns() - t0) / n / 1000


def busy_loop(seconds: float) -> float:
    """Iterations per second of a loop that releases the GIL once per iteration."""
    fd = os.open(os.devnull, os.O_WRONLY)
    write, now, byte = os.write, time.perf_counter_ns, b"x"
    try:
        n, t0 = 0, now()
        end = t0 + int(seconds * 1e9)
        while (t := now()) < end:
            write(fd, byte)
            n += 1
        return n / ((t - t0) / 1e9)
    finally:
        os.close(fd)


def beside_sampler(sock: socket.socket, seconds: float) -> float:
    """The busy loop's rate while a Sampler thread samples ``sock`` every 1 ms."""
    sampler = Sampler(sock, 0.001, lambda: 0)
    sampler.start()
    try:
        return busy_loop(seconds)
    finally:
        sampler.stop()
        if not sampler.table.rows:
            raise SystemExit("bench.sampler: the sampler thread took no sample")


def in_fresh_process(seconds: float, parked_thread: bool) -> float:
    """The busy loop's rate in a new process, with or without a parked thread."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.sampler", "--child", "parked" if parked_thread else "alone",
         "--seconds", str(seconds)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return float(out)


def _child(kind: str, seconds: float) -> None:
    never = threading.Event()
    if kind == "parked":
        threading.Thread(target=never.wait, daemon=True).start()
    print(busy_loop(seconds))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--samples", type=int, default=20000)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--child", choices=["alone", "parked"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child, args.seconds)
        return
    if not probes.IS_LINUX:
        raise SystemExit("bench.sampler: the probes are Linux system calls")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    client.setblocking(False)
    try:
        while True:  # fill both buffers: the window closes, the queues stay still
            client.send(b"x" * 65536)
    except BlockingIOError:
        pass
    fd = client.fileno()
    queue = array("i", [0])

    def syscalls() -> None:
        fcntl.ioctl(fd, probes.SIOCOUTQ, queue, True)
        fcntl.ioctl(fd, probes.SIOCINQ, queue, True)
        client.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, probes._TCP_INFO_LEN)
        client.getsockopt(socket.SOL_SOCKET, probes.SO_MEMINFO, probes._MEMINFO.size)

    sampler = Sampler(client, 0.001, lambda: 0)
    floor: list[float] = []
    sample: list[float] = []
    kept: list[float] = []
    fresh: list[float] = []
    for _ in range(args.rounds):
        floor.append(_per_call_us(syscalls, args.samples))
        sample.append(_per_call_us(sampler.sample, args.samples))
        kept.append(
            _per_call_us(lambda: fcntl.ioctl(fd, probes.SIOCOUTQ, queue, True), args.samples)
        )
        fresh.append(
            _per_call_us(lambda: fcntl.ioctl(fd, probes.SIOCOUTQ, b"\0" * 4), args.samples)
        )
    f, s = median(floor), median(sample)
    print(f"one sample, {args.samples:,} x {args.rounds} rounds (medians):")
    print(f"  the four system calls alone  {f:6.2f} us")
    print(f"  Sampler.sample()             {s:6.2f} us   ratio {s / f:.2f}")
    print(
        f"  one SIOCOUTQ into a kept buffer {median(kept):.2f} us, "
        f"with a fresh bytes argument {median(fresh):.2f} us"
    )
    alone: list[float] = []
    beside: list[float] = []
    for _ in range(args.rounds):
        alone.append(busy_loop(args.seconds))
        beside.append(beside_sampler(client, args.seconds))
    a, b = median(alone), median(beside)
    print(f"a busy loop beside a 1 ms sampler thread, {args.seconds:g} s x {args.rounds} rounds:")
    print(f"  alone                      {a:12,.0f} iterations/s")
    print(f"  beside the sampler thread  {b:12,.0f} iterations/s   loses {1 - b / a:6.1%}")
    client.close()
    server.close()
    alone, parked = [], []
    for _ in range(args.rounds):
        alone.append(in_fresh_process(args.seconds, False))
        parked.append(in_fresh_process(args.seconds, True))
    a, b = median(alone), median(parked)
    print(f"the same loop in a fresh process, {args.seconds:g} s x {args.rounds} rounds:")
    print(f"  alone                      {a:12,.0f} iterations/s")
    print(f"  beside a parked thread     {b:12,.0f} iterations/s   loses {1 - b / a:6.1%}")


if __name__ == "__main__":
    main()
