"""The benchmarks' own logic (their figures come from running them, not from tests)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.common import in_turn, median_interval, round_verdict


def test_up_to_five_rounds_a_goal_is_met_or_missed_only_when_every_round_agrees() -> None:
    assert round_verdict([0.91, 0.95, 0.90], 0.90) == "meets"  # the goal itself meets it
    assert round_verdict([0.85, 0.899], 0.90) == "MISSES"
    assert round_verdict([0.85, 0.95, 0.91], 0.90) == "unsettled: 2 of 3 rounds meet it"
    assert round_verdict([1.9], 0.80) == "meets"
    assert round_verdict([0.95, 0.93, 0.99, 0.91, 0.89], 0.90) == "unsettled: 4 of 5 rounds meet it"


def test_with_more_rounds_one_outlier_on_each_side_does_not_unsettle_the_verdict() -> None:
    ratios = [0.70, 0.93, 0.95, 0.91, 0.94, 0.92, 0.96, 0.93, 1.40]  # 9 rounds
    assert median_interval(ratios)[:2] == (0.91, 0.96)  # the 2nd smallest, 2nd largest
    assert round_verdict(ratios, 0.90) == "meets"
    assert round_verdict(ratios, 0.97) == "MISSES"
    assert round_verdict(ratios, 0.92) == "unsettled: 7 of 9 rounds meet it"


@pytest.mark.parametrize(
    ("n", "k", "coverage"),
    [
        (1, 1, 0.0),
        (5, 1, 1 - 2 / 32),  # too few for 95%: the extremes, at 93.75%
        (6, 1, 1 - 2 / 64),
        (9, 2, 1 - 2 * 10 / 512),
        (11, 2, 1 - 2 * 12 / 2048),
        (17, 5, 1 - 2 * sum(math.comb(17, i) for i in range(5)) / 2**17),  # 95.1%
    ],
)
def test_the_median_interval_takes_the_order_statistics_of_the_binomial_rule(
    n: int, k: int, coverage: float
) -> None:
    values = [float(i) for i in range(n, 0, -1)]  # given in any order
    low, high, cov = median_interval(values)
    assert (low, high) == (float(k), float(n + 1 - k))
    assert cov == pytest.approx(coverage)


@given(st.lists(st.floats(0.1, 10.0), min_size=1, max_size=40))
def test_the_median_interval_holds_the_median_at_its_confidence(values: list[float]) -> None:
    low, high, cov = median_interval(values)
    ordered = sorted(values)
    middle = ordered[(len(values) - 1) // 2], ordered[len(values) // 2]
    assert low <= min(middle) <= max(middle) <= high
    assert cov >= 0.95 or (low, high) == (ordered[0], ordered[-1])


def test_each_variant_runs_first_and_last_in_turn() -> None:
    names = ["bare", "floor", "cli"]
    assert [in_turn(names, i) for i in range(3)] == [names, names[::-1], names]
