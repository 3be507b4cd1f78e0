"""Scale: wall time and peak memory of `bufdemo run --recv-delay 0` at 10k, 100k, 1M
messages, then analysis (load + summary + timeline plot) of the 100k and 1M runs.

Method: each run is the real command in a subprocess (`python -m demo run
--recv-delay 0 --no-plot`); a 20 ms poller sums the RSS of its whole process tree
(CLI + sender + receiver) and keeps the peak. Analysis runs in a fresh subprocess per
run directory, which reports its own wall time per step and its peak RSS above the
RSS it had after importing analysis. Bytes per recorded send: the sender's in-memory
columns (demo.recorder.SendLog) and sends.csv on disk.

    python -m bench.scale [--sizes 10000 100000 1000000]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bufdemo.experiment.recorder import SendLog

POLL = 0.02

ANALYSE = r"""
import json, resource, sys, time
import psutil
from bufdemo import analysis
from matplotlib.figure import Figure
base = psutil.Process().memory_info().rss
t0 = time.perf_counter()
run = analysis.load_run(sys.argv[1])
t1 = time.perf_counter()
summary = analysis.summarize(run)
t2 = time.perf_counter()
fig = analysis.timeline_figure(run)
fig.savefig(sys.argv[2], dpi=110)
t3 = time.perf_counter()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"load": t1 - t0, "summary": t2 - t1, "plot": t3 - t2,
                  "peak_above_baseline": peak - base, "rows": len(run.sends)}))
"""


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def timed_run(messages: int, out: Path) -> tuple[float, int, Path]:
    t0 = time.perf_counter()
    popen = subprocess.Popen(
        [sys.executable, "-m", "bufdemo", "run", "--messages", str(messages), "--recv-delay",
         "0", "--no-plot", "--json", "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    proc = psutil.Process(popen.pid)
    peak = 0
    while popen.poll() is None:
        peak = max(peak, tree_rss(proc))
        time.sleep(POLL)
    wall = time.perf_counter() - t0
    assert popen.stdout is not None
    summary = json.loads(popen.stdout.read())
    popen.stdout.close()
    if not (summary["complete"] and summary["messages_intact"] == messages):
        raise SystemExit(f"run of {messages:,} messages did not complete: {summary}")
    newest = max(out.iterdir(), key=lambda p: p.stat().st_mtime)
    return wall, peak, newest


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="bufdemo-bench-scale-"))
    # What the sender keeps per send while it runs: one timestamp (the rest of sends.csv
    # is derived when it is written); the current block's list of stamps comes on top.
    in_memory = SendLog(1, 1024).t_ns.itemsize
    print("scale: bufdemo run --recv-delay 0 (sender + receiver + CLI, whole process tree)")
    runs: dict[int, Path] = {}
    measured: list[tuple[int, float, int]] = []
    for n in args.sizes:
        wall, peak, run_dir = timed_run(n, out)
        runs[n] = run_dir
        measured.append((n, wall, peak))
        on_disk = (run_dir / "sends.csv").stat().st_size / n
        print(
            f"  {n:>9,} msgs: wall {wall:6.2f} s = {wall / n * 1e6:6.2f} us/msg; "
            f"peak RSS {peak / 2**20:7.1f} MiB = {peak / n:9,.0f} B/msg; "
            f"sends.csv {on_disk:.1f} B/send on disk"
        )
    # Fixed costs (interpreters, imports) dominate small runs; growth shows at the margin.
    for (n0, w0, p0), (n1, w1, p1) in itertools.pairwise(measured):
        dn = n1 - n0
        print(
            f"  marginal {n0:,} -> {n1:,}: {(w1 - w0) / dn * 1e6:.2f} us/msg, "
            f"{(p1 - p0) / dn:,.0f} B/msg of peak RSS"
        )
    print(f"  recorded send in memory: {in_memory} B/send (goal <= 64)")
    print("analysis: load + summary + timeline plot, fresh process per run")
    for n in (m for m in (100_000, 1_000_000) if m in runs):
        png = out / f"timeline-{n}.png"
        proc = subprocess.run(
            [sys.executable, "-c", ANALYSE, str(runs[n]), str(png)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        r = json.loads(proc.stdout)
        total = r["load"] + r["summary"] + r["plot"]
        goal_s, goal_b = (2.0, None) if n == 100_000 else (10.0, 200)
        per_msg = r["peak_above_baseline"] / n
        verdict = "meets" if total <= goal_s and (goal_b is None or per_msg <= goal_b) else "MISSES"
        print(
            f"  {n:>9,} msgs: load {r['load']:.2f} s, summary {r['summary']:.2f} s, "
            f"plot {r['plot']:.2f} s = {total:.2f} s; peak memory "
            f"{r['peak_above_baseline'] / 2**20:.0f} MiB = {per_msg:.0f} B/msg  "
            f"[goal <= {goal_s:g} s" + (f", <= {goal_b} B/msg" if goal_b else "") + f": {verdict}]"
        )
    print(f"  runs kept in {out}")


if __name__ == "__main__":
    main()
