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
from typing import Any, NotRequired, TypedDict

__all__ = [
    "ADDED_COLUMNS",
    "BLOCKING_SENDS",
    "CAPTURE_FILE",
    "CONSUMED",
    "FORMAT_VERSION",
    "KERNEL_EVENTS",
    "LATENCY",
    "LINK_SAMPLES",
    "META_FILE",
    "OPTIONAL_TABLES",
    "OPTIONAL_TABLE_FORMATS",
    "RECEIVER_SAMPLES",
    "SENDER_SAMPLES",
    "SENDS",
    "SIDE_RECORD_FILES",
    "SWEEP",
    "TABLES",
    "TABLE_FORMATS",
    "TRANSPORT_SAMPLES",
    "TX_TIMESTAMPS",
    "WIRE_EVENTS",
    "WITNESS_TABLE_FORMATS",
    "AsyncioRecord",
    "ConfigRecord",
    "LastProgress",
    "Meta",
    "Outcome",
    "ReceiverProgress",
    "ReceiverRecord",
    "SenderProgress",
    "SenderRecord",
    "TableFormat",
    "WitnessRecord",
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
        # SO_MEMINFO at the same two moments: the truesize the kernel's rule counts
        # (blocked while wmem_queued >= sk_sndbuf; woken once sk_sndbuf - wmem_queued
        # >= wmem_queued / 2). Empty where SO_MEMINFO is unavailable.
        "wmem_queued_start": _F64,
        "sk_sndbuf_start": _F64,
        "wmem_queued_end": _F64,
        "sk_sndbuf_end": _F64,
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
    # SO_MEMINFO fields, in bufdemo.probes.SAMPLED_MEMINFO order (bytes of truesize;
    # drops is a count).
    "wmem_queued": _F64,
    "sk_sndbuf": _F64,
    "wmem_alloc": _F64,
    "rmem_alloc": _F64,
    "sk_rcvbuf": _F64,
    "fwd_alloc": _F64,
    "backlog": _F64,
    "drops": _F64,
    "snd_cwnd": _F64,
    "snd_mss": _F64,
    "rtt_us": _F64,
    "total_retrans": _F64,
    "busy_time_us": _F64,
}

# Columns added to format 1 after its first release: a table written before them lacks
# them and is read with them empty (NaN), as the Versions section of run-format.md says.
ADDED_COLUMNS = frozenset(
    {
        # tcp_info for runs over a link (--netns)
        "snd_cwnd",
        "snd_mss",
        "rtt_us",
        "total_retrans",
        "busy_time_us",
        # SO_MEMINFO, the blocking rule in the kernel's own numbers
        "wmem_queued",
        "sk_sndbuf",
        "wmem_alloc",
        "rmem_alloc",
        "sk_rcvbuf",
        "fwd_alloc",
        "backlog",
        "drops",
        "wmem_queued_start",
        "sk_sndbuf_start",
        "wmem_queued_end",
        "sk_sndbuf_end",
    }
)

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

# Written by the sender in the asyncio modes only (an optional table: absent otherwise).
# The layer above the kernel: what the asyncio transport holds in user space, beside the
# kernel's send queue and the process's resident memory, on the same clock.
TRANSPORT_SAMPLES = TableFormat(
    "transport_samples",
    {
        "t_ns": _I64,
        "count": _I64,  # messages handed to StreamWriter.write() so far
        "buffered": _I64,  # bytes: transport.get_write_buffer_size()
        "outq": _F64,  # bytes: SIOCOUTQ of the transport's socket
        "rss": _F64,  # bytes: the sender process's resident set size (psutil)
        # bytes: what the recording itself holds in memory at that moment (the sample
        # tables' rows not yet spooled to disk), part of rss: rss - recorder is the
        # program's own growth
        "recorder": _I64,
    },
)

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

CAPTURE_FILE = "capture.pcap"  # `--capture`: tcpdump's own file, headers only

# The witnesses' tables (`--trace`, `--capture`): present only when the witness ran,
# so they are not in TABLE_FORMATS (which every run directory holds).
KERNEL_EVENTS = TableFormat(
    "kernel_events",
    {
        "t_ns": _I64,  # the trace's `mono` clock: CLOCK_MONOTONIC, microsecond resolution
        "side": "string",  # sender / receiver (by the socket's cookie)
        "event": "string",  # tcp_probe, tcp_rcvbuf_grow, tcp_send_reset, tcp_receive_reset
        "sock_cookie": _I64,
        "data_len": _F64,
        # bytes since this socket's first event (sequence numbers unwrapped)
        "snd_una": _F64,
        "snd_nxt": _F64,
        "snd_wnd": _F64,
        "rcv_wnd": _F64,
        "cwnd": _F64,  # segments
        "ssthresh": _F64,
        "srtt_us": _F64,
        "rcvbuf": _F64,  # tcp_rcvbuf_grow only
    },
)

WIRE_EVENTS = TableFormat(
    "wire_events",
    {
        "t_ns": _I64,  # pcap time moved onto the run's clock (meta witnesses.capture)
        "direction": "string",  # to_receiver (data) / to_sender (ACKs)
        # zero_window, window_update, zero_window_probe, retransmission, fin, rst
        "event": "string",
        "seq": _F64,  # bytes since the sending side's initial sequence number
        "ack": _F64,
        "window": _F64,  # advertised window in bytes (scaled by the SYN's window scale)
        "len": _I64,  # TCP payload bytes
    },
)

WITNESS_TABLE_FORMATS: tuple[TableFormat, ...] = (KERNEL_EVENTS, WIRE_EVENTS)
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

#: Tables a run directory may hold besides TABLE_FORMATS (absent: not that kind of run),
#: each read by its own reader. The witnesses' tables are in WITNESS_TABLE_FORMATS.
OPTIONAL_TABLE_FORMATS: tuple[TableFormat, ...] = (TRANSPORT_SAMPLES, TX_TIMESTAMPS, LATENCY)

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
    # [high, low] or [high, null] for the asyncio modes; null: asyncio's defaults
    write_buffer_limits: NotRequired[list[int | None] | None]
    trace: NotRequired[bool]  # --trace
    capture: NotRequired[bool]  # --capture
    send_rate: float | None  # messages/s the sender is paced at; None: as fast as it can
    notsent_lowat: int | None  # TCP_NOTSENT_LOWAT requested; None: the host's default
    timestamps: NotRequired[bool]  # --timestamps: SO_TIMESTAMPING asked for


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
    cookie: NotRequired[int | None]  # SO_COOKIE: the socket's id in kernel_events.csv
    # The clock exchanges (bufdemo.experiment.clocksync): the sender's {"seq", "t1",
    # "t4"}, the receiver's {"seq", "t1", "t2", "t3"}; empty without one.
    clock: NotRequired[list[dict[str, int]]]


class AsyncioRecord(TypedDict):
    """``meta["sender"]["asyncio"]``: the transport's settings and what it held."""

    high_water: int  # bytes: transport.get_write_buffer_limits(), as in effect
    low_water: int
    buffered_peak: int  # bytes: the largest get_write_buffer_size() seen
    rss_start: int | None  # bytes: the sender's RSS when it connected (None: no psutil)
    rss_peak: int | None  # bytes: the largest RSS sampled
    drain_waits: int  # drain() calls that had to wait (the blocking sends of this mode)
    rss_missing: str | None  # why rss is not recorded; None when it is


class SenderRecord(_SideRecord):
    """``meta["sender"]``: the sender's own record (``SenderResult.as_dict()``)."""

    blocking_sends: int
    asyncio: NotRequired[AsyncioRecord | None]  # None in the other modes
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


class WitnessRecord(TypedDict, total=False):
    """``meta["witnesses"]["trace"|"capture"]``: whether a witness ran and what it saw."""

    requested: bool
    active: bool  # False: skipped; ``reason`` says why in one line
    reason: str | None
    file: str | None  # the table (or capture) it wrote
    events: int
    details: dict[str, Any]  # witness-specific: instance, cookies, lost events, clock offset


class Meta(_MetaRequired, total=False):
    """``meta.json``. The keys below ``_MetaRequired`` are always written."""

    last_progress: LastProgress  # `bufdemo run` only
    witnesses: dict[str, WitnessRecord]  # `bufdemo run --trace/--capture` only
    link: dict[str, Any]  # `bufdemo run --netns` only: namespaces, addresses, qdisc
    clock: dict[str, Any]  # `bufdemo merge` only: the offset between the two hosts' clocks
