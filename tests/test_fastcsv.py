"""numpy-formatted CSV is byte for byte what the recorder writes."""

from __future__ import annotations

import random
from array import array
from pathlib import Path

import pytest

from bufdemo.experiment import recorder
from bufdemo.experiment.fastcsv import FastTableCheckpoint, format_rows, write_table
from bufdemo.experiment.recorder import ConsumedLog


def consumed(n: int, seed: int = 1) -> ConsumedLog:
    rng = random.Random(seed)
    log = ConsumedLog(n)
    for i in range(n):
        log.seq[i] = i * 7
        log.t_read_ns[i] = rng.randrange(0, 2**62)
        log.t_start_ns[i] = rng.choice([0, 9, 10, 99, 100, rng.randrange(10**12)])
        log.t_end_ns[i] = 10 ** rng.randrange(19)
        log.intact[i] = rng.randrange(2)
    log.rows = n
    return log


@pytest.mark.parametrize("n", [0, 1, 7, 1000])
def test_rows_are_formatted_as_the_recorder_formats_them(n: int) -> None:
    cols = list(consumed(n).columns().values())
    for start, stop in [(0, n), (n // 3, n)]:
        assert format_rows(cols, start, stop) == recorder._format_rows(cols, start, stop).encode()


def test_a_negative_cell_falls_back_to_the_recorder() -> None:
    cols = [array("q", [1, -1, 5]), array("b", [0, 1, 1])]
    assert format_rows(cols, 0, 3) == recorder._format_rows(cols, 0, 3).encode()


def test_tables_and_checkpoints_are_the_recorders_files(tmp_path: Path) -> None:
    log = consumed(5000)
    log.write(tmp_path / "slow.csv")
    write_table(tmp_path / "fast.csv", log.columns(), log.rows)
    assert (tmp_path / "fast.csv").read_bytes() == (tmp_path / "slow.csv").read_bytes()
    rows = [0]
    checkpoint = FastTableCheckpoint(tmp_path / "ck.csv", log.columns, lambda: rows[0])
    for rows[0] in (0, 1, 2000, 2000, 5000):
        checkpoint.flush()
    assert (tmp_path / "ck.csv").read_bytes() == (tmp_path / "slow.csv").read_bytes()
