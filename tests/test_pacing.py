"""The pacing rule, without sockets or clocks: start = max(previous end, ready), end =
start + D. What the receiver's service model (and a sender's rate cap) relies on."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bufdemo.experiment.pacing import WAITING, Pacer

ORIGIN = 7_654_321_000_000_000  # a monotonic clock weeks after boot: exact ints, no floats
intervals = st.integers(min_value=0, max_value=10**10)
positive_intervals = st.integers(min_value=1, max_value=10**10)
# Times relative to ORIGIN: before it (a frame already waiting), or well after it.
offsets = st.integers(min_value=-(10**12), max_value=10**12)


def test_a_first_item_already_waiting_starts_at_the_origin() -> None:
    pacer = Pacer(1_000, origin_ns=ORIGIN)
    assert pacer.pace(WAITING) == ORIGIN + 1_000
    assert pacer.start_ns == ORIGIN


def test_a_first_item_that_comes_later_starts_when_it_comes() -> None:
    pacer = Pacer(1_000, origin_ns=ORIGIN)
    assert pacer.pace(ORIGIN + 5) == ORIGIN + 1_005
    assert pacer.start_ns == ORIGIN + 5


@given(interval=intervals, readies=st.lists(offsets, min_size=1, max_size=200))
def test_every_start_is_the_later_of_the_previous_end_and_its_readiness(
    interval: int, readies: list[int]
) -> None:
    pacer = Pacer(interval, origin_ns=ORIGIN)
    previous_end = ORIGIN
    for offset in readies:
        ready = ORIGIN + offset
        end = pacer.pace(ready)
        assert pacer.start_ns == max(previous_end, ready)
        assert end == pacer.start_ns + interval == pacer.end_ns
        assert end >= previous_end  # targets never go back, whatever order items come in
        previous_end = end


@given(
    interval=intervals,
    # How long before the previous target end each item was there: it was waiting.
    early_by=st.lists(st.integers(min_value=0, max_value=10**12), min_size=1, max_size=500),
)
def test_a_backlog_is_paced_exactly_one_interval_apart_with_no_drift(
    interval: int, early_by: list[int]
) -> None:
    pacer = Pacer(interval, origin_ns=ORIGIN)
    for i, early in enumerate(early_by):
        end = pacer.pace(pacer.end_ns - early)
        assert pacer.start_ns == ORIGIN + i * interval
        assert end == ORIGIN + (i + 1) * interval


@given(
    interval=positive_intervals,
    overshoots=st.lists(st.integers(min_value=0, max_value=10**9), min_size=2, max_size=300),
)
def test_sleep_overshoot_is_absorbed_not_carried_forward(
    interval: int, overshoots: list[int]
) -> None:
    """A receiver that wakes late from each sleep, with frames always waiting: its
    targets stay on the grid, and n items take n intervals plus only the last
    overshoot (the achieved mean service time tends to the interval)."""
    pacer = Pacer(interval, origin_ns=ORIGIN)
    woke = ORIGIN
    for i, late in enumerate(overshoots):
        target = pacer.pace(WAITING)  # the frame was there when the caller woke
        assert target == ORIGIN + (i + 1) * interval
        woke = target + late  # the caller's sleep ends late
    assert woke - ORIGIN == len(overshoots) * interval + overshoots[-1]


@given(
    interval=positive_intervals,
    gap=st.integers(min_value=1, max_value=10**12),
    backlog=st.integers(min_value=1, max_value=50),
    burst=st.integers(min_value=1, max_value=50),
)
def test_an_idle_receiver_does_not_catch_up_with_a_burst(
    interval: int, gap: int, backlog: int, burst: int
) -> None:
    """After an idle gap the next item starts when it arrives; the burst behind it is
    paced from there, not squeezed to make up for the idle time."""
    pacer = Pacer(interval, origin_ns=ORIGIN)
    for _ in range(backlog):
        pacer.pace(WAITING)
    arrival = pacer.end_ns + gap  # the sender paused: nothing to do for a while
    assert pacer.pace(arrival) == arrival + interval
    assert pacer.start_ns == arrival
    for j in range(1, burst):
        pacer.pace(arrival)  # the rest of the burst came with it: waiting now
        assert pacer.start_ns == arrival + j * interval


@given(
    interval=positive_intervals,
    readies=st.lists(st.integers(min_value=0, max_value=10**7), min_size=1, max_size=300),
    window=st.integers(min_value=1, max_value=10**8),
)
def test_no_window_holds_more_starts_than_the_rate_allows(
    interval: int, readies: list[int], window: int
) -> None:
    """What a rate cap needs: whatever the readiness, starts are at least one interval
    apart, so a window of W ns holds at most W / interval + 1 of them."""
    pacer = Pacer(interval, origin_ns=ORIGIN)
    starts = []
    for ready in sorted(readies):
        pacer.pace(ORIGIN + ready)
        starts.append(pacer.start_ns)
    assert all(b - a >= interval for a, b in pairwise(starts))
    for i, first in enumerate(starts):
        inside = sum(1 for s in starts[i:] if s < first + window)
        assert inside <= window // interval + 1


def test_interval_zero_never_waits() -> None:
    pacer = Pacer(0, origin_ns=ORIGIN)
    assert pacer.pace(ORIGIN + 10) == ORIGIN + 10
    assert pacer.pace(WAITING) == ORIGIN + 10  # already waiting: starts at once
    assert pacer.pace(ORIGIN + 25) == ORIGIN + 25


def test_a_rate_is_an_interval_in_whole_nanoseconds() -> None:
    assert Pacer.per_second(1000).interval_ns == 1_000_000
    assert Pacer.per_second(3).interval_ns == 333_333_333
    assert Pacer.per_second(1000, origin_ns=ORIGIN).end_ns == ORIGIN


@pytest.mark.parametrize("rate", [0.0, -1.0, float("nan")])
def test_a_rate_must_be_positive(rate: float) -> None:
    with pytest.raises(ValueError, match="rate must be > 0"):
        Pacer.per_second(rate)


def test_an_interval_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="interval_ns must be >= 0"):
        Pacer(-1)
