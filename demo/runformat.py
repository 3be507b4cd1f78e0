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
    "ADDED_COLUMNS",
    "BLOCKING_SENDS",
    "CONSUMED",
    "FORMAT_VERSION",
    "LINK_SAMPLES",
    "META_FILE",
    "OPTIONAL_TABLES",
    "RECEIVER_SAMPLES",
    "SENDER_SAMPLES",
    "SENDS",
    "SIDE_RECORD_FILES",
    "TABLES",
    "TABLE_FORMATS",
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
    "snd_cwnd": _F64,
    "snd_mss": _F64,
    "rtt_us": _F64,
    "total_retrans": _F64,
    "busy_time_us": _F64,
}

# Columns added to format 1 after its first release: a table written before them lacks
# them and is read with them empty (NaN), as the Versions section of run-format.md says.
ADDED_COLUMNS = frozenset({"snd_cwnd", "snd_mss", "rtt_us", "total_retrans", "busy_time_us"})

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

# The bottleneck queue (tbf) of a --netns --link-rate run, sampled by `bufdemo run`
# with `tc -s qdisc` every 50 ms; absent in every other run (then read as empty).
LINK_SAMPLES = TableFormat(
    "link_samples",
    {
        "t_ns": _I64,
        "backlog_bytes": _I64,
        "backlog_packets": _I64,
        "drops": _I64,
        "sent_bytes": _I64,
        "sent_packets": _I64,
        "overlimits": _I64,
    },
)

#: Every table of format 1, sender's first.
TABLE_FORMATS: tuple[TableFormat, ...] = (
    SENDS,
    BLOCKING_SENDS,
    SENDER_SAMPLES,
    CONSUMED,
    RECEIVER_SAMPLES,
    LINK_SAMPLES,
)

#: Tables only some runs write (absent: read as empty): link_samples (--netns --link-rate).
OPTIONAL_TABLES = frozenset({"link_samples"})

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
    # The clock exchanges (bufdemo.experiment.clocksync): the sender's {"seq", "t1",
    # "t4"}, the receiver's {"seq", "t1", "t2", "t3"}; empty without one.
    clock: list[dict[str, int]]


class SenderRecord(_SideRecord):
    """``meta["sender"]``: the sender's own record (``SenderResult.as_dict()``)."""

    blocking_sends: int


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
    link: dict[str, Any]  # `bufdemo run --netns` only: namespaces, addresses, qdisc
    clock: dict[str, Any]  # `bufdemo merge` only: the offset between the two hosts' clocks
