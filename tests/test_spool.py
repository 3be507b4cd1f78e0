"""Spooled sample tables: rows move to disk as they are recorded and leave memory.

The store (SpoolTable) on its own, with real file failures (/dev/full, RLIMIT_FSIZE):
every row recorded is on disk or in memory, in order, and a failed append loses none.
The samplers over a real socket pair, in-process: every sample taken is a row of the
file. A real asyncio run: the three sample tables whole, the recording's memory bounded
independently of the run's length, the running peaks equal to the tables' maxima, and a
SIGKILLed asyncio sender still leaves whole lines.
"""

from __future__ import annotations

import contextlib
import json
import resource
import signal
import socket
import tempfile
import threading
import time
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bufdemo import analysis, runformat
from bufdemo.experiment.asyncio_sender import TransportSampler, TransportState
from bufdemo.experiment.config import Mode
from bufdemo.experiment.recorder import (
    CHECKPOINT_INTERVAL,
    MISSING,
    PROGRESS_COUNT,
    PROGRESS_SLOTS,
    SAMPLE_COLUMNS,
    Sampler,
    SpoolTable,
    write_table,
)
from tests.procs import Bufdemo, complete_run, csv_rows, one_line, run_sides, wait_until

NAMES = ("t_ns", "a", "b")

# -- the store (pure: files, no sockets) -------------------------------------------------

values = st.integers(min_value=-1, max_value=2**40)  # -1 is MISSING
rows_strategy = st.lists(st.tuples(values, values, values), max_size=20)
# One step: add rows, then spool (to the file, or to a full disk), or not at all.
steps = st.lists(st.tuples(rows_strategy, st.sampled_from(["none", "spool", "full"])), max_size=12)


def _add(table: SpoolTable, rows: list[tuple[int, int, int]]) -> None:
    for row in rows:
        for name, value in zip(NAMES, row, strict=True):
            table.columns[name].append(value)


def _cells(row: tuple[int, ...]) -> list[str]:
    return ["" if v == MISSING else str(v) for v in row]


def _file_rows(path: Path) -> list[list[str]]:
    """The data rows of a spooled file, checked to be whole lines under its header."""
    if not path.exists():
        return []
    text = path.read_text()
    if not text:
        return []
    assert text.endswith("\n"), "a partial line on disk"
    header, *lines = text.split("\n")[:-1]
    assert header == ",".join(NAMES)
    return [line.split(",") for line in lines]


def _memory_rows(table: SpoolTable) -> list[list[str]]:
    cols = [table.columns[name] for name in NAMES]
    return [_cells(tuple(col[i] for col in cols)) for i in range(table.pending)]


def _point(link: Path, target: Path) -> None:
    """Make ``link`` (the table's path) lead to ``target`` (a file, or /dev/full)."""
    with contextlib.suppress(FileNotFoundError):
        link.unlink()
    link.symlink_to(target)


@settings(max_examples=60, deadline=None)
@given(steps)
def test_rows_on_disk_plus_rows_in_memory_are_the_rows_recorded_in_order(
    plan: list[tuple[list[tuple[int, int, int]], str]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        real, path = Path(tmp) / "real.csv", Path(tmp) / "table.csv"
        _point(path, real)
        table = SpoolTable(NAMES, path)
        recorded: list[list[str]] = []
        for rows, action in plan:
            _add(table, rows)
            recorded += [_cells(r) for r in rows]
            if action == "full":
                _point(path, Path("/dev/full"))  # every write fails: ENOSPC
                on_disk = real.read_bytes() if real.exists() else b""
                if table.pending or not on_disk:  # something to write: it fails
                    with pytest.raises(OSError, match="No space left on device"):
                        table.spool()
                else:
                    table.spool()  # nothing new: no write at all
                assert (real.read_bytes() if real.exists() else b"") == on_disk
                _point(path, real)
            elif action == "spool":
                table.spool()
                assert table.pending == 0  # what is on disk left memory
            assert table.spooled + table.pending == table.rows == len(recorded)
            assert _file_rows(real) + _memory_rows(table) == recorded
            assert table.held() == table.pending * len(NAMES) * 8
        table.write(path)
        expected = Path(tmp) / "expected.csv"
        cols = {name: [int(c) if c else MISSING for c in col] for name, col in zip(
            NAMES, zip(*recorded, strict=True) if recorded else ([],) * 3, strict=True
        )}  # fmt: skip
        write_table(expected, cols, len(recorded))
        assert path.read_bytes() == expected.read_bytes()  # the final write's format


@contextlib.contextmanager
def _file_size_limit(limit: int) -> Iterator[None]:
    """Writes past ``limit`` bytes fail with EFBIG, the first one short (as a disk filling)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)


def test_a_write_cut_short_by_a_full_disk_leaves_whole_rows_and_keeps_the_rest(
    tmp_path: Path,
) -> None:
    path = tmp_path / "table.csv"
    table = SpoolTable(NAMES, path)
    _add(table, [(i, i * 10, MISSING if i % 3 else i) for i in range(50)])
    table.spool()
    before = path.read_bytes()
    _add(table, [(i, i * 10, i) for i in range(50, 200)])
    with _file_size_limit(len(before) + 25), pytest.raises(OSError, match="File too large"):
        table.spool()  # the first write() takes 25 bytes, the next one fails (EFBIG)
    assert path.read_bytes() == before  # cut back: no partial row on disk
    assert (table.spooled, table.pending) == (50, 150)
    table.write(path)  # the disk has room again: the final write appends the rest
    frame = pd.read_csv(path)
    assert frame["t_ns"].tolist() == list(range(200))
    assert frame["b"].isna().sum() == sum(1 for i in range(50) if i % 3)


def test_the_final_write_raises_if_the_disk_is_still_full(tmp_path: Path) -> None:
    path = tmp_path / "table.csv"
    table = SpoolTable(NAMES, path)
    _add(table, [(1, 2, 3)])
    table.spool()
    _add(table, [(4, 5, 6)])
    with _file_size_limit(path.stat().st_size), pytest.raises(OSError, match="File too large"):
        table.write(path)
    assert table.pending == 1  # not lost: still in memory


def test_a_table_without_a_file_is_written_whole_at_the_end(tmp_path: Path) -> None:
    table = SpoolTable(NAMES)  # the blocking sender's gated sampler: nothing spooled
    _add(table, [(1, MISSING, 3), (4, 5, 6)])
    with pytest.raises(RuntimeError):
        table.spool()
    table.write(tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_text() == "t_ns,a,b\n1,,3\n4,5,6\n"


# -- the samplers over a real socket pair (in-process) -------------------------------------

SAMPLE_INTERVAL = 0.001
SPOOL_EVERY = 0.02  # many spools within a short test
# The most rows a sampler can hold between two spools: one interval of samples (it never
# samples faster than its interval), three times over for slack.
HELD_BOUND = 3 * (round(SPOOL_EVERY / SAMPLE_INTERVAL) + 1)
SAMPLES = 300  # > HELD_BOUND several times: an unspooled table would exceed the bound


@pytest.fixture
def client() -> Iterator[socket.socket]:
    """One end of a connected loopback TCP pair (the socket a sampler probes)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        end = socket.create_connection(server.getsockname()[:2])
        conn, _ = server.accept()
    with end, conn:
        yield end


class Count:
    """A sampler's ``count``: read once per sample, so it counts the samples taken."""

    def __init__(self, each: Callable[[], object] = lambda: None) -> None:
        self.taken = 0
        self._each = each

    def __call__(self) -> int:
        self._each()
        self.taken += 1
        return self.taken


def test_the_sampler_spools_every_sample_and_holds_one_interval(
    tmp_path: Path, client: socket.socket
) -> None:
    held_max = [0]
    path = tmp_path / "samples.csv"

    def held() -> None:
        held_max[0] = max(held_max[0], sampler.table.pending)

    count = Count(held)
    sampler = Sampler(
        client, SAMPLE_INTERVAL, count, checkpoint_samples=path, checkpoint_interval=SPOOL_EVERY
    )
    sampler.start()
    wait_until(lambda: count.taken >= SAMPLES, 60.0, f"{SAMPLES} samples")
    sampler.stop()
    sampler.write(path)
    assert sampler.checkpoint_error is None
    frame = pd.read_csv(path)
    assert list(frame.columns) == list(SAMPLE_COLUMNS)
    assert len(frame) == count.taken == sampler.rows  # every sample is a row
    assert frame["count"].tolist() == list(range(1, count.taken + 1))  # in order, none twice
    assert np.all(np.diff(frame["t_ns"].to_numpy()) > 0)
    assert sampler.table.spooled > 0
    assert held_max[0] <= HELD_BOUND < count.taken


class Flushes:
    """A checkpoint that counts its flushes."""

    def __init__(self) -> None:
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1


def test_a_parked_sampler_samples_only_inline_and_still_checkpoints(
    tmp_path: Path, client: socket.socket
) -> None:
    """A gated sampler whose loop runs (the gate closed) takes no sample from its thread,
    but the thread still wakes for its checkpoints; inline samples stay on the interval's
    grid and are spooled by those checkpoints."""
    path = tmp_path / "samples.csv"
    count = Count()
    checkpoint = Flushes()
    sampler = Sampler(
        client,
        SAMPLE_INTERVAL,
        count,
        checkpoints=[checkpoint],  # type: ignore[list-item]
        checkpoint_samples=path,
        checkpoint_interval=SPOOL_EVERY,
        gated=True,
    )
    sampler.start()
    inline = 0
    deadline = time.monotonic() + 60.0
    while (checkpoint.flushes < 5 or inline < 50) and time.monotonic() < deadline:
        before = count.taken
        sampler.sample_if_due(time.perf_counter_ns())
        inline += count.taken - before
        time.sleep(0.0002)
    sampler.stop()  # one last sample of the final state
    assert checkpoint.flushes >= 5
    assert count.taken == inline + 1  # none from the thread but the last
    sampler.write(path)
    t = pd.read_csv(path)["t_ns"].to_numpy()
    assert len(t) == count.taken
    assert sampler.table.spooled > 0
    assert np.all(np.diff(t) > 0)


def test_the_thread_and_the_loop_share_one_schedule(client: socket.socket) -> None:
    """A gate opened just after an inline sample adds no sample: the thread takes the
    next one when it falls due, not when it wakes."""
    count = Count()
    sampler = Sampler(client, 1.0, count, gated=True)
    sampler.start()
    try:
        sampler.sample_if_due(time.perf_counter_ns())  # inline: the first is due at once
        assert count.taken == 1
        sampler.sample_if_due(time.perf_counter_ns())  # not due again for 1 s
        assert count.taken == 1
        sampler.resume()  # the loop waits in the kernel: the thread may sample
        time.sleep(0.1)
        assert count.taken == 1
        wait_until(lambda: count.taken == 2, 60.0, "the thread's sample when due")
    finally:
        sampler.stop()


def test_a_gated_sampler_without_checkpoints_starts_its_thread_at_the_first_wait(
    client: socket.socket,
) -> None:
    """The sender's sampler: until its loop first waits in the kernel it samples inline
    and the process keeps one thread; the first resume() starts the thread, which then
    samples while the gate is open; a sampler stopped before any wait still takes its
    last sample."""
    before = threading.active_count()
    count = Count()
    sampler = Sampler(client, SAMPLE_INTERVAL, count, gated=True)
    sampler.start()
    try:
        sampler.sample_if_due(time.perf_counter_ns())  # inline
        assert count.taken == 1
        assert not sampler.is_alive()
        assert threading.active_count() == before
        sampler.resume()
        assert sampler.is_alive()
        wait_until(lambda: count.taken >= 3, 60.0, "samples from the thread")
        sampler.pause()
        sampler.resume()  # the thread is started once
    finally:
        sampler.stop()
    assert not sampler.is_alive()

    never = Sampler(client, SAMPLE_INTERVAL, Count(), gated=True)
    never.start()
    never.stop()
    assert never.rows == 1  # the final state
    assert not never.is_alive()
    never.resume()  # after stop(): nothing starts
    assert not never.is_alive()


def test_a_checkpoints_count_raises_the_live_count_and_a_later_sample_keeps_it(
    client: socket.socket,
) -> None:
    """The receiver's checkpoint raises the live count to the rows it is about to write
    (a side killed right after leaves a count not below its table on disk); it never
    lowers it, and the next sample reads a count at least as large."""
    progress = array("q", [0] * PROGRESS_SLOTS)
    rows = [5]
    sampler = Sampler(client, SAMPLE_INTERVAL, lambda: rows[0], progress=progress, gated=True)
    sampler.sample()
    assert progress[PROGRESS_COUNT] == 5
    rows[0] = 9
    sampler.count_at_least(9)
    assert progress[PROGRESS_COUNT] == 9
    sampler.count_at_least(3)
    assert progress[PROGRESS_COUNT] == 9
    rows[0] = 12
    sampler.sample()
    assert progress[PROGRESS_COUNT] == 12


def test_an_inline_sample_keeps_the_interval_grid(client: socket.socket) -> None:
    """The next sample is due one interval after the one that was due, not after the
    moment it was taken (a late inline sample, after a sleep's overshoot, shifts
    nothing); only a sampler that fell a whole interval behind restarts from now."""
    interval = round(SAMPLE_INTERVAL * 1e9)
    sampler = Sampler(client, SAMPLE_INTERVAL, Count(), gated=True)
    due = time.perf_counter_ns() + 10**9  # taken early: still on its grid
    sampler.next_due_ns = due
    sampler.sample()
    assert sampler.next_due_ns == due + interval
    sampler.next_due_ns = due = time.perf_counter_ns() - 10 * interval  # far behind
    sampler.sample()
    assert sampler.next_due_ns > due + interval


def test_a_failed_spool_keeps_every_row_for_the_final_write(
    tmp_path: Path, client: socket.socket
) -> None:
    path = tmp_path / "gone" / "samples.csv"  # its directory does not exist yet
    count = Count()
    sampler = Sampler(
        client, SAMPLE_INTERVAL, count, checkpoint_samples=path, checkpoint_interval=SPOOL_EVERY
    )
    sampler.start()
    wait_until(lambda: sampler.checkpoint_error is not None, 60.0, "a failed spool")
    wait_until(lambda: count.taken >= 50, 60.0, "50 samples")
    sampler.stop()
    assert isinstance(sampler.checkpoint_error, FileNotFoundError)
    assert sampler.table.pending == count.taken  # given up: everything stays in memory
    path.parent.mkdir()
    sampler.write(path)
    assert pd.read_csv(path)["count"].tolist() == list(range(1, count.taken + 1))


def test_the_transport_sampler_spools_and_keeps_running_peaks(
    tmp_path: Path, client: socket.socket
) -> None:
    rss_values = iter([5, None, 9, 7] + [3] * 100_000)
    path = tmp_path / "transport.csv"
    count = Count()
    sampler = TransportSampler(
        client,
        SAMPLE_INTERVAL,
        TransportState(),
        count,
        lambda: next(rss_values),
        path=path,
        checkpoint_interval=SPOOL_EVERY,
    )
    sampler.start()
    wait_until(lambda: count.taken >= SAMPLES, 60.0, f"{SAMPLES} samples")
    sampler.stop()
    sampler.write(path)
    frame = pd.read_csv(path)
    assert list(frame.columns) == list(runformat.TRANSPORT_SAMPLES.columns)
    assert frame["count"].tolist() == list(range(1, count.taken + 1))
    assert frame["rss"].isna().sum() == 1  # a failed read is an empty cell, not a value
    assert sampler.peak("rss") == 9 == frame["rss"].max()  # the peak was spooled long ago
    assert sampler.peak("buffered") == 0
    assert int(frame["recorder"].max()) <= HELD_BOUND * len(frame.columns) * 8


# -- a real run ---------------------------------------------------------------------------

RUN_MESSAGES = 5000  # ~5 s at --recv-delay 0.001: ~10 checkpoint intervals


@pytest.fixture(scope="module")
def asyncio_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return complete_run(
        tmp_path_factory.mktemp("spool"),
        size=1024,
        messages=RUN_MESSAGES,
        recv_delay=0.001,
        mode=Mode.ASYNCIO,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "table", [runformat.SENDER_SAMPLES, runformat.TRANSPORT_SAMPLES, runformat.RECEIVER_SAMPLES]
)
def test_a_real_runs_spooled_tables_are_whole_and_in_order(
    asyncio_run: Path, table: runformat.TableFormat
) -> None:
    text = (asyncio_run / table.file).read_text()
    header, *lines = text.split("\n")
    assert header.split(",") == list(table.columns)
    assert lines[-1] == ""  # whole lines only
    assert all(line.count(",") == len(table.columns) - 1 for line in lines[:-1])
    frame = pd.read_csv(asyncio_run / table.file)
    assert np.all(np.diff(frame["t_ns"].to_numpy()) > 0)  # in time order, none twice
    assert np.all(np.diff(frame["count"].to_numpy()) >= 0)
    meta = json.loads((asyncio_run / "meta.json").read_text())
    side = "receiver" if table is runformat.RECEIVER_SAMPLES else "sender"
    assert int(frame["count"].iloc[-1]) == meta[side]["messages"] == RUN_MESSAGES
    # The spool wrote more rows than it ever held (the run is ~10 intervals long).
    assert len(frame) > 4 * CHECKPOINT_INTERVAL / SAMPLE_INTERVAL


@pytest.mark.slow
def test_a_real_runs_recording_memory_is_bounded_and_its_peaks_are_the_tables(
    asyncio_run: Path,
) -> None:
    run = analysis.load_run(asyncio_run)
    ts = pd.read_csv(asyncio_run / runformat.TRANSPORT_SAMPLES.file)
    row_bytes = 8 * (len(SAMPLE_COLUMNS) + len(runformat.TRANSPORT_SAMPLES.columns))
    # Each sampler holds at most the rows of one checkpoint interval (twice, for slack),
    # whatever the run's length; unspooled, they would hold every row.
    bound = 2 * (CHECKPOINT_INTERVAL / SAMPLE_INTERVAL + 1) * row_bytes
    assert int(ts["recorder"].max()) <= bound < len(ts) * row_bytes
    record = run.side("sender")["asyncio"]
    assert record["rss_peak"] == int(ts["rss"].max())  # the running peak saw every row
    assert record["buffered_peak"] >= int(ts["buffered"].max())


@pytest.mark.slow
def test_a_sigkilled_asyncio_sender_leaves_whole_lines(tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["run", "--mode", "asyncio", "--messages", "200000", "--recv-delay", "0.0005",
            "--no-plot", "--json", "--out", str(out)]  # fmt: skip
    run = Bufdemo(argv, tmp_path)
    try:
        _, sender = run_sides(run)

        def spooled() -> Path | None:
            for path in out.glob(f"*/{runformat.TRANSPORT_SAMPLES.file}"):
                if csv_rows(path) > 0 and csv_rows(path.parent / runformat.SENDER_SAMPLES.file):
                    return path.parent
            return None

        wait_until(lambda: spooled() is not None, 60.0, "the sender's first spool")
        time.sleep(3 * CHECKPOINT_INTERVAL)  # a few more spools: one may be cut by the kill
        sender.send_signal(signal.SIGKILL)
        code, _, stderr = run.finish()
    finally:
        run.cleanup()
    assert code == 1
    assert "sender process was killed by SIGKILL" in one_line(stderr)
    run_dir = spooled()
    assert run_dir is not None
    for table in (runformat.SENDER_SAMPLES, runformat.TRANSPORT_SAMPLES):
        text = (run_dir / table.file).read_text()
        assert text.endswith("\n")
        frame = pd.read_csv(run_dir / table.file)
        assert len(frame) > 0
        assert np.all(np.diff(frame["t_ns"].to_numpy()) > 0)
    assert not list(run_dir.glob("*.part"))
    analysis.load_run(run_dir)  # the kept run reads
