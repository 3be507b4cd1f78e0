"""Probes: the one module that asks the kernel about a socket or the host.

Everything bufdemo reports about buffers and queues comes from here:

- ``SIOCOUTQ``  bytes in the send queue not yet acknowledged (unsent + in flight);
- ``SIOCOUTQNSD`` bytes in the send queue not yet sent at all;
- ``SIOCINQ``  bytes received and not yet read by the application;
- ``SO_SNDBUF`` / ``SO_RCVBUF`` the buffer limits, counted in *truesize* (payload plus
  per-packet overhead), which is why the payload queued at a stall is below SO_SNDBUF;
- ``TCP_INFO`` the kernel's own view: advertised windows, zero-window probes, and how long
  the connection was limited by the receiver's window or by the send buffer.

Where a probe does not exist on this platform (anything but Linux for the ioctls and
tcp_info layout used here), it returns ``None``. It never invents a number.
"""

from __future__ import annotations

import errno
import fcntl
import os
import platform
import socket
import struct
import sys
from array import array
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "IS_LINUX",
    "NETSTAT_COUNTERS",
    "SAMPLED_MEMINFO",
    "SAMPLED_TCP_INFO",
    "SIOCINQ",
    "SIOCOUTQ",
    "SIOCOUTQNSD",
    "SO_MEMINFO",
    "SYSCTLS",
    "BufferSizes",
    "RawSample",
    "TcpInfo",
    "buffer_sizes",
    "host_info",
    "meminfo_reader",
    "netstat_counters",
    "queue_in",
    "queue_out",
    "queue_out_unsent",
    "read_sysctls",
    "sk_meminfo",
    "so_cookie",
    "tcp_info",
    "tcp_info_reader",
]

IS_LINUX = sys.platform.startswith("linux")

# ioctl request numbers from include/uapi/linux/sockios.h and asm-generic/ioctls.h.
SIOCINQ = 0x541B  # == FIONREAD
SIOCOUTQ = 0x5411  # == TIOCOUTQ
SIOCOUTQNSD = 0x894B  # not exported by Python's stdlib

_INT = struct.Struct("i")

# struct tcp_info (include/uapi/linux/tcp.h): (offset, format) of the fields bufdemo
# reads. A field beyond the length the kernel returned is reported as None: older
# kernels return a shorter struct (rwnd_limited ~4.10, snd_wnd ~5.4, rcv_wnd ~6.2).
_TCP_INFO_FIELDS: dict[str, tuple[int, str]] = {
    "state": (0, "B"),
    "probes": (3, "B"),
    "backoff": (4, "B"),
    "rto_us": (8, "I"),
    "snd_mss": (16, "I"),
    "rcv_mss": (20, "I"),
    "unacked": (24, "I"),
    "rtt_us": (68, "I"),
    "total_retrans": (100, "I"),
    "snd_cwnd": (80, "I"),
    "rcv_space": (96, "I"),
    "segs_out": (136, "I"),
    "segs_in": (140, "I"),
    "notsent_bytes": (144, "I"),
    "data_segs_in": (152, "I"),
    "data_segs_out": (156, "I"),
    "busy_time_us": (168, "Q"),
    "rwnd_limited_us": (176, "Q"),
    "sndbuf_limited_us": (184, "Q"),
    "bytes_sent": (200, "Q"),
    "snd_wnd": (228, "I"),
    "rcv_wnd": (232, "I"),
}
_TCP_INFO_LEN = 280  # what kernel 6.18 returns; asking for more is harmless


def _ioctl_int(sock: socket.socket, request: int) -> int | None:
    if not IS_LINUX:
        return None
    try:
        buf = fcntl.ioctl(sock.fileno(), request, b"\0\0\0\0")
    except OSError as exc:
        # EINVAL: listening socket or unsupported request; ENOTTY/EOPNOTSUPP: not TCP.
        if exc.errno in (errno.EINVAL, errno.ENOTTY, errno.EOPNOTSUPP, errno.EBADF):
            return None
        raise
    value: int = _INT.unpack(buf)[0]
    return value


def queue_out(sock: socket.socket) -> int | None:
    """Bytes in the send queue not yet acknowledged by the peer (SIOCOUTQ)."""
    return _ioctl_int(sock, SIOCOUTQ)


def queue_out_unsent(sock: socket.socket) -> int | None:
    """Bytes in the send queue not yet sent at all (SIOCOUTQNSD)."""
    return _ioctl_int(sock, SIOCOUTQNSD)


def queue_in(sock: socket.socket) -> int | None:
    """Bytes received and waiting to be read by the application (SIOCINQ)."""
    return _ioctl_int(sock, SIOCINQ)


def _getsockopt_int(sock: socket.socket, level: int, opt: int) -> int | None:
    try:
        return sock.getsockopt(level, opt)
    except OSError:
        return None


@dataclass(frozen=True, slots=True)
class BufferSizes:
    """SO_SNDBUF and SO_RCVBUF as ``getsockopt`` reads them (bytes of truesize)."""

    sndbuf: int | None
    rcvbuf: int | None

    def as_dict(self) -> dict[str, int | None]:
        return asdict(self)


def buffer_sizes(sock: socket.socket) -> BufferSizes:
    return BufferSizes(
        sndbuf=_getsockopt_int(sock, socket.SOL_SOCKET, socket.SO_SNDBUF),
        rcvbuf=_getsockopt_int(sock, socket.SOL_SOCKET, socket.SO_RCVBUF),
    )


# SO_MEMINFO (include/uapi/asm-generic/socket.h) returns u32[SK_MEMINFO_VARS] in this
# order (include/uapi/linux/sock_diag.h). wmem_queued is the truesize the send-buffer
# limit and the writability rule count, which SIOCOUTQ (payload only) cannot show.
SO_MEMINFO = 55
_SK_MEMINFO_FIELDS = (
    "rmem_alloc",
    "rcvbuf",
    "wmem_alloc",
    "sndbuf",
    "fwd_alloc",
    "wmem_queued",
    "optmem",
    "backlog",
    "drops",
)
_MEMINFO = struct.Struct(f"={len(_SK_MEMINFO_FIELDS)}I")  # u32 each, native order


def sk_meminfo(sock: socket.socket) -> dict[str, int] | None:
    """The socket's memory accounting (SO_MEMINFO), or None where it is unavailable.

    ``wmem_queued`` is what select()/poll() compare with ``sndbuf``: a TCP socket is
    writable while ``sndbuf - wmem_queued >= wmem_queued / 2`` (net/core/stream.c).
    """
    values = _read_meminfo(sock)
    return None if values is None else dict(zip(_SK_MEMINFO_FIELDS, values, strict=True))


def _read_meminfo(sock: socket.socket) -> tuple[int, ...] | None:
    """SO_MEMINFO's u32 fields in :data:`_SK_MEMINFO_FIELDS` order, or None."""
    if not IS_LINUX:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, _MEMINFO.size)
    except OSError:
        return None
    return _MEMINFO.unpack(raw) if len(raw) >= _MEMINFO.size else None


# The SO_MEMINFO fields every periodic sample carries, in column order (the sample
# columns rename sndbuf/rcvbuf to sk_sndbuf/sk_rcvbuf: the kernel's field, not getsockopt).
SAMPLED_MEMINFO = (
    "wmem_queued",
    "sndbuf",
    "wmem_alloc",
    "rmem_alloc",
    "rcvbuf",
    "fwd_alloc",
    "backlog",
    "drops",
)


def meminfo_reader(sock: socket.socket) -> Callable[[], tuple[int, ...] | None]:
    """A zero-argument reader of the :data:`SAMPLED_MEMINFO` fields of ``sock`` (in that
    order), or None where SO_MEMINFO is unavailable: :func:`sk_meminfo` for samplers."""
    pick = [_SK_MEMINFO_FIELDS.index(name) for name in SAMPLED_MEMINFO]

    def read() -> tuple[int, ...] | None:
        values = _read_meminfo(sock)
        return None if values is None else tuple(values[k] for k in pick)

    return read


SO_COOKIE = 57  # include/uapi/asm-generic/socket.h: u64, the id tracepoints print


def so_cookie(sock: socket.socket) -> int | None:
    """The socket's cookie (SO_COOKIE), as tracepoints print it; None if unavailable."""
    if not IS_LINUX:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8)
    except OSError:
        return None
    if len(raw) != 8:
        return None
    value: int = struct.unpack("Q", raw)[0]
    return value


class TcpInfo(dict[str, int | None]):
    """Selected fields of ``struct tcp_info``; a field the kernel did not return is None."""


def tcp_info(sock: socket.socket) -> TcpInfo | None:
    """Read TCP_INFO, or None where the platform has no Linux-layout tcp_info."""
    if not IS_LINUX or not hasattr(socket, "TCP_INFO"):
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
    except OSError:
        return None
    info = TcpInfo()
    for name, (offset, fmt) in _TCP_INFO_FIELDS.items():
        end = offset + struct.calcsize(fmt)
        info[name] = struct.unpack_from(fmt, raw, offset)[0] if len(raw) >= end else None
    return info


def tcp_info_reader(sock: socket.socket) -> Callable[[], tuple[int | None, ...] | None]:
    """A zero-argument reader of the :data:`SAMPLED_TCP_INFO` fields of ``sock``.

    The samplers call it every millisecond, so the layout is resolved once here: one
    precompiled struct reads every field when the kernel returns them all (any kernel
    since 5.x), field by field otherwise. The reader returns the fields in
    :data:`SAMPLED_TCP_INFO` order (None for a field the kernel did not return), or None
    where tcp_info is unavailable.
    """
    if not IS_LINUX or not hasattr(socket, "TCP_INFO"):
        return lambda: None
    layout = [
        (offset, fmt, offset + struct.calcsize(fmt))
        for offset, fmt in (_TCP_INFO_FIELDS[name] for name in SAMPLED_TCP_INFO)
    ]
    whole, order = _one_struct(layout)
    need = whole.size
    getsockopt, level, opt = sock.getsockopt, socket.IPPROTO_TCP, socket.TCP_INFO

    def read() -> tuple[int | None, ...] | None:
        try:
            raw = getsockopt(level, opt, _TCP_INFO_LEN)
        except OSError:
            return None
        n = len(raw)
        if n >= need:
            values = whole.unpack_from(raw)
            return tuple(values[k] for k in order)
        return tuple(
            struct.unpack_from(fmt, raw, off)[0] if n >= end else None for off, fmt, end in layout
        )

    return read


def _one_struct(layout: list[tuple[int, str, int]]) -> tuple[struct.Struct, list[int]]:
    """One Struct reading every (offset, format, end) field of ``layout`` at once, and for
    each field of ``layout`` its index in what the Struct returns."""
    by_offset = sorted(range(len(layout)), key=lambda k: layout[k][0])
    fmt, pos = "=", 0
    for k in by_offset:
        offset, code, end = layout[k]
        fmt += f"{offset - pos}x{code}"
        pos = end
    return struct.Struct(fmt), [by_offset.index(k) for k in range(len(layout))]


# The tcp_info fields every periodic sample carries, in column order.
SAMPLED_TCP_INFO = (
    "snd_wnd",
    "rcv_wnd",
    "notsent_bytes",
    "rwnd_limited_us",
    "sndbuf_limited_us",
    "probes",
    "backoff",
    # What a run over a link needs (bufdemo run --netns): the congestion window (in
    # segments of snd_mss), the smoothed RTT, retransmissions, time with data in flight.
    "snd_cwnd",
    "snd_mss",
    "rtt_us",
    "total_retrans",
    "busy_time_us",
)

# Host settings that decide buffer sizes and wake-ups (see docs/run-format.md).
SYSCTLS = {
    "tcp_wmem": "net/ipv4/tcp_wmem",
    "tcp_rmem": "net/ipv4/tcp_rmem",
    "wmem_max": "net/core/wmem_max",
    "rmem_max": "net/core/rmem_max",
    "tcp_notsent_lowat": "net/ipv4/tcp_notsent_lowat",
    "tcp_moderate_rcvbuf": "net/ipv4/tcp_moderate_rcvbuf",
}


def read_sysctls(root: Path = Path("/proc/sys")) -> dict[str, list[int] | int | None]:
    """The buffer-related sysctls; None for each one this host does not have."""
    out: dict[str, list[int] | int | None] = {}
    for name, rel in SYSCTLS.items():
        try:
            fields = [int(x) for x in (root / rel).read_text().split()]
        except (OSError, ValueError):
            out[name] = None
            continue
        out[name] = fields[0] if len(fields) == 1 else fields
    return out


# TcpExt counters that count zero-window events. They are per network namespace, not
# per socket: a run reports the delta around itself and labels it as such.
NETSTAT_COUNTERS = (
    "TCPToZeroWindowAdv",
    "TCPFromZeroWindowAdv",
    "TCPWantZeroWindowAdv",
    "TCPWinProbe",
    "TCPZeroWindowDrop",
    "TCPAbortOnClose",
)


def netstat_counters(path: Path = Path("/proc/net/netstat")) -> dict[str, int] | None:
    """All TcpExt counters of this network namespace, or None where there is no procfs."""
    try:
        text = path.read_text()
    except OSError:
        return None
    return parse_netstat(text)


def parse_netstat(text: str) -> dict[str, int] | None:
    """The TcpExt counters in the text of a /proc/net/netstat (None: no TcpExt lines)."""
    lines = text.splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:") and values.startswith("TcpExt:"):
            keys = names.split()[1:]
            return dict(zip(keys, (int(v) for v in values.split()[1:]), strict=True))
    return None


def host_info() -> dict[str, Any]:
    """Kernel, Python and buffer sysctls: the facts a run's numbers depend on."""
    return {
        "hostname": platform.node(),
        "system": platform.system(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "sysctls": read_sysctls() if IS_LINUX else None,
    }


class RawSample:
    """A periodic sample's system calls, their answers kept as the kernel gave them.

    Parsing every answer as it is read was most of a sample's cost: of 22 us, the four
    system calls took 6.4 (``bench.sampler``). A sampler that keeps the raw answers (two
    queue lengths and the bytes of tcp_info and SO_MEMINFO) and parses many at once later
    with :meth:`parse` spends a few microseconds a sample. The queues are read with
    ``ioctl`` into a buffer kept for it (0.8 us; with a fresh bytes argument, as
    :func:`queue_out` does, 2.2 us: ``bench.sampler``).

    :meth:`of` returns None where any of it is unavailable (not Linux, an older kernel's
    shorter tcp_info, no SO_MEMINFO): the caller then parses field by field, with None
    for what is missing. Each reading raises ``OSError`` if the socket fails.
    """

    def __init__(self, sock: socket.socket, info_size: int) -> None:
        # The descriptor is asked for at each reading: a closed socket's number may
        # belong to another file by then (a closed socket answers -1: EBADF).
        self._fileno = sock.fileno
        self._getsockopt = sock.getsockopt
        self._queue = array("i", [0])
        self.info_size = info_size  # bytes of each tcp_info answer (the kernel's struct)

    @classmethod
    def of(cls, sock: socket.socket) -> RawSample | None:
        """A raw reader for ``sock``, or None if a probe is unavailable here."""
        if not IS_LINUX or not hasattr(socket, "TCP_INFO"):
            return None
        need = max(off + struct.calcsize(fmt) for off, fmt in _SAMPLED_TCP_INFO_LAYOUT)
        try:
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
            mem = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, _MEMINFO.size)
            raw = cls(sock, len(info))
            raw.queue_out()
            raw.queue_in()
        except OSError:
            return None
        if len(info) < need or len(mem) != _MEMINFO.size:
            return None
        return raw

    def queue_out(self) -> int:
        """SIOCOUTQ (:func:`queue_out`)."""
        fcntl.ioctl(self._fileno(), SIOCOUTQ, self._queue, True)
        return self._queue[0]

    def queue_in(self) -> int:
        """SIOCINQ (:func:`queue_in`)."""
        fcntl.ioctl(self._fileno(), SIOCINQ, self._queue, True)
        return self._queue[0]

    def tcp_info(self) -> bytes:
        """tcp_info's bytes, ``info_size`` of them (``ValueError`` if the kernel's answer
        changed length: the caller then parses field by field)."""
        raw = self._getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
        if len(raw) != self.info_size:
            raise ValueError(f"tcp_info is {len(raw)} bytes, not {self.info_size}")
        return raw

    def meminfo(self) -> bytes:
        """SO_MEMINFO's bytes."""
        raw = self._getsockopt(socket.SOL_SOCKET, SO_MEMINFO, _MEMINFO.size)
        if len(raw) != _MEMINFO.size:
            raise ValueError(f"SO_MEMINFO is {len(raw)} bytes, not {_MEMINFO.size}")
        return raw

    def parse(self, infos: bytes, mems: bytes) -> dict[str, Any]:
        """The :data:`SAMPLED_TCP_INFO` and :data:`SAMPLED_MEMINFO` fields of many answers
        (``infos`` and ``mems``: answers of :meth:`tcp_info` and :meth:`meminfo` end to
        end), one int64 numpy array per field."""
        import numpy as np

        codes = {"B": np.uint8, "I": np.uint32, "Q": np.uint64}  # native order, as struct's
        info = np.frombuffer(
            infos,
            dtype=np.dtype(
                {
                    "names": list(SAMPLED_TCP_INFO),
                    "formats": [codes[fmt] for _, fmt in _SAMPLED_TCP_INFO_LAYOUT],
                    "offsets": [off for off, _ in _SAMPLED_TCP_INFO_LAYOUT],
                    "itemsize": self.info_size,
                }
            ),
        )
        mem = np.frombuffer(mems, dtype=np.uint32).reshape(-1, len(_SK_MEMINFO_FIELDS))
        fields = {name: info[name].astype(np.int64) for name in SAMPLED_TCP_INFO}
        for name in SAMPLED_MEMINFO:
            fields[name] = mem[:, _SK_MEMINFO_FIELDS.index(name)].astype(np.int64)
        return fields


_SAMPLED_TCP_INFO_LAYOUT = [_TCP_INFO_FIELDS[name] for name in SAMPLED_TCP_INFO]
