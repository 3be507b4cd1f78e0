"""Read a run directory (docs/run-format.md, format version 1) into a :class:`Run`.

A run directory is the contract between the live experiment and everything after it:
``meta.json`` plus up to five CSV tables, each readable with one pandas call. Their
names, columns and dtypes, and meta.json's keys, come from :mod:`bufdemo.runformat`,
which the writer imports too. This module is that one call per table, with explicit
dtypes (runs reach a million rows, so the C parser must not guess), and it adds a float
column of seconds since the connection was established (``meta["t0_ns"]``) beside every
``*_ns`` time column: ``t`` for ``t_ns``, ``t_start`` for ``t_start_ns`` and so on.

Absolute times stay exact integers (a monotonic clock weeks after boot is beyond the
nanosecond resolution of a float64); only the seconds since ``t0_ns`` are floats.
Probe columns are float64 because an empty cell means "probe unavailable" and becomes
NaN, never a guess.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

from bufdemo.errors import RunFormatError
from bufdemo.runformat import (
    ADDED_COLUMNS,
    FORMAT_VERSION,
    LINK_SAMPLES,
    META_FILE,
    TABLE_FORMATS,
    TABLES,
    Meta,
)

__all__ = ["FORMAT_VERSION", "TABLES", "Run", "RunFormatError", "load_run"]


@dataclass(frozen=True, eq=False)
class Run:
    """One run directory, loaded. Tables of an absent side are empty, with their columns."""

    path: Path
    meta: dict[str, Any]
    sends: pd.DataFrame
    blocking_sends: pd.DataFrame
    sender_samples: pd.DataFrame
    consumed: pd.DataFrame
    receiver_samples: pd.DataFrame
    # The bottleneck queue of a --netns --link-rate run; empty for every other run.
    link_samples: pd.DataFrame = field(default_factory=lambda: _empty(dict(LINK_SAMPLES.dtypes)))

    @property
    def t0_ns(self) -> int:
        return int(self.meta["t0_ns"])

    @property
    def config(self) -> dict[str, Any]:
        config = self.meta.get("config")
        return config if isinstance(config, dict) else {}

    def side(self, name: str) -> dict[str, Any]:
        """``meta["sender"]`` or ``meta["receiver"]``; empty for a side that is absent."""
        record = self.meta.get(name)
        return record if isinstance(record, dict) else {}

    @property
    def has_sender(self) -> bool:
        return bool(self.side("sender")) or not self.sends.empty

    @property
    def has_receiver(self) -> bool:
        return bool(self.side("receiver")) or not self.consumed.empty


def _seconds_name(column: str) -> str:
    return "t" if column == "t_ns" else column.removesuffix("_ns")


def _empty(columns: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series([], dtype=dtype) for name, dtype in columns.items()})


def _add_seconds(frame: pd.DataFrame, t0_ns: int) -> pd.DataFrame:
    for column in [c for c in frame.columns if str(c).endswith("_ns") and str(c).startswith("t")]:
        # Subtract in integers (exact), then convert the small difference to float.
        seconds = (frame[column] - t0_ns).to_numpy(dtype="float64", na_value=np.nan) / 1e9
        position = list(frame.columns).index(column) + 1
        frame.insert(position, _seconds_name(str(column)), seconds)
    return frame


def _read_table(path: Path, columns: dict[str, str]) -> pd.DataFrame:
    name = path.name
    try:
        with path.open(newline="") as f:
            header = next(csv.reader(f), None)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise RunFormatError(f"{name}: cannot read the header: {e}") from e
    if not header:
        raise RunFormatError(f"{name}: empty file, expected a header line")
    missing = [c for c in columns if c not in header and c not in ADDED_COLUMNS]
    if missing:
        raise RunFormatError(f"{name}: missing column(s) {', '.join(missing)}")
    added = [c for c in columns if c not in header]  # an older writer: unknown, NaN
    try:
        # dtype for known columns only; extra columns (a newer writer) are read as-is.
        frame = pd.read_csv(
            path, engine="c", dtype={c: d for c, d in columns.items() if c not in added}
        )
        for c in added:
            frame[c] = pd.Series(np.nan, index=frame.index, dtype=columns[c])
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError, OverflowError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RunFormatError(f"{name}: truncated or corrupt table: {reason}") from e
    return frame


def _read_meta(path: Path) -> dict[str, Any]:
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise RunFormatError(f"{path}: not a run directory (no {META_FILE})")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunFormatError(f"{meta_path}: corrupt json: {e}") from e
    if not isinstance(meta, dict):
        raise RunFormatError(f"{meta_path}: expected a json object, got {type(meta).__name__}")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise RunFormatError(f"{meta_path}: format_version missing or not an integer")
    if version > FORMAT_VERSION:
        raise RunFormatError(
            f"run format {version} is newer than this bufdemo reads ({FORMAT_VERSION}); "
            "upgrade bufdemo"
        )
    if version < 1:
        raise RunFormatError(f"{meta_path}: unknown run format {version}")
    return meta


def _origin(meta: Meta, tables: dict[str, pd.DataFrame]) -> int:
    """``t0_ns``; a by-hand half without it falls back to its own connection time."""
    sender, receiver = meta.get("sender"), meta.get("receiver")
    for value in (
        meta.get("t0_ns"),
        sender.get("t_connected_ns") if isinstance(sender, dict) else None,
        receiver.get("t_connected_ns") if isinstance(receiver, dict) else None,
    ):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    firsts = [
        int(frame[c].min())
        for frame in tables.values()
        for c in frame.columns
        if str(c).endswith("_ns") and str(c).startswith("t") and frame[c].notna().any()
    ]
    return min(firsts, default=0)


def load_run(path: str | Path) -> Run:
    """Load the run directory at ``path``; raise :class:`RunFormatError` if it is unusable."""
    path = Path(path)
    if not path.exists():
        raise RunFormatError(f"{path}: no such run directory")
    if not path.is_dir():
        raise RunFormatError(f"{path}: not a directory")
    meta = _read_meta(path)
    tables: dict[str, pd.DataFrame] = {}
    for table in TABLE_FORMATS:
        file = path / table.file
        columns = dict(table.dtypes)
        tables[table.stem] = _read_table(file, columns) if file.is_file() else _empty(columns)
    # Checked: an object with an integer format_version we read. Its other keys are
    # read with .get(): a by-hand half or a damaged run may lack some.
    t0 = _origin(cast(Meta, meta), tables)
    meta = {**meta, "t0_ns": t0}
    for frame in tables.values():
        _add_seconds(frame, t0)
    return Run(path=path, meta=meta, **tables)
