"""The fixed-size frame checkers agree with the incremental Decoder, frame by frame."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bufdemo.experiment.framecheck import EXPECTED_MISSES, FrameChecker
from bufdemo.experiment.wire import HEADER_SIZE, KIND_DATA, Decoder, FrameBlock, encode_frame

SIZE = 64


def stream(n: int, size: int = SIZE, first: int = 0) -> bytearray:
    block = FrameBlock(size, n)
    block.fill(first)
    return bytearray(block.buf)


def reference(buf: bytes, size: int, expected: int = 0) -> list[tuple[int, bool, bool]]:
    """(seq, checksum ok, in order) per frame, as the Decoder-based receiver sees them."""
    decoder = Decoder(max_length=size - HEADER_SIZE)
    decoder.receive_data(buf)
    out = []
    while (msg := decoder.next_message()) is not None:
        out.append((msg.seq, msg.intact, msg.seq == expected))
        expected = msg.seq + 1
    return out


def test_a_clean_stream_is_intact_and_in_order_both_ways() -> None:
    buf = stream(300, first=7)
    one = FrameChecker(SIZE, expected=7)
    assert [one.check_one(buf, j * SIZE) for j in range(300)] == reference(bytes(buf), SIZE, 7)
    block = FrameChecker(SIZE, expected=7).check_block(buf, 300)
    assert (block.frames, block.anomaly, block.corrupt, block.out_of_order) == (300, False, 0, 0)
    assert list(block.seq) == list(range(7, 307))
    assert all(block.intact == 1)


@pytest.mark.parametrize("offset", [8, 15, 20, 23, HEADER_SIZE, SIZE - 1])
def test_a_flipped_bit_in_seq_checksum_or_payload_is_caught(offset: int) -> None:
    rng = random.Random(offset)
    buf = stream(100)
    victims = sorted(rng.sample(range(100), 5))
    for v in victims:
        buf[v * SIZE + offset] ^= 1 << rng.randrange(8)
    want = reference(bytes(buf), SIZE)
    one = FrameChecker(SIZE)
    assert [one.check_one(buf, j * SIZE) for j in range(100)] == want
    block = FrameChecker(SIZE).check_block(buf, 100)
    intact = [ok and in_order for _, ok, in_order in want]
    assert [bool(i) for i in block.intact] == intact
    assert [int(s) for s in block.seq] == [s for s, _, _ in want]
    assert block.corrupt == sum(not ok for _, ok, _ in want) > 0
    assert block.out_of_order == sum(not o for _, _, o in want)


def test_other_payloads_are_checked_by_their_own_crc() -> None:
    frames = b"".join(
        encode_frame(KIND_DATA, s, bytes([s % 251]) * (SIZE - HEADER_SIZE)) for s in range(50)
    )
    buf = bytearray(frames)
    buf[10 * SIZE + 30] ^= 0x40  # one payload corrupted
    block = FrameChecker(SIZE).check_block(buf, 50)
    assert (block.corrupt, block.intact[10], block.intact.sum()) == (1, 0, 49)


def test_a_gap_or_repeat_is_out_of_order() -> None:
    buf = stream(10) + stream(10, first=20)  # seq 0..9 then 20..29
    block = FrameChecker(SIZE).check_block(buf, 20)
    assert (block.out_of_order, block.corrupt, block.intact[10]) == (1, 0, 0)


@pytest.mark.parametrize(("offset", "value"), [(0, 0x58), (4, 1), (6, 1), (19, 3)])
def test_a_malformed_frame_stops_both_checkers_before_it(offset: int, value: int) -> None:
    buf = stream(60)
    buf[40 * SIZE + offset] = value  # magic, kind, reserved, length
    assert FrameChecker(SIZE).check_one(buf, 40 * SIZE) is None
    block = FrameChecker(SIZE).check_block(buf, 60)
    assert (block.anomaly, block.frames, block.intact.sum()) == (True, 40, 40)


def test_the_expected_seq_carries_over_between_blocks() -> None:
    checker = FrameChecker(SIZE)
    checker.check_block(stream(40), 40)
    assert checker.expected == 40
    assert checker.check_block(stream(40, first=40), 40).out_of_order == 0
    assert checker.check_block(stream(40, first=40), 40).out_of_order == 1


def test_sequence_numbers_beyond_the_mix_table_and_near_the_top_are_checked() -> None:
    checker = FrameChecker(SIZE)
    for first in (0, 4095, 4096, 10_000_000, 2**64 - 3):
        buf = (
            stream(3, first=first)
            if first < 2**64 - 3
            else bytearray(
                b"".join(encode_frame(KIND_DATA, first + j, b"bufdemo " * 5) for j in range(3))
            )
        )
        checker.expected = first
        assert [checker.check_one(buf, j * SIZE) for j in range(3)] == reference(
            bytes(buf), SIZE, first
        )


@pytest.mark.parametrize("size", [24, 25, 61, 1024])
def test_any_frame_size_checks_payloads_word_aligned_or_not(size: int) -> None:
    buf = stream(40, size=size)
    if size > HEADER_SIZE:
        buf[7 * size + size - 1] ^= 0x01  # the last payload byte of frame 7
    block = FrameChecker(size).check_block(buf, 40)
    assert block.corrupt == (1 if size > HEADER_SIZE else 0)
    assert [int(i) for i in block.intact] == [int(j != 7 or size == HEADER_SIZE) for j in range(40)]


def primed(size: int = SIZE) -> FrameChecker:
    """A checker that has seen one clean block: it knows the payload and expects seq 40."""
    checker = FrameChecker(size)
    assert checker.check_block(stream(40, size=size), 40).intact.all()
    return checker


def test_a_known_senders_blocks_compared_whole_are_intact_and_in_order() -> None:
    checker = primed()
    block = checker.check_block(stream(300, first=40), 300)
    assert (block.frames, block.anomaly, block.corrupt, block.out_of_order) == (300, False, 0, 0)
    assert list(block.seq) == list(range(40, 340))
    assert block.intact.dtype == np.int8
    assert block.intact.all()
    assert checker.expected == 340
    view = memoryview(stream(10, first=340))  # not a bytearray: compared by numpy
    assert checker.check_block(view, 10).intact.all()
    assert checker.expected == 350


@settings(max_examples=200, deadline=None)
@given(
    frames=st.integers(1, 60),
    flips=st.lists(
        st.tuples(st.integers(0, 59), st.sampled_from([8, 12, 15, 20, 23, 24, 40, SIZE - 1])),
        max_size=4,
    ),
    first=st.sampled_from([40, 41, 39, 1000]),
)
def test_after_a_clean_block_any_damage_is_found_as_the_decoder_finds_it(
    frames: int, flips: list[tuple[int, int]], first: int
) -> None:
    """Seq, checksum or payload bits flipped, or the block not the one expected next: the
    whole-block comparison misses and the field checks report what the Decoder reports."""
    buf = stream(frames, first=first)
    for frame, offset in flips:
        if frame < frames:
            buf[frame * SIZE + offset] ^= 0x10
    want = reference(bytes(buf), SIZE, expected=40)
    block = primed().check_block(buf, frames)
    assert [int(s) for s in block.seq] == [s for s, _, _ in want]
    assert [bool(i) for i in block.intact] == [ok and in_order for _, ok, in_order in want]
    assert block.corrupt == sum(not ok for _, ok, _ in want)
    assert block.out_of_order == sum(not o for _, _, o in want)


def test_a_malformed_frame_after_a_clean_block_still_stops_the_check_before_it() -> None:
    buf = stream(60, first=40)
    buf[25 * SIZE + 4] = 1  # kind
    block = primed().check_block(buf, 60)
    assert (block.anomaly, block.frames, int(block.intact.sum())) == (True, 25, 25)


def test_a_sender_with_other_payloads_is_checked_field_by_field_every_time() -> None:
    checker = primed()
    for k in range(2 * EXPECTED_MISSES):
        first = 40 + 50 * k
        frames = b"".join(
            encode_frame(KIND_DATA, s, bytes([s % 251]) * (SIZE - HEADER_SIZE))
            for s in range(first, first + 50)
        )
        block = checker.check_block(bytearray(frames), 50)
        assert (block.frames, block.corrupt, block.out_of_order) == (50, 0, 0)
    # Back to the reference payload: still right, whether compared whole or field by field.
    assert checker.check_block(stream(30, first=440), 30).intact.all()


def test_the_whole_block_comparison_stops_short_of_the_top_sequence_number() -> None:
    checker = primed()
    checker.expected = 2**64 - 2
    buf = bytearray(
        b"".join(encode_frame(KIND_DATA, 2**64 - 2 + j, b"bufdemo " * 5) for j in range(2))
    )
    block = checker.check_block(buf, 2)
    assert (block.frames, block.corrupt, block.out_of_order) == (2, 0, 0)
    assert checker.expected == 2**64
