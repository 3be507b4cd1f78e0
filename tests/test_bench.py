"""The benchmarks' own logic (their figures come from running them, not from tests)."""

from __future__ import annotations

from bench.common import round_verdict


def test_a_goal_is_met_or_missed_only_when_every_round_agrees() -> None:
    assert round_verdict([0.91, 0.95, 0.90], 0.90) == "meets"  # the goal itself meets it
    assert round_verdict([0.85, 0.899], 0.90) == "MISSES"
    assert round_verdict([0.85, 0.95, 0.91], 0.90) == "unsettled: 2 of 3 rounds meet it"
    assert round_verdict([1.9], 0.80) == "meets"
