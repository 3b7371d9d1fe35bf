"""Quantiles of what a histogram observed between two scrapes (the bench's follower delays)."""

from __future__ import annotations

import math

from devtools.bench.followers import quantile

INF = math.inf


def test_quantiles_come_from_the_difference_of_the_scrapes_interpolated_in_the_bucket() -> None:
    before = {0.01: 100.0, 0.1: 100.0, 1.0: 100.0, INF: 100.0}  # all before the window
    after = {0.01: 100.0, 0.1: 150.0, 1.0: 200.0, INF: 200.0}  # 50 in (0.01, 0.1], 50 in (0.1, 1]

    assert math.isclose(quantile(before, after, 0.5), 0.1)
    assert math.isclose(quantile(before, after, 0.25), 0.055)
    assert math.isclose(quantile(before, after, 0.99), 0.1 + 0.9 * 0.98)


def test_nothing_observed_has_no_quantile_and_the_overflow_bucket_reports_its_lower_bound() -> None:
    same = {0.01: 5.0, INF: 5.0}
    assert math.isnan(quantile(same, same, 0.99))
    assert quantile({}, {0.01: 1.0, INF: 10.0}, 0.99) == 0.01
