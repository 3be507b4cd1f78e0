"""The wire format: frames survive any chunking; bad frames are protocol errors."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bufdemo.errors import ProtocolError
from bufdemo.experiment import wire
from bufdemo.experiment.wire import (
    HEADER_SIZE,
    KIND_DATA,
    KIND_HELLO,
    MAGIC,
    Decoder,
    FrameBlock,
    Hello,
    Message,
    decode_hello,
    encode_frame,
    encode_hello,
)


def decode_all(decoder: Decoder, chunks: list[bytes]) -> list[Message]:
    out = []
    for chunk in chunks:
        decoder.receive_data(chunk)
        while (msg := decoder.next_message()) is not None:
            out.append(msg)
    return out


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


frames = st.lists(
    st.tuples(st.integers(0, 2**64 - 1), st.binary(max_size=300)), min_size=1, max_size=20
)


@given(frames=frames, cuts=st.lists(st.integers(0, 10_000), max_size=40))
def test_decoder_yields_the_same_messages_whatever_the_chunking(
    frames: list[tuple[int, bytes]], cuts: list[int]
) -> None:
    stream = b"".join(encode_frame(KIND_DATA, seq, payload) for seq, payload in frames)
    expected = [Message(KIND_DATA, seq, payload, True) for seq, payload in frames]
    assert decode_all(Decoder(300), [stream]) == expected
    assert decode_all(Decoder(300), split(stream, cuts)) == expected
    byte_by_byte = [stream[i : i + 1] for i in range(len(stream))]
    assert decode_all(Decoder(300), byte_by_byte) == expected


def valid_start(head: bytes, max_length: int) -> bool:
    """Could ``head`` (at most a header's worth of bytes) begin a frame the decoder takes?"""
    if head[:4] != MAGIC[: len(head[:4])]:
        return False
    if len(head) < HEADER_SIZE:
        return True
    length = int.from_bytes(head[16:20], "big")
    return head[4] in (KIND_DATA, KIND_HELLO) and head[5:8] == bytes(3) and length <= max_length


# Garbage, whole frames and frames cut short, in any order: decoding must get past the
# magic often, not only fail on it.
whole_frames = st.builds(
    encode_frame,
    st.sampled_from([KIND_DATA, KIND_HELLO]),
    st.integers(0, 2**64 - 1),
    st.binary(max_size=40),
)
pieces = st.one_of(
    st.binary(max_size=60),
    whole_frames,
    st.builds(lambda frame, n: frame[:n], whole_frames, st.integers(0, 70)),
)


@given(st.lists(pieces, max_size=8).map(b"".join))
def test_any_bytes_decode_or_raise_protocol_error_and_nothing_else(data: bytes) -> None:
    """Every message is exactly the next frame of the stream; what is left over is the
    beginning of a valid frame, or the decoder raised ProtocolError at an invalid one."""
    max_length = 64
    decoder = Decoder(max_length=max_length)
    consumed = 0
    try:
        for i in range(0, len(data), 7):
            decoder.receive_data(data[i : i + 7])
            while (msg := decoder.next_message()) is not None:
                frame = data[consumed : consumed + HEADER_SIZE + len(msg.payload)]
                assert len(msg.payload) <= max_length
                assert frame[HEADER_SIZE:] == msg.payload
                assert msg.intact == (encode_frame(msg.kind, msg.seq, msg.payload) == frame)
                consumed += len(frame)
    except ProtocolError:
        assert not valid_start(data[consumed : consumed + HEADER_SIZE], max_length)
        return
    assert consumed + decoder.buffered == len(data)
    assert valid_start(data[consumed : consumed + HEADER_SIZE], max_length)


@given(st.binary(min_size=1, max_size=4))
def test_wrong_magic_is_rejected_as_soon_as_it_differs(prefix: bytes) -> None:
    decoder = Decoder(64)
    decoder.receive_data(prefix)
    if MAGIC.startswith(prefix):
        assert decoder.next_message() is None
    else:
        with pytest.raises(ProtocolError, match="bad magic"):
            decoder.next_message()


def test_length_above_maximum_is_a_protocol_error_before_any_allocation() -> None:
    header = bytearray(encode_frame(KIND_DATA, 1, b""))
    header[16:20] = (0xFFFFFFFF).to_bytes(4, "big")  # a 4 GB length field
    decoder = Decoder(max_length=1024)
    decoder.receive_data(bytes(header))
    with pytest.raises(ProtocolError, match="exceeds the maximum 1024"):
        decoder.next_message()
    assert decoder.buffered == HEADER_SIZE


def test_unknown_kind_is_a_protocol_error() -> None:
    frame = bytearray(encode_frame(KIND_DATA, 1, b"x"))
    frame[4] = 9
    decoder = Decoder(16)
    decoder.receive_data(bytes(frame))
    with pytest.raises(ProtocolError, match="unknown frame kind 9"):
        decoder.next_message()


@pytest.mark.parametrize("offset", [4, 8, 15, 20, 23, HEADER_SIZE, HEADER_SIZE + 9])
def test_a_corrupted_byte_outside_the_length_makes_the_message_not_intact(offset: int) -> None:
    frame = bytearray(encode_frame(KIND_DATA, 7, b"0123456789"))
    frame[offset] ^= 0x01  # at offset 4: kind 0 -> 1, still a known kind; the CRC catches it
    decoder = Decoder(64)
    decoder.receive_data(bytes(frame))
    msg = decoder.next_message()
    assert msg is not None
    assert not msg.intact


def test_a_corrupted_length_is_a_protocol_error_or_an_incomplete_frame() -> None:
    frame = bytearray(encode_frame(KIND_DATA, 7, b"0123456789"))
    frame[16] ^= 0x01  # length 10 -> 16,777,226: above the maximum
    decoder = Decoder(64)
    decoder.receive_data(bytes(frame))
    with pytest.raises(ProtocolError, match="exceeds the maximum"):
        decoder.next_message()
    frame[16] ^= 0x01
    frame[19] ^= 0x01  # length 10 -> 11: waits for one more byte
    decoder = Decoder(64)
    decoder.receive_data(bytes(frame))
    assert decoder.next_message() is None
    assert decoder.bytes_needed() == 1


def test_bytes_needed_never_reads_past_one_frame() -> None:
    stream = encode_frame(KIND_DATA, 0, b"a" * 100) + encode_frame(KIND_DATA, 1, b"b" * 5)
    decoder = Decoder(100)
    pos, seen = 0, []
    while pos < len(stream):
        need = decoder.bytes_needed()
        decoder.receive_data(stream[pos : pos + need])
        pos += need
        if (msg := decoder.next_message()) is not None:
            seen.append((msg.seq, pos))
            assert decoder.buffered == 0
    assert seen == [(0, HEADER_SIZE + 100), (1, 2 * HEADER_SIZE + 105)]


@given(first=st.integers(0, 2**64 - 300), size=st.integers(HEADER_SIZE, 2000))
def test_frame_block_frames_what_encode_frame_would(first: int, size: int) -> None:
    """numpy frames a whole block exactly as the one-at-a-time encoder does."""
    block = FrameBlock(size, count=7)
    block.fill(first)
    payload = bytes(block.views[0][HEADER_SIZE:])
    assert [bytes(v) for v in block.views] == [
        encode_frame(KIND_DATA, first + j, payload) for j in range(7)
    ]


@given(
    starts=st.lists(st.integers(0, 3 * wire._TABLE_FRAMES), min_size=1, max_size=4),
    blocks=st.integers(1, 80),
)
def test_frame_block_refills_in_sequence_and_after_any_jump(starts: list[int], blocks: int) -> None:
    """Blocks filled one after another (across the precomputed table's end) and after a
    jump anywhere, backwards too, frame what encode_frame would."""
    count = 1024
    block = FrameBlock(64, count=count)
    payload = bytes(block.views[0][HEADER_SIZE:])
    firsts = [s + k * count for s in starts for k in range(blocks)]
    for first in firsts[:: max(1, len(firsts) // 12)] + firsts[-3:]:
        block.fill(first)
        for j in (0, 1, count - 1):
            assert bytes(block.views[j]) == encode_frame(KIND_DATA, first + j, payload)


def test_frames_reject_a_size_below_the_header() -> None:
    with pytest.raises(ValueError, match="smaller than the 24-byte header"):
        FrameBlock(HEADER_SIZE - 1)


@given(seq=st.integers(0, 2**64 - 1), bit=st.integers(0, 8 * (HEADER_SIZE - 4) - 1))
def test_every_single_bit_flip_in_the_header_is_caught(seq: int, bit: int) -> None:
    """Flip any bit of kind, reserved, seq, length or checksum: never a clean message."""
    frame = bytearray(encode_frame(KIND_DATA, seq, b"x" * 10))
    frame[4 + bit // 8] ^= 1 << (bit % 8)
    decoder = Decoder(64)
    decoder.receive_data(bytes(frame))
    try:
        msg = decoder.next_message()
    except ProtocolError:
        return  # an impossible kind or length: rejected outright
    if msg is None:  # only a longer length makes the frame wait, for bytes never sent
        length = int.from_bytes(frame[16:20], "big")
        assert length > 10
        assert decoder.bytes_needed() == length - 10
    else:
        assert not msg.intact


def test_hello_round_trip_and_validation() -> None:
    hello = Hello(b"t" * 16, 12345, 1024)
    decoder = Decoder(64)
    decoder.receive_data(encode_hello(hello))
    msg = decoder.next_message()
    assert msg is not None
    assert msg.kind == KIND_HELLO
    assert decode_hello(msg) == hello
    with pytest.raises(ProtocolError, match="expected a hello"):
        decode_hello(Message(KIND_DATA, 0, b"", True))
    with pytest.raises(ProtocolError, match="malformed hello"):
        decode_hello(Message(KIND_HELLO, 0, b"short", True))
