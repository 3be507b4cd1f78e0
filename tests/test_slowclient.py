"""The slow-client lab experiment: its pure parts, and each server design on real sockets.

The real-socket tests assert what each design does by construction (a blocked server,
a growing queue, a disconnect), never how fast: the latency bounds of the verdict are
for `bufdemo lab run slow-client`, on a machine that is not busy with other work.
"""

from __future__ import annotations

import pytest

from bufdemo.lecture.lab import EXPERIMENTS
from bufdemo.lecture.lab import slowclient as sc


def test_percentile_is_the_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert sc.percentile(values, 0.5) == 50.0
    assert sc.percentile(values, 0.99) == 99.0
    assert sc.percentile(values, 1.0) == 100.0
    assert sc.percentile([], 0.5) is None
    assert sc.percentile([7.0], 0.99) == 7.0


def test_an_output_queue_hands_out_what_is_left_after_a_partial_send() -> None:
    q = sc._Queue()
    q.put(b"abcd")
    q.put(b"efgh")
    assert q.size == 8
    q.consume(5)
    assert q.size == 3
    assert b"".join(bytes(p) for p in q.head()) == b"fgh"
    q.consume(3)
    assert q.size == 0
    assert not q.head()


def test_slow_client_is_registered() -> None:
    assert EXPERIMENTS["slow-client"].function is sc.slow_client


@pytest.mark.slow
def test_a_blocking_send_to_the_slow_client_stops_everyone() -> None:
    r = sc.run_design("a-blocking")
    assert r.received == r.expected  # everything arrives, late
    assert r.slow_paused >= sc.SLOW_PAUSE
    assert r.blocked_longest > 0.5 * sc.SLOW_PAUSE
    # The pre-roll left the server blocked on the slow client: the first scheduled
    # message reached the others only once the slow client read again.
    assert max(r.latencies) >= r.slow_paused
    assert not r.slow_disconnected
    assert r.queued_peak == 0


@pytest.mark.slow
def test_output_queues_grow_with_the_slow_client_and_a_limit_cuts_it_off() -> None:
    b = sc.run_design("b-queues")
    c = sc.run_design("c-limit")
    bound = (1 + sc.FAST_CLIENTS) * (sc.OUTPUT_LIMIT + sc.MESSAGE)
    assert b.received == b.expected
    assert c.received == c.expected
    assert not b.slow_disconnected
    assert b.others_disconnected == 0
    assert b.queued_peak > bound  # the slow client's backlog, in the server's memory
    assert c.slow_disconnected
    assert c.others_disconnected == 0
    assert c.queued_peak <= bound
    assert b.blocked_seconds == c.blocked_seconds == 0.0
