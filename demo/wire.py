"""The wire format: framing for a byte stream, with no I/O.

TCP is a byte stream: it keeps no message boundaries (Nagle and the receiver's reads
coalesce or split writes freely), so every message carries its own frame::

    offset size  field
    0      4     magic     b"BFD1"
    4      1     kind      0 = data, 1 = hello
    5      3     reserved  zero
    8      8     seq       sequence number, big-endian
    16     4     length    payload bytes that follow the header
    20     4     checksum  CRC-32(bytes 4..20) XOR CRC-32(payload)
    24     ...   payload

The checksum covers kind, seq, length and payload. Splitting it into two CRCs lets the
sender compute the payload's CRC once (bufdemo sends the same payload every time) and
only the 16 header bytes per message, yet any single corrupted byte is still caught.

The first frame of a connection is a *hello* whose payload carries the run's token and
what the sender intends to send; a receiver accepts only a sender that knows its token.

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

from demo.errors import ProtocolError

__all__ = [
    "HEADER_SIZE",
    "HELLO_SIZE",
    "KIND_DATA",
    "KIND_HELLO",
    "MAGIC",
    "TOKEN_SIZE",
    "Decoder",
    "FrameBuffer",
    "Hello",
    "Message",
    "decode_hello",
    "encode_frame",
    "encode_hello",
]

MAGIC = b"BFD1"
KIND_DATA = 0
KIND_HELLO = 1
_KINDS = frozenset({KIND_DATA, KIND_HELLO})

_HEADER = struct.Struct(">4sB3xQII")
_FIELDS = struct.Struct(">B3xQI")  # bytes 4..20: what the header CRC covers
_CHECKSUM = struct.Struct(">I")
HEADER_SIZE = _HEADER.size  # 24

TOKEN_SIZE = 16
_HELLO = struct.Struct(f">{TOKEN_SIZE}sQI")  # token, messages, frame size
HELLO_SIZE = _HELLO.size


class Message(NamedTuple):
    kind: int
    seq: int
    payload: bytes
    intact: bool  # the checksum matched


class Hello(NamedTuple):
    token: bytes
    messages: int
    size: int


def _checksum(fields: bytes | memoryview, payload: bytes | memoryview) -> int:
    return zlib.crc32(fields) ^ zlib.crc32(payload)


def encode_frame(kind: int, seq: int, payload: bytes) -> bytes:
    """One complete frame (header + payload)."""
    fields = _FIELDS.pack(kind, seq, len(payload))
    return MAGIC + fields + _CHECKSUM.pack(_checksum(fields, payload)) + payload


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


class FrameBuffer:
    """A reusable data frame for the sender's hot loop: no allocation per message.

    :meth:`set_seq` rewrites the header in place; the payload and its CRC never
    change. The kernel copies the bytes on ``send``, so reusing the buffer is safe.
    """

    def __init__(self, size: int, fill: bytes = b"bufdemo ") -> None:
        if size < HEADER_SIZE:
            raise ValueError(f"frame size {size} is smaller than the {HEADER_SIZE}-byte header")
        plen = size - HEADER_SIZE
        payload = (fill * (plen // len(fill) + 1))[:plen]
        self.size = size
        self.buf = bytearray(size)
        self.buf[:4] = MAGIC
        self.buf[HEADER_SIZE:] = payload
        self.view = memoryview(self.buf)
        self._payload_len = plen
        self._payload_crc = zlib.crc32(payload)
        self._fields = self.view[4:20]

    def set_seq(self, seq: int) -> memoryview:
        _FIELDS.pack_into(self.buf, 4, KIND_DATA, seq, self._payload_len)
        _CHECKSUM.pack_into(self.buf, 20, zlib.crc32(self._fields) ^ self._payload_crc)
        return self.view


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
            magic, kind, seq, length, crc = _HEADER.unpack_from(buf)
            if magic != MAGIC:
                raise ProtocolError(f"bad magic {magic!r}, expected {MAGIC!r}")
            if kind not in _KINDS:
                raise ProtocolError(f"unknown frame kind {kind}")
            if length > self.max_length:
                raise ProtocolError(f"frame length {length} exceeds the maximum {self.max_length}")
            self._header = (kind, seq, length, crc)
        kind, seq, length, crc = self._header
        end = HEADER_SIZE + length
        if len(buf) < end:
            return None
        view = memoryview(buf)
        try:
            intact = _checksum(view[4:20], view[HEADER_SIZE:end]) == crc
            payload = bytes(view[HEADER_SIZE:end])
        finally:
            view.release()
        del buf[:end]
        self._header = None
        return Message(kind, seq, payload, intact)
