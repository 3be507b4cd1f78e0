"""The run format is defined once (bufdemo.runformat): a real run writes exactly what it
declares, and the document for people names every table, column and meta.json key."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import pytest

from bufdemo import runformat
from bufdemo.runformat import (
    TABLE_FORMATS,
    AsyncioRecord,
    ConfigRecord,
    LastProgress,
    Meta,
    Outcome,
    ReceiverRecord,
    SenderRecord,
    WitnessRecord,
)
from tests.procs import complete_run

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "run-format.md"
MESSAGES = 2000


def _keys(typed_dict: Any) -> set[str]:
    return set(typed_dict.__required_keys__ | typed_dict.__optional_keys__)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run, small buffers so that the sender blocks; the receiver as fast as it can."""
    return complete_run(
        tmp_path_factory.mktemp("runs"), messages=MESSAGES, recv_delay=0, sndbuf=8192, rcvbuf=8192
    )


@pytest.mark.slow
@pytest.mark.parametrize("table", TABLE_FORMATS, ids=lambda t: t.stem)
def test_a_real_run_writes_exactly_the_declared_columns_in_order(
    run_dir: Path, table: runformat.TableFormat
) -> None:
    if table.stem in runformat.OPTIONAL_TABLES:
        pytest.skip("written only by --netns --link-rate runs (tests/test_netns.py reads one)")
    with (run_dir / table.file).open(newline="") as f:
        header, *rows = list(csv.reader(f))
    assert tuple(header) == table.columns
    assert all(len(row) == len(header) for row in rows), table.file
    if table in (runformat.SENDS, runformat.CONSUMED):
        assert len(rows) == MESSAGES


@pytest.mark.slow
def test_a_real_runs_meta_json_has_exactly_the_declared_keys(run_dir: Path) -> None:
    meta = json.loads((run_dir / runformat.META_FILE).read_text())
    # bufdemo run writes last_progress too; witnesses only with --trace/--capture,
    # link only with --netns, clock only by merge
    assert set(meta) == _keys(Meta) - {"witnesses", "link", "clock"}
    assert meta["format_version"] == runformat.FORMAT_VERSION
    assert set(meta["config"]) == _keys(ConfigRecord)
    assert set(meta["outcome"]) == _keys(Outcome)
    assert set(meta["sender"]) == _keys(SenderRecord)
    assert set(meta["receiver"]) == _keys(ReceiverRecord)
    assert set(meta["last_progress"]) == _keys(LastProgress)
    assert set(meta["last_progress"]["sender"]) == {"messages", "blocking_sends"}
    assert set(meta["last_progress"]["receiver"]) == {"messages", "intact"}
    assert not any((run_dir / name).exists() for name in runformat.SIDE_RECORD_FILES.values())


def test_the_tables_mapping_is_the_table_formats() -> None:
    assert list(runformat.TABLES) == [t.stem for t in TABLE_FORMATS]
    for t in TABLE_FORMATS:
        assert tuple(runformat.TABLES[t.stem]) == t.columns


def _doc_names() -> set[str]:
    """Every name the document sets in code quotes: `name` (and `a.b` as both parts)."""
    names = set(re.findall(r"`([^`\s]+)`", DOC.read_text()))
    return names | {part for name in names for part in re.split(r"[./]", name)}


@pytest.mark.parametrize(
    "table",
    TABLE_FORMATS + runformat.OPTIONAL_TABLE_FORMATS + runformat.WITNESS_TABLE_FORMATS,
    ids=lambda t: t.stem,
)
def test_the_document_names_every_table_and_column(table: runformat.TableFormat) -> None:
    text = DOC.read_text()
    assert re.search(rf"^## .*\b{re.escape(table.file)}\b", text, re.MULTILINE), table.file
    missing = [c for c in table.columns if c not in _doc_names()]
    assert not missing, f"{table.file}: columns not in {DOC.name}: {missing}"


@pytest.mark.parametrize(
    "record",
    [
        Meta,
        Outcome,
        ConfigRecord,
        SenderRecord,
        ReceiverRecord,
        LastProgress,
        AsyncioRecord,
        WitnessRecord,
    ],
    ids=lambda r: r.__name__,
)
def test_the_document_names_every_meta_json_key(record: Any) -> None:
    missing = sorted(_keys(record) - _doc_names())
    assert not missing, f"{record.__name__}: keys not in {DOC.name}: {missing}"
