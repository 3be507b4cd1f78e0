"""The wire format: framing for a byte stream, with no I/O.

TCP is a byte stream: it keeps no message boundaries (Nagle and the receiver's reads
coalesce or split writes freely), so every message carries its own frame::

    offset size  field
    0      4     magic     b"BFD2" (the protocol's version: 2 added the clock frame)
    4      1     kind      0 = data, 1 = hello, 2 = clock
    5      3     reserved  zero (anything else is a protocol error)
    8      8     seq       sequence number, big-endian
    16     4     length    payload bytes that follow the header
    20     4     checksum  mix(kind, seq, length) XOR CRC-32(payload)
    24     ...   payload

The checksum covers kind, seq, length and payload. The header part is a 64-bit
multiplicative mix (two odd multipliers, so every single-bit change of seq, kind or
length changes the result) instead of a CRC because it can then be computed for a
whole block of frames at once with numpy: the sender frames a block of messages per
step and does no per-message framing work in its hot loop (:class:`FrameBlock`). The payload's
CRC-32 is computed once (bufdemo sends the same payload every time); the receiver
recomputes both parts for every frame it reads.

The first frame of a connection is a *hello* whose payload carries the run's token and
what the sender intends to send; a receiver accepts only a sender that knows its token.

A *clock* frame carries three clock readings (NTP's t1, t2, t3, nanoseconds, signed)
and is the one frame that also travels backwards. The sender sends ``(t1, 0, 0)`` (its
clock when sending) before and after the data (seq 0 and 1); the receiver answers each
at once with ``(t1, t2, t3)``: its clock when the frame was read and when the answer
was sent. The sender's t4, when the answer arrives, completes the four timestamps
(:mod:`bufdemo.experiment.clocksync` turns them into an offset and its error bound).

:class:`Decoder` is incremental and sans-IO (h11 style): feed it bytes in any chunking
with :meth:`Decoder.receive_data`, take complete messages with
:meth:`Decoder.next_message`. A frame that cannot be a bufdemo frame (wrong magic,
unknown kind, length above the configured maximum) raises :class:`ProtocolError` before
anything is allocated for it. A frame whose checksum does not match is *not* a protocol
error: it decodes with ``intact=False`` so the receiver can count it.
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

from bufdemo.errors import ProtocolError

__all__ = [
    "CLOCK_SIZE",
    "HEADER_SIZE",
    "HELLO_SIZE",
    "KIND_CLOCK",
    "KIND_DATA",
    "KIND_HELLO",
    "MAGIC",
    "TOKEN_SIZE",
    "ClockReading",
    "Decoder",
    "FrameBlock",
    "Hello",
    "Message",
    "decode_clock",
    "decode_hello",
    "encode_clock",
    "encode_frame",
    "encode_hello",
    "header_mix",
]

MAGIC = b"BFD2"
KIND_DATA = 0
KIND_HELLO = 1
KIND_CLOCK = 2
_KINDS = frozenset({KIND_DATA, KIND_HELLO, KIND_CLOCK})

_HEADER = struct.Struct(">4sB3sQII")
_FIELDS = struct.Struct(">B3xQI")  # bytes 4..20: kind, seq, length
_CHECKSUM = struct.Struct(">I")
HEADER_SIZE = _HEADER.size  # 24

TOKEN_SIZE = 16
_HELLO = struct.Struct(f">{TOKEN_SIZE}sQI")  # token, messages, frame size
HELLO_SIZE = _HELLO.size
_CLOCK = struct.Struct(">qqq")  # t1, t2, t3
CLOCK_SIZE = _CLOCK.size


class Message(NamedTuple):
    kind: int
    seq: int
    payload: bytes
    intact: bool  # the checksum matched


class Hello(NamedTuple):
    token: bytes
    messages: int
    size: int


_MASK64 = (1 << 64) - 1
_MIX_SEQ = 0x9E3779B97F4A7C15  # 2^64 / golden ratio, odd
_MIX_ALL = 0xBF58476D1CE4E5B9  # splitmix64's second multiplier, odd


def header_mix(kind: int, seq: int, length: int) -> int:
    """32-bit mix of the header fields (see the module docstring)."""
    h = ((seq * _MIX_SEQ) & _MASK64) ^ (kind << 40) ^ length
    return ((h * _MIX_ALL) & _MASK64) >> 32


def _checksum(kind: int, seq: int, payload: bytes | memoryview) -> int:
    return header_mix(kind, seq, len(payload)) ^ zlib.crc32(payload)


def encode_frame(kind: int, seq: int, payload: bytes) -> bytes:
    """One complete frame (header + payload)."""
    fields = _FIELDS.pack(kind, seq, len(payload))
    return MAGIC + fields + _CHECKSUM.pack(_checksum(kind, seq, payload)) + payload


def encode_hello(hello: Hello) -> bytes:
    return encode_frame(KIND_HELLO, 0, _HELLO.pack(*hello))


def decode_hello(message: Message) -> Hello:
    if message.kind != KIND_HELLO:
        raise ProtocolError(f"expected a hello frame first, got kind={message.kind}")
    if not message.intact or len(message.payload) != HELLO_SIZE:
        raise ProtocolError(
            f"malformed hello frame: {len(message.payload)} payload bytes, intact={message.intact}"
        )
    return Hello(*_HELLO.unpack(message.payload))


class ClockReading(NamedTuple):
    """One clock frame: the exchange it belongs to (seq) and up to three timestamps."""

    seq: int
    t1: int
    t2: int = 0
    t3: int = 0


def encode_clock(reading: ClockReading) -> bytes:
    return encode_frame(KIND_CLOCK, reading.seq, _CLOCK.pack(reading.t1, reading.t2, reading.t3))


def decode_clock(message: Message) -> ClockReading:
    if message.kind != KIND_CLOCK:
        raise ProtocolError(f"expected a clock frame, got kind={message.kind}")
    if not message.intact or len(message.payload) != CLOCK_SIZE:
        raise ProtocolError(
            f"malformed clock frame: {len(message.payload)} payload bytes, intact={message.intact}"
        )
    return ClockReading(message.seq, *_CLOCK.unpack(message.payload))


# Headers are computed this many frames ahead (at least one block): one numpy pass per
# 64 blocks of 1,024, and per block only two strided copies (bench/floor.py).
_TABLE_FRAMES = 65_536


class FrameBlock:
    """``count`` consecutive data frames in one buffer, framed by numpy.

    The sender's hot loop then only hands ``views[j]`` to ``send()``: no per-message
    framing, allocation or checksum work. :meth:`fill` writes the seq and checksum
    fields of every frame for the block that starts at ``first_seq``. The kernel copies
    the bytes on ``send``, so refilling the block for the next messages is safe.
    The two fields are computed for many blocks ahead in one step (a table of
    ``_TABLE_FRAMES`` frames), since a numpy call costs microseconds however short its
    array: filling the next block copies the table's next slice, any other block
    recomputes the table from there.
    """

    def __init__(
        self, size: int, count: int = 256, fill: bytes = b"bufdemo ", payload: bytes | None = None
    ) -> None:
        """``payload`` (exactly ``size - HEADER_SIZE`` bytes) if given, else ``fill`` repeated."""
        import numpy as np

        if size < HEADER_SIZE:
            raise ValueError(f"frame size {size} is smaller than the {HEADER_SIZE}-byte header")
        plen = size - HEADER_SIZE
        if payload is None:
            payload = (fill * (plen // len(fill) + 1))[:plen]
        elif len(payload) != plen:
            raise ValueError(f"a {size}-byte frame has a {plen}-byte payload, not {len(payload)}")
        self.size = size
        self.count = count
        self.buf = bytearray(encode_frame(KIND_DATA, 0, payload) * count)
        view = memoryview(self.buf)
        self.views = [view[j * size : (j + 1) * size] for j in range(count)]
        self._np = np
        self._seq = np.ndarray((count,), dtype=">u8", buffer=self.buf, offset=8, strides=(size,))
        self._chk = np.ndarray((count,), dtype=">u4", buffer=self.buf, offset=20, strides=(size,))
        self._steps = np.arange(max(count, _TABLE_FRAMES), dtype=np.uint64)
        # The header mix with seq = 0, and what the kind and length contribute: both fixed.
        self._payload_crc = np.uint64(zlib.crc32(payload))
        self._fixed = np.uint64((KIND_DATA << 40) ^ plen)
        self._table_first = 0  # the seq of the table's first row
        self._table_seq = np.empty(0, dtype=np.uint64)
        self._table_chk = np.empty(0, dtype=np.uint32)

    def _compute(self, first_seq: int) -> None:
        np = self._np
        seqs = self._steps + np.uint64(first_seq)
        h = (seqs * np.uint64(_MIX_SEQ)) ^ self._fixed  # uint64 arithmetic wraps mod 2^64
        chk = ((h * np.uint64(_MIX_ALL)) >> np.uint64(32)) ^ self._payload_crc
        self._table_first = first_seq
        self._table_seq = seqs
        self._table_chk = chk.astype(np.uint32)

    def fill(self, first_seq: int) -> None:
        i = first_seq - self._table_first
        if not 0 <= i <= len(self._table_seq) - self.count:
            self._compute(first_seq)
            i = 0
        self._seq[:] = self._table_seq[i : i + self.count]
        self._chk[:] = self._table_chk[i : i + self.count]


class Decoder:
    """Incremental frame decoder: bytes in, :class:`Message` out.

    ``max_length`` bounds the payload length a header may announce; a larger one is a
    :class:`ProtocolError`, raised before any buffer of that size exists.
    """

    def __init__(self, max_length: int) -> None:
        if max_length < 0:
            raise ValueError("max_length must be >= 0")
        self.max_length = max_length
        self._buf = bytearray()
        self._header: tuple[int, int, int, int] | None = None  # kind, seq, length, crc

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a message (a partial frame at EOF)."""
        return len(self._buf)

    def bytes_needed(self) -> int:
        """How many more bytes complete the next header or frame (always >= 1).

        A reader that asks the socket for exactly this many bytes never pulls more
        than one frame out of the kernel's receive queue.
        """
        if self._header is None:
            return HEADER_SIZE - len(self._buf)
        return HEADER_SIZE + self._header[2] - len(self._buf)

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    def next_message(self) -> Message | None:
        """The next complete message, or None if more bytes are needed."""
        buf = self._buf
        if self._header is None:
            if len(buf) < HEADER_SIZE:
                # Fail fast on a wrong magic, even before a whole header arrived.
                n = min(len(buf), 4)
                if buf[:n] != MAGIC[:n]:
                    raise ProtocolError(f"bad magic {bytes(buf[:4])!r}, expected {MAGIC!r}")
                return None
            magic, kind, reserved, seq, length, crc = _HEADER.unpack_from(buf)
            if magic != MAGIC:
                raise ProtocolError(f"bad magic {magic!r}, expected {MAGIC!r}")
            if kind not in _KINDS:
                raise ProtocolError(f"unknown frame kind {kind}")
            if reserved != b"\0\0\0":
                raise ProtocolError(f"reserved header bytes must be zero, got {reserved.hex()}")
            if length > self.max_length:
                raise ProtocolError(f"frame length {length} exceeds the maximum {self.max_length}")
            self._header = (kind, seq, length, crc)
        kind, seq, length, crc = self._header
        end = HEADER_SIZE + length
        if len(buf) < end:
            return None
        view = memoryview(buf)
        try:
            intact = _checksum(kind, seq, view[HEADER_SIZE:end]) == crc
            payload = bytes(view[HEADER_SIZE:end])
        finally:
            view.release()
        del buf[:end]
        self._header = None
        return Message(kind, seq, payload, intact)
