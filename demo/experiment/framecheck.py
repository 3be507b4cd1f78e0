"""Checking fixed-size data frames fast, one at a time or a block at once, with no I/O.

The receiver knows the size of every frame from the hello, so it need not decode the
stream incrementally (:class:`~bufdemo.experiment.wire.Decoder`, header then body):
it reads whole frames and checks them here. Every frame is still checked in full:
magic, kind, reserved bytes, length, sequence number and checksum.

The checksum is ``header_mix(kind, seq, length) XOR CRC-32(payload)`` (wire.py). The
CRC-32 of a payload is the costly part, so the checker remembers one *reference*
payload and its CRC: a payload byte-for-byte equal to the reference has that CRC (a
memcmp is far cheaper than a CRC), any other payload gets its own CRC-32. Which payload
is the reference does not matter for correctness (its CRC is computed from its bytes);
bufdemo's sender sends the same payload every time, so the reference is the first one.

:meth:`FrameChecker.check_one` costs about a microsecond in Python. :meth:`check_block`
checks ``k`` contiguous frames with a fixed number of numpy operations, so it pays from
a few dozen frames on (:data:`BLOCK_MIN_FRAMES`): the receiver uses it for its batches
of frames read one at a time, and at ``--recv-delay 0``, where it reads many frames per
syscall.

The block checker first tries the cheapest check of all: a stream from a bufdemo sender
is exactly predictable. Once the reference payload is known, the checker frames the
``k`` frames it expects next (seq ``expected .. expected + k - 1``, that payload, their
checksums) with :class:`~bufdemo.experiment.wire.FrameBlock`, the sender's own framing,
and compares the bytes with one ``memcmp``: 0.3 us a frame in blocks of 256 frames of
1 KiB, where the field-by-field numpy checks take 1.0 us (``python -m bench.receiver``).
Equal bytes mean every frame is well formed, in order and has the right checksum; any
difference sends the block to the field-by-field checks, which say which frame and why.
A sender whose frames never match (other payloads) stops being tried after a few blocks.

A frame that is not a well-formed data frame of the announced size (a wrong magic,
kind, reserved byte or length) is an *anomaly*: the checkers stop before it and say
where, and the receiver hands the stream to the incremental Decoder, which raises the
precise ProtocolError or decodes the odd frame as not intact (and hands the stream back
once it holds nothing more after a frame of the announced size).
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from bufdemo.experiment.wire import HEADER_SIZE, KIND_DATA, MAGIC, FrameBlock, header_mix

__all__ = ["BLOCK_MIN_FRAMES", "BlockCheck", "FrameChecker"]

# Below this many frames a block is checked frame by frame: numpy's fixed cost per
# block (~20 us) is then more than the per-frame checks (~1 us each).
BLOCK_MIN_FRAMES = 32

_HEADER = struct.Struct(">4sB3sQII")
_MIX_SEQ = np.uint64(0x9E3779B97F4A7C15)  # wire.header_mix's multipliers
_MIX_ALL = np.uint64(0xBF58476D1CE4E5B9)
# Header mixes computed ahead for the one-at-a-time checker (one numpy step per 4,096).
MIX_TABLE = 4096
_MAGIC = np.frombuffer(MAGIC, dtype=np.uint8)
# Blocks that differed from the expected frames before the checker stops comparing: a
# sender with other payloads would pay the comparison (~30 us a block) for nothing.
EXPECTED_MISSES = 4
_TOP_SEQ = 0xFFFF_FFFF_FFFF_FFFF


class BlockCheck(NamedTuple):
    """What :meth:`FrameChecker.check_block` found in the frames before any anomaly."""

    frames: int  # well-formed frames checked (the block's first ``frames``)
    seq: npt.NDArray[np.int64]  # their sequence numbers
    intact: npt.NDArray[np.int8]  # 1 = checksum matched and in order
    corrupt: int  # checksum mismatches
    out_of_order: int  # frames whose seq is not the previous one's + 1
    anomaly: bool  # True: frame ``frames`` is not a data frame of the announced size


class FrameChecker:
    """Checks data frames of ``size`` bytes (header included); tracks the expected seq."""

    def __init__(self, size: int, expected: int = 0) -> None:
        if size < HEADER_SIZE:
            raise ValueError(f"frame size {size} is smaller than the {HEADER_SIZE}-byte header")
        self.size = size
        self.plen = size - HEADER_SIZE
        self.expected = expected  # the next in-order sequence number
        self._ref: bytes | None = None
        self._ref_crc = 0
        self._fixed_int = (KIND_DATA << 40) ^ self.plen
        self._fixed = np.uint64(self._fixed_int)
        self._mix: list[int] = []
        self._mix_base = -MIX_TABLE  # no table yet
        self._expect: FrameBlock | None = None  # the frames a bufdemo sender sends next
        self._expect_misses = 0

    def _fill_mix(self, first_seq: int) -> None:
        """header_mix of the data frames ``first_seq .. first_seq + MIX_TABLE - 1``."""
        if first_seq > 0xFFFF_FFFF_FFFF_FFFF - MIX_TABLE:  # near the top: no table
            self._mix = [header_mix(KIND_DATA, first_seq, self.plen)]
            self._mix_base = first_seq
            return
        seqs = np.arange(MIX_TABLE, dtype=np.uint64) + np.uint64(first_seq)
        h = (seqs * _MIX_SEQ) ^ self._fixed
        self._mix = ((h * _MIX_ALL) >> np.uint64(32)).tolist()
        self._mix_base = first_seq

    def _payload_crc(self, payload: bytes | bytearray | memoryview) -> int:
        if payload == self._ref:
            return self._ref_crc
        crc = zlib.crc32(payload)
        if self._ref is None:
            self._ref, self._ref_crc = bytes(payload), crc
        return crc

    def check_one(
        self, frame: bytearray | bytes | memoryview, offset: int = 0
    ) -> tuple[int, bool, bool] | None:
        """Check the frame at ``offset``: ``(seq, checksum_ok, in_order)``, None if anomalous.

        Advances :attr:`expected` to ``seq + 1`` (as the Decoder-based loop does).
        """
        magic, kind, reserved, seq, length, crc = _HEADER.unpack_from(frame, offset)
        if magic != MAGIC or kind != KIND_DATA or reserved != b"\0\0\0" or length != self.plen:
            return None
        start = offset + HEADER_SIZE
        payload = frame[start : start + length]
        pcrc = self._ref_crc if payload == self._ref else self._payload_crc(payload)
        # header_mix(KIND_DATA, seq, length) from a table numpy filled for the next
        # MIX_TABLE sequence numbers: an index instead of 128-bit integer arithmetic.
        j = seq - self._mix_base
        if not 0 <= j < len(self._mix):
            self._fill_mix(seq)
            j = 0
        ok = (self._mix[j] ^ pcrc) == crc
        in_order = seq == self.expected
        self.expected = seq + 1
        return seq, ok, in_order

    def check(self, buf: bytearray | memoryview, frames: int) -> BlockCheck:
        """The first ``frames`` frames of ``buf``: one at a time if few, else as a block."""
        if frames >= BLOCK_MIN_FRAMES:
            return self.check_block(buf, frames)
        seqs: list[int] = []
        intact: list[bool] = []
        corrupt = out_of_order = 0
        anomaly = False
        for j in range(frames):
            checked = self.check_one(buf, j * self.size)
            if checked is None:
                anomaly = True
                break
            seq, ok, in_order = checked
            seqs.append(seq)
            intact.append(ok and in_order)
            corrupt += not ok
            out_of_order += not in_order
        return BlockCheck(
            len(seqs),
            np.array(seqs, dtype=np.uint64).astype(np.int64),  # wraps as check_block does
            np.array(intact, dtype=np.int8),
            corrupt,
            out_of_order,
            anomaly,
        )

    def _as_expected(self, buf: bytearray | memoryview, frames: int) -> bool:
        """The first ``frames`` frames of ``buf`` are byte for byte the next ``frames``
        data frames with the reference payload (then each is intact and in order)."""
        ref = self._ref
        first = self.expected
        if ref is None or self._expect_misses >= EXPECTED_MISSES or first + frames > _TOP_SEQ:
            return False
        expect = self._expect
        if expect is None or expect.count < frames:
            expect = self._expect = FrameBlock(self.size, frames, payload=ref)
        expect.fill(first)
        n = frames * self.size
        wanted = memoryview(expect.buf)[:n]
        if isinstance(buf, bytearray):
            same = buf.startswith(wanted)  # one memcmp
        else:
            same = np.array_equal(np.frombuffer(buf, np.uint8, n), np.frombuffer(wanted, np.uint8))
        if not same:
            self._expect_misses += 1
        return same

    def check_block(self, buf: bytearray | memoryview, frames: int) -> BlockCheck:
        """Check the first ``frames`` frames of ``buf`` at once (memcmp, else numpy)."""
        if frames and self._as_expected(buf, frames):
            first = self.expected
            self.expected = first + frames
            seq = np.arange(first, first + frames, dtype=np.uint64).astype(np.int64)
            return BlockCheck(frames, seq, np.ones(frames, np.int8), 0, 0, False)
        size, plen = self.size, self.plen
        rows = np.frombuffer(buf, dtype=np.uint8, count=frames * size).reshape(frames, size)
        length = rows[:, 16:20].copy().view(">u4").ravel()
        good = (
            (rows[:, :4] == _MAGIC).all(axis=1)
            & (rows[:, 4] == KIND_DATA)
            & (rows[:, 5:8] == 0).all(axis=1)
            & (length == plen)
        )
        anomaly = not bool(good.all())
        if anomaly:
            frames = int(np.argmin(good))  # the first anomalous frame
            rows = rows[:frames]
        seq_u = rows[:, 8:16].copy().view(">u8").ravel().astype(np.uint64)
        chk = rows[:, 20:24].copy().view(">u4").ravel().astype(np.uint64)
        if frames == 0:
            return BlockCheck(0, seq_u.astype(np.int64), np.zeros(0, np.int8), 0, 0, anomaly)
        payloads = rows[:, HEADER_SIZE:]
        if self._ref is None:
            self._payload_crc(payloads[0].tobytes())
        ref_bytes = self._ref or b""
        if len(ref_bytes) != plen:
            same = np.zeros(frames, bool)
        elif size % 8 == 0 and plen % 8 == 0:  # compared as 64-bit words: 8x fewer steps
            words = np.frombuffer(buf, dtype=np.uint64, count=frames * size // 8)
            words = words.reshape(frames, size // 8)[:, HEADER_SIZE // 8 :]
            same = (words == np.frombuffer(ref_bytes, dtype=np.uint64)).all(axis=1)
        else:
            same = (payloads == np.frombuffer(ref_bytes, dtype=np.uint8)).all(axis=1)
        pcrc = np.full(frames, self._ref_crc, dtype=np.uint64)
        for j in np.flatnonzero(~same):  # payloads unlike the reference: their own CRC
            pcrc[j] = zlib.crc32(payloads[j].tobytes())
        h = (seq_u * _MIX_SEQ) ^ self._fixed  # uint64 arithmetic wraps mod 2^64
        ok = (((h * _MIX_ALL) >> np.uint64(32)) ^ pcrc) == chk
        wanted = np.empty(frames, dtype=np.uint64)
        wanted[0] = self.expected & 0xFFFF_FFFF_FFFF_FFFF  # seq + 1 past 2^64 - 1: never in order
        wanted[1:] = seq_u[:-1] + np.uint64(1)
        in_order = seq_u == wanted
        if self.expected > 0xFFFF_FFFF_FFFF_FFFF:
            in_order[0] = False
        self.expected = int(seq_u[-1]) + 1
        intact = (ok & in_order).astype(np.int8)
        return BlockCheck(
            frames,
            seq_u.astype(np.int64),
            intact,
            int(frames - np.count_nonzero(ok)),
            int(frames - np.count_nonzero(in_order)),
            anomaly,
        )
