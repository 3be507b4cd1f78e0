"""The run directory's format: the one definition that the writer and the reader import.

A run directory holds ``meta.json`` and five CSV tables; docs/run-format.md describes
them for people (a test keeps every name here in that document). This module is the
same description for code:

- :data:`FORMAT_VERSION`, written into ``meta.json`` and checked by the reader;
- one :class:`TableFormat` per table: its file name and its columns, *in the order
  they are written*, each with the dtype the reader parses it as. The recorder takes
  its column tuples from here (:attr:`TableFormat.columns`), the reader its dtypes;
- :class:`Meta` and the records inside it (:class:`Outcome`, :class:`SenderRecord`,
  :class:`ReceiverRecord`, :class:`ConfigRecord`, :class:`LastProgress`): the keys of
  ``meta.json`` as typed dictionaries, so that the type checker holds the writer
  (``bufdemo.experiment.run.write_meta`` and the sides' ``as_dict``) and the reader
  (``bufdemo.analysis.load``) to the same names.

Nothing here touches a socket: ``bufdemo.analysis`` imports it without the experiment.
"""

# No ``from __future__ import annotations`` here: TypedDict reads these annotations at
# class creation to tell required keys from optional ones.

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

__all__ = [
    "BLOCKING_SENDS",
    "CONSUMED",
    "FORMAT_VERSION",
    "LATENCY",
    "META_FILE",
    "OPTIONAL_TABLE_FORMATS",
    "RECEIVER_SAMPLES",
    "SENDER_SAMPLES",
    "SENDS",
    "SIDE_RECORD_FILES",
    "SWEEP",
    "TABLES",
    "TABLE_FORMATS",
    "TX_TIMESTAMPS",
    "ConfigRecord",
    "LastProgress",
    "Meta",
    "Outcome",
    "ReceiverProgress",
    "ReceiverRecord",
    "SenderProgress",
    "SenderRecord",
    "TableFormat",
]

FORMAT_VERSION = 1

META_FILE = "meta.json"
# Each side of `bufdemo run` writes its record here; the orchestrator merges it into
# meta.json and deletes it. Left behind only when the orchestrator itself was killed.
SIDE_RECORD_FILES = {"sender": "sender.json", "receiver": "receiver.json"}

_I64 = "int64"  # must be present in every row
_NI64 = "Int64"  # an integer that may be empty (a run that failed part-way)
_F64 = "float64"  # a probe: empty means unavailable -> NaN


@dataclass(frozen=True, slots=True)
class TableFormat:
    """One CSV table: ``{stem}.csv`` with ``dtypes``' columns, in that order."""

    stem: str
    dtypes: Mapping[str, str]  # column -> pandas dtype, in the order written

    @property
    def file(self) -> str:
        return f"{self.stem}.csv"

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(self.dtypes)


SENDS = TableFormat(
    "sends",
    {
        # int32 where the format bounds the range (seq < 100,000,000 messages; a frame is
        # at most 16 MiB): 12 bytes a row less on million-message runs.
        "seq": "int32",
        "t_ns": _I64,
        "duration_ns": _NI64,
        "bytes": "int32",
        "accepted_first": "Int32",
        "blocked": "int8",
    },
)

BLOCKING_SENDS = TableFormat(
    "blocking_sends",
    {
        "seq": _I64,
        "t_start_ns": _I64,
        "t_end_ns": _NI64,  # empty: the run ended while this send was still waiting
        "accepted_first": _I64,
        "bytes_after_wait": _I64,
        # The probes at the failed attempt, then the same probes once the message was
        # queued (the sender appends them in this order: start triple, end triple).
        "outq_start": _F64,
        "outq_nsd_start": _F64,
        "sndbuf_start": _F64,
        "outq_end": _F64,
        "outq_nsd_end": _F64,
        "sndbuf_end": _F64,
        "waits": _NI64,
    },
)

_SAMPLE_DTYPES: dict[str, str] = {
    "t_ns": _I64,
    "count": _I64,
    "outq": _F64,
    "outq_nsd": _F64,
    "inq": _F64,
    "sndbuf": _F64,
    "rcvbuf": _F64,
    # tcp_info fields, in bufdemo.probes.SAMPLED_TCP_INFO order (the sampler reads them).
    "snd_wnd": _F64,
    "rcv_wnd": _F64,
    "notsent_bytes": _F64,
    "rwnd_limited_us": _F64,
    "sndbuf_limited_us": _F64,
    "probes": _F64,
    "backoff": _F64,
}

SENDER_SAMPLES = TableFormat("sender_samples", _SAMPLE_DTYPES)

CONSUMED = TableFormat(
    "consumed",
    {
        "seq": _I64,
        "t_read_ns": _I64,
        "t_start_ns": _I64,
        "t_end_ns": _I64,
        "intact": "int8",
    },
)

RECEIVER_SAMPLES = TableFormat("receiver_samples", _SAMPLE_DTYPES)

#: Every table of format 1, sender's first.
TABLE_FORMATS: tuple[TableFormat, ...] = (
    SENDS,
    BLOCKING_SENDS,
    SENDER_SAMPLES,
    CONSUMED,
    RECEIVER_SAMPLES,
)

# Written by the sender when the kernel gives transmit timestamps (SO_TIMESTAMPING, see
# bufdemo.experiment.txstamps); absent otherwise, and in runs of older versions.
TX_TIMESTAMPS = TableFormat(
    "tx_timestamps",
    {
        "kind": "int8",  # 0 SND (sent), 1 SCHED (scheduled), 2 ACK (acknowledged)
        "offset": _I64,  # the skb's last byte, from the first message byte
        "t_ns": _I64,
    },
)

# Derived from the tables by bufdemo.analysis.latency (written by `bufdemo report`,
# `bufdemo run`): per message, where its time went. Seconds; empty = unknown.
LATENCY = TableFormat(
    "latency",
    {
        "seq": _I64,
        "t_handed_ns": _I64,
        "queued_in_send_buffer": _F64,
        "in_flight_until_ack": _F64,
        "waiting_in_receive_queue": _F64,
        "service": _F64,
        "end_to_end": _F64,
    },
)

#: Tables a run directory may hold besides TABLE_FORMATS: read by their own readers.
OPTIONAL_TABLE_FORMATS: tuple[TableFormat, ...] = (TX_TIMESTAMPS, LATENCY)

# `bufdemo sweep` writes sweep.csv (and the same rows as sweep.json) in the sweep
# directory; `bufdemo compare --json` prints the same columns. One row per run.
SWEEP = TableFormat(
    "sweep",
    {
        "value": "object",  # the swept value as typed ("auto" for a kernel default)
        "run": "object",  # the run directory's name
        "mode": "object",
        "size": _NI64,
        "recv_delay": _F64,
        "sndbuf": _NI64,  # requested; empty: autotuning
        "rcvbuf": _NI64,
        "send_rate": _F64,  # empty: unpaced
        "notsent_lowat": _NI64,  # empty: unset
        "blocking_sends": _NI64,
        "stall_seconds": _F64,
        "throughput_msgs_per_s": _F64,
        "latency_p50_seconds": _F64,
        "latency_p99_seconds": _F64,
        "max_send_queue_bytes": _F64,
        "max_unsent_bytes": _F64,
        "max_recv_queue_bytes": _F64,
        "sndbuf_granted": _NI64,
        "rcvbuf_granted": _NI64,
        "complete": "boolean",
    },
)

#: The same as a plain mapping: file stem -> {column: dtype}. All columns are required.
TABLES: dict[str, dict[str, str]] = {t.stem: dict(t.dtypes) for t in TABLE_FORMATS}


# -- meta.json ------------------------------------------------------------------------


class Outcome(TypedDict):
    complete: bool
    reason: str | None  # why the run is not complete; None when it is


class ConfigRecord(TypedDict):
    """``meta["config"]``: the run's settings (``RunConfig.as_dict()``; no token)."""

    messages: int
    size: int
    recv_delay: float
    sndbuf: int | None  # None: kernel autotuning
    rcvbuf: int | None
    mode: str
    sample_interval: float
    timeout: float | None
    out: str
    plot: bool
    send_rate: float | None  # messages/s the sender is paced at; None: as fast as it can
    notsent_lowat: int | None  # TCP_NOTSENT_LOWAT requested; None: the host's default


class _SideRecord(TypedDict):
    address: str
    peer: str
    t_connected_ns: int | None
    t_done_ns: int | None  # last message handed to the kernel / consumed
    messages: int
    # {"requested", "granted_start", "granted_end"}, each {"sndbuf", "rcvbuf"}
    buffers: dict[str, Any]
    complete: bool
    error: str | None


class SenderRecord(_SideRecord):
    """``meta["sender"]``: the sender's own record (``SenderResult.as_dict()``)."""

    blocking_sends: int
    nodelay: bool  # TCP_NODELAY set (a paced sender sets it)
    notsent_lowat: int | None  # getsockopt(TCP_NOTSENT_LOWAT) after setting it; None: unset
    # {"enabled", "reason", "notifications", ...}: SO_TIMESTAMPING, or why it is off
    timestamping: dict[str, Any] | None


class ReceiverRecord(_SideRecord):
    """``meta["receiver"]``: the receiver's own record (``ReceiverResult.as_dict()``)."""

    messages_expected: int | None  # what the sender's hello announced
    intact: int
    corrupt: int
    out_of_order: int
    truncated_bytes: int
    rejected: int  # stray connections closed before the sender was accepted
    rejected_peers: list[str]  # the first 100, each "address: reason"


class SenderProgress(TypedDict):
    messages: int
    blocking_sends: int


class ReceiverProgress(TypedDict):
    messages: int
    intact: int


class LastProgress(TypedDict):
    """``meta["last_progress"]``: the counts `bufdemo run`'s live display last read."""

    source: str
    sender: SenderProgress
    receiver: ReceiverProgress


class _MetaRequired(TypedDict):
    format_version: int
    created: str  # UTC, ISO 8601
    command: str
    config: ConfigRecord
    host: dict[str, Any]  # bufdemo.probes.host_info()
    t0_ns: int | None  # the connection's start: origin of every "seconds"
    sender: SenderRecord | None  # None: that side's process died before its record
    receiver: ReceiverRecord | None
    netstat: dict[str, Any] | None  # {"scope", "before", "after", "delta"}
    outcome: Outcome


class Meta(_MetaRequired, total=False):
    """``meta.json``. The keys below ``_MetaRequired`` are always written."""

    last_progress: LastProgress  # `bufdemo run` only
