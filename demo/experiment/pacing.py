"""Pacing without I/O: one item per interval, times in, target times out.

The rule (the receiver's service model, docs/run-format.md): item i occupies the slot
``[start_i, start_i + D)`` where

    start_i = max(end_{i-1}, ready_i)        end_i = start_i + D

``ready_i`` is when item i could begin (a frame arrived, a message is ready to go);
``end_{i-1}`` is the previous item's *target* end, not the moment the caller actually got
there. Two consequences, both on purpose:

- overshoot is absorbed: a caller that sleeps until ``end_i`` and wakes late does not
  push item i+1 later, so while items keep coming (a backlog) the ends are exactly
  ``start_0 + (i+1)*D``, with no drift, and the achieved mean interval is D;
- an idle stretch is not made up: an item that became ready after the previous end
  starts when it was ready, so a burst after a pause is paced too, not rushed.

A caller that knows an item was already waiting (a frame in the kernel's receive queue
when it went to read) need not know when it arrived: any ``ready_ns`` not later than the
previous end gives the same start; :data:`WAITING` says so.

:class:`Pacer` reads no clock and sleeps nowhere: the caller reads its own clock, passes
the times, and waits until the target it gets back (the receiver until ``end``; a sender
capped at a rate would wait until ``start`` before each send). That keeps the rule
testable in microseconds.
"""

from __future__ import annotations

__all__ = ["WAITING", "Pacer"]

# A ``ready_ns`` for an item that was already waiting: the earliest possible time, so the
# previous end decides the start.
WAITING = 0


class Pacer:
    """Slots of ``interval_ns`` each, one per item, none before ``origin_ns``.

    ``interval_ns`` may be 0: then every item starts (and ends) when it is ready, or
    at the previous start if it was already waiting, and nothing waits.
    """

    __slots__ = ("end_ns", "interval_ns", "start_ns")

    def __init__(self, interval_ns: int, origin_ns: int = 0) -> None:
        if interval_ns < 0:
            raise ValueError(f"interval_ns must be >= 0, got {interval_ns}")
        self.interval_ns = interval_ns
        self.start_ns = origin_ns  # the current item's start (before any: the origin)
        self.end_ns = origin_ns  # the current item's target end: the next may not start before

    def pace(self, ready_ns: int) -> int:
        """Begin the next item, ready at ``ready_ns``; return its target end.

        Its start is ``max(previous end, ready_ns)``, kept in :attr:`start_ns`.
        """
        start = self.end_ns if self.end_ns > ready_ns else ready_ns
        self.start_ns = start
        end = start + self.interval_ns
        self.end_ns = end
        return end

    @classmethod
    def per_second(cls, rate: float, origin_ns: int = 0) -> Pacer:
        """A pacer for ``rate`` items per second (the interval rounded to whole ns)."""
        if not rate > 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        return cls(round(1e9 / rate), origin_ns)
