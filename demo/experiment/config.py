"""The run's settings: one frozen value object, validated once, passed down.

Every default carries its reason. The CLI builds a :class:`RunConfig` and nothing below
it reads CLI state; a bad value raises :class:`ConfigError` naming the field (its
``setting``, e.g. ``recv_delay``) and the rule, which the CLI turns into a one-line
message naming its option, and exit code 2.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from bufdemo.errors import ConfigError
from bufdemo.experiment import netns as netlink
from bufdemo.experiment.wire import HEADER_SIZE, TOKEN_SIZE
from bufdemo.runformat import ConfigRecord

__all__ = [
    "ASYNCIO_MODES",
    "DEFAULT_MESSAGES",
    "DEFAULT_RECV_DELAY",
    "DEFAULT_SAMPLE_INTERVAL",
    "DEFAULT_SIZE",
    "Mode",
    "RunConfig",
    "parse_write_buffer_limits",
]

# 100,000 x 1 KiB = ~98 MiB: ~25 times the ~4 MB an autotuned loopback send buffer
# grows to, so the default run fills and drains the buffer more than ten times.
DEFAULT_MESSAGES = 100_000
# 1 KiB: small enough that one message is a tiny fraction of any buffer (the queue
# moves smoothly), large enough that the framing overhead (24 B) stays below 3%.
DEFAULT_SIZE = 1024
# 1 ms of receiver work per message: 1,000 msg/s, roughly 300x slower than the sender
# can go on loopback here, so the sender is paced by the receiver for almost the whole run.
DEFAULT_RECV_DELAY = 0.001
# 1 ms sampling: a stall lasts ~1.4 s with default buffers and tens of ms with small
# ones; 1 ms resolves both while costing the sampler thread ~1% of a core.
DEFAULT_SAMPLE_INTERVAL = 0.001

MAX_MESSAGES = 100_000_000  # ~1.6 GB of per-send records; beyond that, use a smaller run
MAX_SIZE = 16 * 1024 * 1024  # one frame; also the receiver's default bound on a frame
MAX_RECV_DELAY = 10.0  # seconds per message; more is a mistake, not an experiment
MAX_BUFFER = 1 << 30  # the kernel clamps to wmem_max/rmem_max anyway; this catches typos
MIN_SAMPLE_INTERVAL = 0.0001  # below this the sampler thread would compete with the loop
MAX_TIMEOUT = 7 * 24 * 3600.0
# A paced sender waits for each slot (sleep, then spin); beyond ~1 M msgs/s the slot is
# shorter than one send and the pace is the loop's own: no longer a rate, a typo.
MAX_SEND_RATE = 1_000_000.0
# TCP_NOTSENT_LOWAT is an int in the kernel; above 1 GiB it is as good as unset.
MAX_NOTSENT_LOWAT = 1 << 30
MIN_MTU = 576  # IPv4's minimum datagram every host must accept; below it TCP barely moves
MAX_MTU = 65535  # a veth's maximum


class Mode(StrEnum):
    """How the sender waits when the send buffer is full (see bufdemo.experiment.sender)."""

    BLOCKING = "blocking"  # a real blocking send(): the kernel's own sleep and wake-up
    SELECT = "select"  # a non-blocking socket and select()'s writable event
    # asyncio: StreamWriter.write, then ``await drain()`` (bufdemo.experiment.asyncio_sender)
    ASYNCIO = "asyncio"
    # asyncio without drain(): every message waits in the transport's user-space buffer
    ASYNCIO_NODRAIN = "asyncio-nodrain"


MODES: tuple[str, ...] = tuple(m.value for m in Mode)
#: The modes that write to an asyncio transport (a user-space buffer above the kernel's).
ASYNCIO_MODES = frozenset({Mode.ASYNCIO, Mode.ASYNCIO_NODRAIN})


def parse_write_buffer_limits(text: str) -> tuple[int, int | None]:
    """``"HIGH[,LOW]"`` (bytes) as ``(high, low)``; ``low`` None: asyncio's default (high/4).

    Raises :class:`ConfigError` for ``write_buffer_limits`` when it is not one or two
    integers; the ranges are checked by :class:`RunConfig`.
    """
    parts = text.split(",")
    try:
        if len(parts) not in (1, 2):
            raise ValueError
        high = int(parts[0])
        low = int(parts[1]) if len(parts) == 2 else None
    except ValueError:
        raise ConfigError(
            "write_buffer_limits", f"must be HIGH or HIGH,LOW in bytes, got {text!r}"
        ) from None
    return high, low


def _check_int(setting: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ConfigError(setting, f"must be between {low} and {high}, got {value}")


def _check_float(setting: str, value: float, low: float, high: float, *, low_open: bool) -> None:
    if not math.isfinite(value):
        raise ConfigError(setting, f"must be a finite number, got {value}")
    too_low = value <= low if low_open else value < low
    if too_low or value > high:
        bound = f"> {low}" if low_open else f">= {low}"
        raise ConfigError(setting, f"must be {bound} and <= {high}, got {value}")


@dataclass(frozen=True, slots=True)
class RunConfig:
    """Everything a run needs; both halves (sender and receiver) take the same object.

    ``mode`` also accepts its plain value (``"select"``), converted to :class:`Mode`.
    """

    messages: int = DEFAULT_MESSAGES
    size: int = DEFAULT_SIZE
    recv_delay: float = DEFAULT_RECV_DELAY
    sndbuf: int | None = None
    rcvbuf: int | None = None
    mode: Mode = Mode.BLOCKING
    sample_interval: float = DEFAULT_SAMPLE_INTERVAL
    timeout: float | None = None
    out: Path = Path("runs")
    plot: bool = True
    # The witnesses (bufdemo.experiment.tracing, bufdemo.experiment.capture): off by
    # default, they need root/tracefs and tcpdump; where missing, the run goes on.
    trace: bool = False
    capture: bool = False
    token: bytes = field(default_factory=lambda: secrets.token_bytes(TOKEN_SIZE))
    # (high, low) for transport.set_write_buffer_limits in the asyncio modes; low None:
    # asyncio's own rule (high / 4). None: asyncio's defaults (64 KiB, 16 KiB).
    write_buffer_limits: tuple[int, int | None] | None = None
    # Messages per second the sender is paced at (slots of 1/rate, no drift; the
    # receiver's pacer); None: as fast as the kernel accepts them.
    send_rate: float | None = None
    # TCP_NOTSENT_LOWAT on the sender's socket, bytes; None: the host's default (off).
    notsent_lowat: int | None = None
    # SO_TIMESTAMPING on the sender's socket (latency.csv's kernel parts). Off unless
    # asked for: each transmit timestamp is an error-queue wake-up of a send() blocked
    # for buffer space, which then resumes as soon as there is any room, not at the
    # kernel's 2/3 mark (docs/kernel.md, "Per-byte transmit timestamps").
    timestamps: bool = False
    # A real link (bufdemo.experiment.netns): each side in its own network namespace.
    netns: bool = False
    link_rate: str | None = None  # e.g. "20mbit": tbf on the sender's egress
    link_queue: str | None = None  # bytes ("64kb") or time at the rate ("50ms")
    mtu: int | None = None
    link_delay: str | None = None  # netem: refused at set-up where the kernel has none
    link_loss: str | None = None

    def __post_init__(self) -> None:
        _check_int("messages", self.messages, 1, MAX_MESSAGES)
        if not HEADER_SIZE <= self.size <= MAX_SIZE:
            raise ConfigError(
                "size",
                f"must be between {HEADER_SIZE} and {MAX_SIZE} (a message is at least its "
                f"{HEADER_SIZE}-byte frame header), got {self.size}",
            )
        _check_float("recv_delay", self.recv_delay, 0.0, MAX_RECV_DELAY, low_open=False)
        for setting, value in (("sndbuf", self.sndbuf), ("rcvbuf", self.rcvbuf)):
            if value is not None:
                _check_int(setting, value, 1, MAX_BUFFER)
        try:
            mode = Mode(self.mode)
        except ValueError:
            raise ConfigError(
                "mode", f"must be one of {', '.join(MODES)}, got {self.mode!r}"
            ) from None
        object.__setattr__(self, "mode", mode)  # frozen: the one conversion, at birth
        _check_float(
            "sample_interval", self.sample_interval, MIN_SAMPLE_INTERVAL, 1.0, low_open=False
        )
        if self.timeout is not None:
            _check_float("timeout", self.timeout, 0.0, MAX_TIMEOUT, low_open=True)
        if self.write_buffer_limits is not None:
            self._check_write_buffer_limits(self.write_buffer_limits)
        for setting, flag in (("trace", self.trace), ("capture", self.capture)):
            if not isinstance(flag, bool):
                raise ConfigError(setting, f"must be true or false, got {flag!r}")
        if self.send_rate is not None:
            _check_float("send_rate", self.send_rate, 0.0, MAX_SEND_RATE, low_open=True)
            if self.mode in ASYNCIO_MODES:  # the event loop writes: nothing paces it
                raise ConfigError(
                    "send_rate",
                    f"applies to the blocking and select modes, got mode {self.mode.value!r}",
                )
        if self.notsent_lowat is not None:
            _check_int("notsent_lowat", self.notsent_lowat, 1, MAX_NOTSENT_LOWAT)
        if len(self.token) != TOKEN_SIZE:
            raise ConfigError("token", f"must be {TOKEN_SIZE} bytes, got {len(self.token)}")
        self._check_link()

    def _check_link(self) -> None:
        if self.mtu is not None:
            _check_int("mtu", self.mtu, MIN_MTU, MAX_MTU)
        for setting in ("link_rate", "link_queue", "mtu", "link_delay", "link_loss"):
            if getattr(self, setting) is not None and not self.netns:
                raise ConfigError(setting, "needs --netns (a link exists only between namespaces)")
        if self.netns and self.capture:  # tcpdump listens on the host's loopback
            raise ConfigError(
                "capture", "does not work with --netns yet (tcpdump would watch loopback)"
            )
        if self.link_queue is not None and self.link_rate is None:
            raise ConfigError("link_queue", "needs --link-rate (the queue is the tbf's)")
        self.link().limit_bytes()  # parses rate and queue: ConfigError names the setting
        if self.link_delay is not None:
            netlink.parse_delay(self.link_delay)
        if self.link_loss is not None:
            netlink.parse_loss(self.link_loss)

    def link(self) -> netlink.LinkSettings:
        """The link's settings, parsed (meaningful with ``netns``)."""
        rate = None if self.link_rate is None else netlink.parse_rate(self.link_rate)
        return netlink.LinkSettings(
            rate, self.link_queue, self.mtu, self.link_delay, self.link_loss
        )

    def _check_write_buffer_limits(self, limits: tuple[int, int | None]) -> None:
        if self.mode not in ASYNCIO_MODES:
            raise ConfigError(
                "write_buffer_limits",
                f"applies to the asyncio modes only, got mode {self.mode.value!r}",
            )
        high, low = limits
        _check_int("write_buffer_limits", high, 1, MAX_BUFFER)
        if low is not None and not 0 <= low <= high:
            raise ConfigError(
                "write_buffer_limits", f"LOW must be between 0 and HIGH ({high}), got {low}"
            )

    def as_dict(self) -> ConfigRecord:
        """JSON-ready settings, as meta.json's ``config`` (the token is a secret of the
        run and is left out)."""
        return {
            "messages": self.messages,
            "size": self.size,
            "recv_delay": self.recv_delay,
            "sndbuf": self.sndbuf,
            "rcvbuf": self.rcvbuf,
            "mode": self.mode.value,
            "sample_interval": self.sample_interval,
            "timeout": self.timeout,
            "out": str(self.out),
            "plot": self.plot,
            "write_buffer_limits": (
                None if self.write_buffer_limits is None else list(self.write_buffer_limits)
            ),
            "trace": self.trace,
            "capture": self.capture,
            "send_rate": self.send_rate,
            "notsent_lowat": self.notsent_lowat,
            "timestamps": self.timestamps,
        }
