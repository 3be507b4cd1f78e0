"""The run directory's format: one definition that the writer and the reader import.

A run directory holds ``meta.json`` and CSV tables; docs/run-format.md describes them for
people. This module is the same description for code: the format version, every table
with its columns and their dtypes.
"""

from __future__ import annotations

__all__ = ["FORMAT_VERSION", "TABLES"]

FORMAT_VERSION = 1

_I64 = "int64"  # must be present in every row
_NI64 = "Int64"  # an integer that may be empty (a run that failed part-way)
_F64 = "float64"  # a probe: empty means unavailable -> NaN

_SAMPLE_COLUMNS: dict[str, str] = {
    "t_ns": _I64,
    "count": _I64,
    "outq": _F64,
    "outq_nsd": _F64,
    "inq": _F64,
    "sndbuf": _F64,
    "rcvbuf": _F64,
    "snd_wnd": _F64,
    "rcv_wnd": _F64,
    "notsent_bytes": _F64,
    "rwnd_limited_us": _F64,
    "sndbuf_limited_us": _F64,
    "probes": _F64,
    "backoff": _F64,
}

#: Every table of format 1: file stem -> {column: dtype}. All columns are required.
TABLES: dict[str, dict[str, str]] = {
    "sends": {
        # int32 where the format bounds the range (seq < 100,000,000 messages; a frame is
        # at most 16 MiB): 12 bytes a row less on million-message runs.
        "seq": "int32",
        "t_ns": _I64,
        "duration_ns": _NI64,
        "bytes": "int32",
        "accepted_first": "Int32",
        "blocked": "int8",
    },
    "blocking_sends": {
        "seq": _I64,
        "t_start_ns": _I64,
        "t_end_ns": _NI64,  # empty: the run ended while this send was still waiting
        "accepted_first": _I64,
        "bytes_after_wait": _I64,
        "outq_start": _F64,
        "outq_end": _F64,
        "outq_nsd_start": _F64,
        "outq_nsd_end": _F64,
        "sndbuf_start": _F64,
        "sndbuf_end": _F64,
        "waits": _NI64,
    },
    "sender_samples": _SAMPLE_COLUMNS,
    "consumed": {
        "seq": _I64,
        "t_read_ns": _I64,
        "t_start_ns": _I64,
        "t_end_ns": _I64,
        "intact": "int8",
    },
    "receiver_samples": _SAMPLE_COLUMNS,
}
