"""Pacing fidelity: achieved mean service time / --recv-delay.

Method: a real `bufdemo run` (two processes, loopback, autotuned buffers) per delay, with
enough messages that the receiver is backlogged for ~3 s. The achieved service time is
the spacing of consecutive service ends while the receiver was backlogged
(analysis.service_times), i.e. the pace the sender sees. Plain ``time.sleep(0.001)``
overshoots by ~8% here; bufdemo schedules against absolute deadlines and spins the last
100 us, so overshoot is absorbed instead of accumulated.

With ``--default-run`` it also times the receiver of the default 100,000-message run
(about 100 s): it should finish within 1% of 100 s.

With ``--delays`` only those delays are run, each ``--repeat`` times (a delay near the
receiver's own cost varies from run to run on a shared machine: one run is one sample).
``--detail`` adds, per run, what stopped the receiver: the intervals between service
ends longer than 100 us (how many, their sum, their median), the median interval while
it caught up, the frames it had to wait for (each starts a new schedule: an idle
receiver banks no time), and the share of stops that came right after the loop checked
and recorded a full batch of frames. ``--rcvbuf`` fixes the receiver's buffer (default:
autotuned).

    python -m bench.pacing [--default-run] [--delays 5e-6 ...] [--repeat N] [--detail]
        [--rcvbuf BYTES]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bufdemo import RunConfig, analysis, run_experiment
from bufdemo.experiment.receiver import BATCH_FRAMES, BATCH_NS

# delay -> goal (relative error). 5 us and 20 us: the receiver's own cost per message
# (one recv_into, the checks, the row) must stay below the delay for the pacer to absorb it.
DELAYS = {0.000005: 0.03, 0.00002: 0.03, 0.0001: 0.03, 0.001: 0.01, 0.01: 0.01}
SECONDS_PER_DELAY = 3.0


def sleep_overshoot(delay: float, n: int = 200) -> float:
    """Mean time.sleep(delay) / delay on this machine right now, for comparison."""
    total = 0.0
    for _ in range(n):
        t0 = time.perf_counter()
        time.sleep(delay)
        total += time.perf_counter() - t0
    return total / n / delay


STOP_NS = 100_000  # an interval between service ends longer than this is a stop


def stops(consumed: pd.DataFrame, delay: float) -> str:
    """One line: the stops, the catch-up pace, the frames waited for, and the stops that
    end at a full batch of the paced loop (see --detail)."""
    end = consumed["t_end_ns"].to_numpy(dtype="int64")
    gaps = np.diff(end)
    is_stop = gaps > STOP_NS
    long = gaps[is_stop]
    # The frame after a stop is frame i + 1; a full batch was checked and recorded just
    # before it when i + 1 is a multiple of the batch (exact while the receiver is
    # backlogged: it flushes early only before waiting for data).
    batch = max(1, min(BATCH_FRAMES, BATCH_NS // max(1, round(delay * 1e9))))
    after = np.flatnonzero(is_stop) + 1
    at_batch = float(np.mean(after % batch == 0)) if len(after) else 0.0
    start = consumed["t_start_ns"].to_numpy(dtype="int64")[1:]  # the first has no schedule
    waited = int((start >= consumed["t_read_ns"].to_numpy(dtype="int64")[1:]).sum())
    median_stop = float(np.median(long)) / 1e3 if len(long) else 0.0
    return (
        f"stops > {STOP_NS // 1000} us: {len(long):,}, {long.sum() / 1e9:.3f} s in all, "
        f"median {median_stop:.0f} us; median interval {np.median(gaps) / (delay * 1e9):.2f} D; "
        f"frames waited for: {waited:,}; stops right after a full batch of {batch}: "
        f"{at_batch:.0%}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--default-run", action="store_true", help="also the 100 s default run")
    parser.add_argument("--delays", type=float, nargs="+", default=list(DELAYS), metavar="S")
    parser.add_argument("--repeat", type=int, default=1, metavar="N", help="runs per delay")
    parser.add_argument("--detail", action="store_true", help="what stopped the receiver")
    parser.add_argument("--rcvbuf", type=int, default=None, metavar="BYTES")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="bufdemo-bench-pacing-"))
    print("pacing fidelity: achieved mean service time / --recv-delay (backlogged receiver)")
    for delay in (d for d in args.delays for _ in range(args.repeat)):
        goal = DELAYS.get(delay, 0.03)
        messages = int(SECONDS_PER_DELAY / delay)
        cfg = RunConfig(
            messages=messages, recv_delay=delay, rcvbuf=args.rcvbuf, out=out, plot=False
        )
        consumed = analysis.load_run(run_experiment(cfg).run_dir).consumed
        service = analysis.service_times(consumed)
        ratio = float(service.mean()) / delay
        p01, p99 = (float(service.quantile(q)) / delay for q in (0.01, 0.99))
        plain = sleep_overshoot(delay, n=max(20, int(0.5 / delay) // 10))
        verdict = "meets" if abs(ratio - 1) <= goal else "MISSES"
        print(
            f"  --recv-delay {delay:<7g} {messages:>6,} msgs ({len(service):,} backlogged): "
            f"achieved/requested {ratio:.4f}  [goal within {goal:.0%}: {verdict}]  "
            f"per message p1..p99 {p01:.3f}..{p99:.3f}  (plain time.sleep: {plain:.3f})"
        )
        if args.detail:
            print(f"      {stops(consumed, delay)}")
    if args.default_run:
        result = run_experiment(RunConfig(out=out, plot=False))
        s = analysis.summarize(analysis.load_run(result.run_dir))
        rs = s["receiver_seconds"]
        verdict = "meets" if abs(rs / 100 - 1) <= 0.01 else "MISSES"
        print(
            f"  default run (100,000 x 1 KiB, 1 ms): receiver done at {rs:.3f} s, "
            f"{rs / 100:.4f} of 100 s  [goal within 1%: {verdict}]"
        )
    print(f"  runs kept in {out}")


if __name__ == "__main__":
    main()
