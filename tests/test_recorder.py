"""The recorder writes what it holds, marks missing probes as empty, never half a file."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from demo.recorder import MISSING, BlockingLog, ConsumedLog, SendLog, write_table


def test_missing_probe_values_are_written_as_empty_cells(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    write_table(path, {"a": [1, MISSING, 3], "b": [4, 5, 6]}, 3)
    frame = pd.read_csv(path)
    assert frame["a"].isna().tolist() == [False, True, False]
    assert frame["b"].tolist() == [4, 5, 6]
    assert not (tmp_path / "t.csv.part").exists()


def test_send_log_writes_only_the_rows_recorded(tmp_path: Path) -> None:
    log = SendLog(messages=10, size=1024)
    for i in range(4):
        log.t_ns[i] = 100 + i
        log.accepted_first[i] = 1024
    log.blocked[2] = 1
    log.rows = 4
    log.write(tmp_path / "sends.csv")
    frame = pd.read_csv(tmp_path / "sends.csv")
    assert frame["seq"].tolist() == [0, 1, 2, 3]
    assert frame["bytes"].tolist() == [1024] * 4
    assert frame["blocked"].tolist() == [0, 0, 1, 0]


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
