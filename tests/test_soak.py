"""Soak: 50 consecutive short runs leave nothing behind in the orchestrating process.

Measured with psutil on this process: open descriptors, threads and child processes
after a warm-up run (which may start multiprocessing's resource tracker once, for good)
and after 50 more. The 200 server connect/disconnect cycles live in test_servers.py.
"""

from __future__ import annotations

import gc
from pathlib import Path

import psutil
import pytest

from bufdemo.experiment.config import RunConfig
from bufdemo.experiment.run import run_experiment

RUNS = 50


def footprint() -> tuple[int, int, list[int]]:
    me = psutil.Process()
    gc.collect()  # a closed-but-unreferenced Connection is not a leak
    return me.num_fds(), me.num_threads(), sorted(c.pid for c in me.children(recursive=True))


@pytest.mark.slow
def test_50_consecutive_short_runs_leak_no_descriptor_thread_or_process(tmp_path: Path) -> None:
    cfg = RunConfig(messages=20, recv_delay=0, out=tmp_path, plot=False)
    assert run_experiment(cfg).complete  # warm-up
    baseline = footprint()
    for i in range(RUNS):
        result = run_experiment(cfg)
        assert result.complete, f"run {i}: {result.reason}"
    assert footprint() == baseline
    run_dirs = list(tmp_path.iterdir())
    assert len(run_dirs) == RUNS + 1  # every run its own directory, none reused
    assert all((d / "meta.json").is_file() and (d / "consumed.csv").is_file() for d in run_dirs)
