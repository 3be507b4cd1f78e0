"""The recorder writes what it holds, marks missing probes as empty, never half a file."""

from __future__ import annotations

import struct
from pathlib import Path

import pandas as pd
import pytest

from bufdemo.experiment.recorder import MISSING, BlockingLog, ConsumedLog, SendLog, write_table


def test_missing_probe_values_are_written_as_empty_cells(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    write_table(path, {"a": [1, MISSING, 3], "b": [4, 5, 6]}, 3)
    frame = pd.read_csv(path)
    assert frame["a"].isna().tolist() == [False, True, False]
    assert frame["b"].tolist() == [4, 5, 6]
    assert not (tmp_path / "t.csv.part").exists()


def test_send_log_derives_durations_and_blocked_sends_from_the_blocking_log(
    tmp_path: Path,
) -> None:
    log = SendLog(messages=10, size=1024)
    log.t_start_ns = 100
    for i, t in enumerate((110, 130, 5_000, 5_020)):
        log.t_ns[i] = t
    log.rows = 4  # rows 4..9 were never sent: not written
    blocking = BlockingLog()
    blocking.append(
        seq=2,
        t_start_ns=131,
        t_end_ns=5_000,
        accepted_first=300,
        bytes_after_wait=724,
        outq_start=0,
        outq_nsd_start=0,
        sndbuf_start=0,
        outq_end=0,
        outq_nsd_end=0,
        sndbuf_end=0,
        waits=1,
        wmem_queued_start=0,
        sk_sndbuf_start=0,
        wmem_queued_end=0,
        sk_sndbuf_end=0,
    )
    log.write(tmp_path / "sends.csv", blocking)
    frame = pd.read_csv(tmp_path / "sends.csv")
    assert frame["seq"].tolist() == [0, 1, 2, 3]
    assert frame["t_ns"].tolist() == [110, 130, 5_000, 5_020]
    assert frame["duration_ns"].tolist() == [10, 20, 4_870, 20]
    assert frame["bytes"].tolist() == [1024] * 4
    assert frame["blocked"].tolist() == [0, 0, 1, 0]
    assert frame["accepted_first"].tolist() == [1024, 1024, 300, 1024]


def test_send_log_stores_blocks_of_stamps_in_place() -> None:
    """Blocks of any length land at their rows; rows after the last block stay 0."""
    log = SendLog(messages=10, size=64)
    assert log.store(0, [5, 6, 7, 8]) == 4
    assert log.store(4, [2**62, -1, 9]) == 7  # a shorter block (interrupted, or the last)
    assert log.store(7, []) == 7
    assert log.store(4, [10, 11]) == 6  # a block stored again replaces its rows
    assert log.rows == 6
    assert log.t_ns.tolist() == [5, 6, 7, 8, 10, 11, 9, 0, 0, 0]
    with pytest.raises(struct.error):
        log.store(8, [1, 2, 3])  # past the announced count: refused, nothing written
    assert log.t_ns.tolist()[7:] == [0, 0, 0]


def test_consumed_log_grows_past_the_announced_count(tmp_path: Path) -> None:
    log = ConsumedLog(expected=2)
    for i in range(5):
        if log.rows == log.capacity:
            log.grow()
        log.seq[i] = i
        log.rows = i + 1
    log.write(tmp_path / "consumed.csv")
    assert pd.read_csv(tmp_path / "consumed.csv")["seq"].tolist() == [0, 1, 2, 3, 4]


def test_empty_blocking_log_still_has_its_columns(tmp_path: Path) -> None:
    BlockingLog().write(tmp_path / "b.csv")
    frame = pd.read_csv(tmp_path / "b.csv")
    assert frame.empty
    assert "outq_start" in frame.columns


def test_a_blocking_send_must_give_exactly_the_formats_columns() -> None:
    blocking = BlockingLog()
    with pytest.raises(RuntimeError, match="not the format's"):
        blocking.append(seq=1, t_start_ns=2)
    assert len(blocking) == 0


def test_a_table_killed_before_its_first_row_is_left_as_its_header(tmp_path: Path) -> None:
    """A side killed between creating a checkpointed table and writing to it (or inside
    its header line) leaves an empty file: tidied, it is a table with no rows."""
    from bufdemo import runformat
    from bufdemo.experiment.run import _tidy_after_death

    (tmp_path / runformat.RECEIVER_SAMPLES.file).write_bytes(b"")
    (tmp_path / runformat.CONSUMED.file).write_bytes(b"seq,t_re")  # cut inside the header
    _tidy_after_death(tmp_path)
    for table in (runformat.RECEIVER_SAMPLES, runformat.CONSUMED):
        frame = pd.read_csv(tmp_path / table.file)
        assert list(frame.columns) == list(table.columns)
        assert len(frame) == 0
    assert not (tmp_path / runformat.SENDER_SAMPLES.file).exists()  # absent stays absent


def test_a_sampler_on_schedule_skips_what_it_missed_instead_of_bursting() -> None:
    from bufdemo.experiment.recorder import next_sample_ns

    assert next_sample_ns(1_000, 100, now_ns=1_050) == 1_100  # on time: one interval on
    assert next_sample_ns(1_000, 100, now_ns=1_100) == 1_100
    assert next_sample_ns(1_000, 100, now_ns=1_450) == 1_550  # behind: from now, no burst
