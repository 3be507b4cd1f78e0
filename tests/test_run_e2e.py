"""A real run end to end: two processes, real sockets, buffers small enough to block.

These tests assert what the kernel and the service model guarantee, never how fast
anything went.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import subprocess
import sys
from collections import defaultdict
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bufdemo import analysis
from bufdemo.experiment.config import Mode, RunConfig
from bufdemo.experiment.run import Progress, _without_blas_threads, run_experiment
from tests.conftest import require_tool
from tests.procs import wait_until

pytestmark = pytest.mark.slow

BUFDEMO = [sys.executable, "-m", "bufdemo"]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3,000 x 1 KiB, SO_SNDBUF/SO_RCVBUF 16 KiB requested, 0.2 ms per message."""
    out = tmp_path_factory.mktemp("runs")
    proc = subprocess.run(
        [
            *BUFDEMO,
            "run",
            "--messages", "3000",
            "--sndbuf", "16384",
            "--rcvbuf", "16384",
            "--recv-delay", "0.0002",
            "--out", str(out),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)  # stdout carries only the JSON
    (run_dir,) = out.iterdir()
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    return run_dir


def test_every_message_arrives_intact_and_the_sender_stalled(small_run: Path) -> None:
    summary = json.loads((small_run / "summary.json").read_text())
    assert summary["complete"] is True
    assert summary["messages_sent"] == 3000
    assert summary["messages_received"] == 3000
    assert summary["messages_intact"] == 3000
    assert summary["messages_lost"] == 0
    assert summary["blocking_sends"] >= 5
    assert summary["sender_seconds"] < summary["receiver_seconds"]
    assert summary["sndbuf_requested"] == 16384
    assert summary["sndbuf_granted"] == 32768
    assert summary["rcvbuf_granted"] == 32768


def test_the_run_directory_has_every_table_and_plot(small_run: Path) -> None:
    for name in (
        "meta.json",
        "summary.json",
        "sends.csv",
        "blocking_sends.csv",
        "sender_samples.csv",
        "consumed.csv",
        "receiver_samples.csv",
        "timeline.png",
        "timeline.svg",
        "zoom.png",
    ):
        assert (small_run / name).stat().st_size > 0, name
    # The picture the user waits for is written first, the summary and the rest after.
    written = {p.name: p.stat().st_mtime_ns for p in small_run.iterdir()}
    assert written["timeline.png"] <= written["summary.json"] <= written["timeline.svg"]
    assert written["zoom.png"] <= written["timeline.svg"]
    run = analysis.load_run(small_run)
    assert len(run.sends) == 3000
    assert len(run.consumed) == 3000
    assert int(run.sends["blocked"].sum()) == len(run.blocking_sends)
    meta = run.meta
    assert meta["format_version"] == 1
    assert meta["outcome"] == {"complete": True, "reason": None}
    assert set(meta["host"]["sysctls"]) >= {"tcp_wmem", "tcp_rmem", "wmem_max", "rmem_max"}
    assert meta["netstat"]["scope"].startswith("network namespace")


def test_blocking_sends_are_logged_with_a_full_queue(small_run: Path) -> None:
    blocking = pd.read_csv(small_run / "blocking_sends.csv")
    assert (blocking["t_end_ns"] > blocking["t_start_ns"]).all()
    # At the failed attempt the send queue held data; SO_SNDBUF was the granted size.
    assert (blocking["outq_start"] > 0).all()
    assert (blocking["sndbuf_start"] == 32768).all()
    assert (blocking["accepted_first"] + blocking["bytes_after_wait"] == 1024).all()


def test_receiver_service_model_holds_exactly(small_run: Path) -> None:
    consumed = pd.read_csv(small_run / "consumed.csv")
    delay_ns = 200_000
    start = consumed["t_start_ns"]
    # No message finishes before its full service time...
    assert ((consumed["t_end_ns"] - start) >= delay_ns).all()
    # ...service never starts before the frame was read, or before the previous target.
    backlogged = start.iloc[1:].to_numpy() != consumed["t_read_ns"].iloc[1:].to_numpy()
    gaps = start.diff().iloc[1:].to_numpy()
    # A frame that was already waiting starts exactly one service time after the last:
    # overshoot is absorbed, not carried forward.
    assert backlogged.any()
    assert (gaps[backlogged] == delay_ns).all()
    assert (gaps >= delay_ns).all()
    assert (consumed["seq"].to_numpy() == range(3000)).all()


def test_report_and_plot_rebuild_from_the_run_directory(small_run: Path) -> None:
    report = subprocess.run(
        [*BUFDEMO, "report", str(small_run), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert json.loads(report.stdout) == json.loads((small_run / "summary.json").read_text())
    (small_run / "timeline.png").unlink()
    subprocess.run([*BUFDEMO, "plot", str(small_run)], capture_output=True, timeout=120, check=True)
    assert (small_run / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_doubling_is_reported_and_explained(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            *BUFDEMO, "run", "--messages", "500", "--sndbuf", "8192", "--rcvbuf", "8192",
            "--recv-delay", "0", "--out", str(tmp_path), "--no-plot",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"SO_SNDBUF granted\W+16,384", proc.stdout)
    assert re.search(r"SO_RCVBUF granted\W+16,384", proc.stdout)
    assert "doubl" in proc.stdout  # the note explains the doubling


def test_an_existing_run_directory_is_never_reused(tmp_path: Path) -> None:
    cfg = RunConfig(messages=50, recv_delay=0, out=tmp_path, plot=False)
    first = run_experiment(cfg)
    second = run_experiment(cfg)
    assert first.run_dir != second.run_dir
    assert first.complete
    assert second.complete


def test_peak_send_queue_agrees_with_an_outside_observer(tmp_path: Path) -> None:
    """ss reads Send-Q from the kernel in another process; our logs must agree (10%)."""
    ss = require_tool("ss", "iproute2")
    seen: dict[tuple[str, str], int] = defaultdict(int)

    def observe(_: Progress) -> None:
        out = subprocess.run(
            [ss, "-Htn", "state", "established", "dst", "127.0.0.1"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for line in out.splitlines():
            fields = line.split()
            if len(fields) >= 4:
                seen[(fields[2], fields[3])] = max(seen[(fields[2], fields[3])], int(fields[1]))

    # Autotuned buffers: the queue plateaus near 4 MB for ~1 s per stall, long enough
    # for a 10 Hz observer to see the peak.
    result = run_experiment(
        RunConfig(messages=6000, recv_delay=0.0005, out=tmp_path, plot=False), observe
    )
    assert result.complete
    meta = json.loads((result.run_dir / "meta.json").read_text())
    ours = analysis.summarize(analysis.load_run(result.run_dir))["max_send_queue_bytes"]
    theirs = seen[(meta["sender"]["address"], meta["sender"]["peer"])]
    assert theirs > 1_000_000, seen
    assert abs(ours - theirs) <= 0.10 * theirs


def test_select_mode_waits_for_the_writable_event(tmp_path: Path) -> None:
    cfg = RunConfig(
        messages=1500, sndbuf=16384, rcvbuf=16384, recv_delay=0.0002, mode=Mode.SELECT,
        out=tmp_path, plot=False,
    )  # fmt: skip
    result = run_experiment(cfg)
    assert result.complete, result.reason
    blocking = pd.read_csv(result.run_dir / "blocking_sends.csv")
    assert len(blocking) >= 5
    assert (blocking["waits"] >= 1).all()
    consumed = pd.read_csv(result.run_dir / "consumed.csv")
    assert int(consumed["intact"].sum()) == 1500


def test_the_two_halves_by_hand(tmp_path: Path) -> None:
    """`bufdemo receive` first, then `bufdemo send --to` the port it printed."""
    receiver = subprocess.Popen(
        [*BUFDEMO, "receive", "--listen", "127.0.0.1:0", "--recv-delay", "0.0001",
         "--rcvbuf", "16384", "--out", str(tmp_path / "r")],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip
    try:
        assert receiver.stderr is not None
        line = receiver.stderr.readline()
        match = re.search(r"listening on (127\.0\.0\.1:\d+)", line)
        assert match, line
        sender = subprocess.run(
            [*BUFDEMO, "send", "--to", match.group(1), "--messages", "800", "--sndbuf", "16384",
             "--out", str(tmp_path / "s")],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )  # fmt: skip
        assert sender.returncode == 0, sender.stderr
        assert receiver.wait(timeout=60) == 0
    finally:
        receiver.kill()
        receiver.wait()
        if receiver.stderr is not None:
            receiver.stderr.close()
    (send_dir,) = (tmp_path / "s").iterdir()
    (recv_dir,) = (tmp_path / "r").iterdir()
    sent = analysis.load_run(send_dir)
    received = analysis.load_run(recv_dir)
    assert len(sent.sends) == 800
    assert sent.consumed.empty  # the other side's tables are absent, not invented
    assert int(received.consumed["intact"].sum()) == 800
    assert received.meta["receiver"]["complete"] is True
    assert sent.meta["sender"]["blocking_sends"] == len(sent.blocking_sends)


def test_the_sender_is_sampled_while_blocked_and_rows_stay_in_time_order(
    small_run: Path,
) -> None:
    """The gated sampler: its thread samples while send() sleeps in the kernel, the loop
    samples inline otherwise; one lock keeps every row whole and in time order."""
    samples = pd.read_csv(small_run / "sender_samples.csv")
    blocking = pd.read_csv(small_run / "blocking_sends.csv")
    t = samples["t_ns"].to_numpy()
    assert (t[1:] > t[:-1]).all()
    starts = blocking["t_start_ns"].to_numpy()
    ends = blocking["t_end_ns"].to_numpy()
    inside = ((t[:, None] > starts) & (t[:, None] < ends)).any(axis=1)
    interval_ns = 1_000_000
    blocked_ns = int((ends - starts).sum())
    # Generous for a loaded machine: a quarter of the samples the blocked time allows.
    assert int(inside.sum()) >= blocked_ns // interval_ns // 4 > 0
    # The count a sample reports never runs ahead of what was recorded as sent.
    assert samples["count"].is_monotonic_increasing
    assert samples["count"].iloc[-1] == 3000


def test_the_paced_receiver_is_sampled_through_its_sleeps_and_rows_stay_in_order(
    small_run: Path,
) -> None:
    """The receiver's gated sampler: the paced loop samples inline, also in the middle
    of its sleeps (0.2 ms a message here, most of it asleep), so samples cover the whole
    run at the interval, and the count a sample reports never runs ahead."""
    samples = pd.read_csv(small_run / "receiver_samples.csv")
    consumed = pd.read_csv(small_run / "consumed.csv")
    t = samples["t_ns"].to_numpy()
    assert (t[1:] > t[:-1]).all()
    first, last = int(consumed["t_read_ns"].iloc[0]), int(consumed["t_end_ns"].iloc[-1])
    during = int(((t > first) & (t < last)).sum())
    # Generous for a loaded machine: a quarter of the samples the run's length allows.
    assert during >= (last - first) // 1_000_000 // 4 > 0
    assert samples["count"].is_monotonic_increasing
    assert samples["count"].iloc[-1] == 3000
    ends = consumed["t_end_ns"].to_numpy()
    # Rows counted by a sample were served by then.
    served_by = np.searchsorted(ends, t, side="right")
    assert (samples["count"].to_numpy() <= served_by).all()


def test_a_receiver_asleep_between_messages_is_still_sampled_at_the_interval(
    tmp_path: Path,
) -> None:
    """At 10 ms a message the receiver sleeps ~99% of the time: its loop wakes for each
    sample that falls due (a loop that sampled only between messages would take one
    per 10 ms)."""
    proc = subprocess.run(
        [*BUFDEMO, "run", "--messages", "60", "--recv-delay", "0.01", "--no-plot",
         "--out", str(tmp_path), "--json"],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = tmp_path.iterdir()
    t = pd.read_csv(run_dir / "receiver_samples.csv")["t_ns"].to_numpy()
    consumed = pd.read_csv(run_dir / "consumed.csv")
    first, last = int(consumed["t_read_ns"].iloc[0]), int(consumed["t_end_ns"].iloc[-1])
    during = int(((t > first) & (t < last)).sum())
    # ~590 at 1 ms; a quarter for a loaded machine is still far above one per message.
    assert during >= (last - first) // 1_000_000 // 4 > 2 * 60


def test_before_sender_runs_once_the_receiver_listens_and_before_the_sender_connects(
    tmp_path: Path,
) -> None:
    """bufdemo run loads its analysis there: nothing of it may overlap the measured run.
    Both sides have started (the sender loads beside the receiver), but the sender has
    no socket yet: it is waiting for the receiver's address."""
    import time

    import psutil

    called: list[int] = []
    listening: list[list[bool]] = []
    sockets: list[list[int]] = []

    def hook() -> None:
        called.append(time.perf_counter_ns())
        sides = [  # the spawned sides (not multiprocessing's resource tracker)
            ch for ch in psutil.Process().children() if "spawn_main" in " ".join(ch.cmdline())
        ]
        conns = [side.net_connections(kind="inet") for side in sides]
        listening.append(sorted(any(c.status == psutil.CONN_LISTEN for c in cs) for cs in conns))
        sockets.append(sorted(len(cs) for cs in conns))

    result = run_experiment(
        RunConfig(messages=200, recv_delay=0.0, out=tmp_path, plot=False), before_sender=hook
    )
    assert result.complete
    meta = json.loads((result.run_dir / "meta.json").read_text())
    assert called
    assert called[0] < meta["sender"]["t_connected_ns"]
    assert listening == [[False, True]]  # the receiver listens, the sender does not
    assert sockets == [[0, 1]]  # the sender has no socket: it has not connected


def test_a_run_stopped_before_the_sender_has_its_address_ends_the_waiting_sender(
    tmp_path: Path,
) -> None:
    """Ctrl-C while the sender waits for the receiver's address (here raised from
    before_sender): the sender ends at once, without a record; it is not stopped by a
    signal after the grace period (which would show in the reason as killed)."""
    import psutil

    def interrupt() -> None:
        raise KeyboardInterrupt

    result = run_experiment(
        RunConfig(messages=200, recv_delay=0.0, out=tmp_path, plot=False),
        before_sender=interrupt,
    )
    assert result.interrupted
    assert not result.complete
    assert result.reason == "interrupted by the user; receiver: interrupted"
    meta = json.loads((result.run_dir / "meta.json").read_text())
    assert meta["sender"] is None
    assert meta["receiver"] is not None  # stopped by the interruption: it wrote its record
    assert not [ch for ch in psutil.Process().children() if "spawn_main" in " ".join(ch.cmdline())]


def test_a_sender_dead_before_it_has_its_address_is_reported_not_raised(
    tmp_path: Path,
) -> None:
    """The sender child died while waiting for the address (killed here from
    before_sender): handing it the address fails, and the run still ends with its
    meta.json and says which side died."""
    import psutil

    def kill_sender() -> None:
        sides = [ch for ch in psutil.Process().children() if "spawn_main" in " ".join(ch.cmdline())]
        (sender,) = [s for s in sides if not s.net_connections(kind="inet")]
        sender.kill()
        # Dead but not reaped (psutil's wait would reap it): its exit code is the run's.
        wait_until(lambda: sender.status() == psutil.STATUS_ZOMBIE, 30, "the sender to die")

    result = run_experiment(
        RunConfig(messages=200, recv_delay=0.0, out=tmp_path, plot=False),
        before_sender=kill_sender,
    )
    assert not result.complete
    assert result.reason is not None
    assert result.reason.startswith("sender process was killed by SIGKILL")
    meta = json.loads((result.run_dir / "meta.json").read_text())
    assert meta["outcome"]["complete"] is False
    assert not [ch for ch in psutil.Process().children() if "spawn_main" in " ".join(ch.cmdline())]


def _threads_after_numpy(report: Connection) -> None:  # a spawned child
    import numpy  # noqa: F401  (its OpenBLAS starts its workers at import)

    report.send((len(os.listdir("/proc/self/task")), os.environ.get("OPENBLAS_NUM_THREADS")))


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="no /proc/self/task here")
@pytest.mark.parametrize("given", [None, "2"])
def test_a_runs_children_start_without_blas_threads_and_the_parent_keeps_its_environment(
    monkeypatch: pytest.MonkeyPatch, given: str | None
) -> None:
    """The sender and receiver are spawned in _without_blas_threads: a child started
    there has one thread after importing numpy, unless the user set
    OPENBLAS_NUM_THREADS (then it is theirs); the parent's environment is as before."""
    if given is None:
        monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OPENBLAS_NUM_THREADS", given)
    ctx = mp.get_context("spawn")
    ours, theirs = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_threads_after_numpy, args=(theirs,))
    with _without_blas_threads():
        child.start()
    theirs.close()
    threads, setting = ours.recv()
    child.join()
    assert os.environ.get("OPENBLAS_NUM_THREADS") == given
    if given is None:
        assert (threads, setting) == (1, "1")
    else:
        assert setting == given
