"""Lots are spent soonest-expiry first; months add like a calendar; money stays exact."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from domain.errors import InvalidAmount, UnknownCurrency
from domain.lots import Lot, LotDraw, add_months, apply_draws, draw_oldest_first
from domain.money import CURRENCY_MINOR_UNITS, check_amount

NOW = datetime(2024, 6, 1, tzinfo=UTC)


def lot(lot_id: int, points: int, *, expires_in_days: int | None, locked_days: int = 0) -> Lot:
    return Lot(
        lot_id=lot_id,
        points=points,
        available_at=NOW + timedelta(days=locked_days),
        expires_at=None if expires_in_days is None else NOW + timedelta(days=expires_in_days),
    )


def test_draws_follow_expiry_then_age_and_skip_locked_or_expired_lots() -> None:
    lots = [
        lot(2, 10, expires_in_days=None),
        lot(3, 10, expires_in_days=30),
        lot(4, 10, expires_in_days=30),
        lot(5, 10, expires_in_days=10),
        lot(6, 10, expires_in_days=5, locked_days=1),  # not yet available
        lot(7, 10, expires_in_days=0),  # expires right now
        lot(1, 10, expires_in_days=None),
    ]
    draws = draw_oldest_first(lots, 45, NOW)
    assert [(d.lot_id, d.points) for d in draws] == [(5, 10), (3, 10), (4, 10), (1, 10), (2, 5)]
    # Each draw keeps its lot's dates, so the points can be given back as they were.
    assert all(d.expires_at == next(lot.expires_at for lot in lots if lot.lot_id == d.lot_id) for d in draws)


def test_drawing_more_than_the_spendable_lots_hold_fails() -> None:
    lots = [lot(1, 10, expires_in_days=None), lot(2, 100, expires_in_days=3, locked_days=1)]
    with pytest.raises(ValueError, match="10 spendable points, 11 needed"):
        draw_oldest_first(lots, 11, NOW)


def test_applying_draws_shrinks_lots_and_drops_the_empty_ones() -> None:
    lots = [lot(1, 10, expires_in_days=None), lot(2, 10, expires_in_days=None)]
    left = apply_draws(lots, [LotDraw(1, 10), LotDraw(2, 4)])
    assert [(x.lot_id, x.points) for x in left] == [(2, 6)]
    assert left[0].expires_at is None


@pytest.mark.parametrize(
    ("start", "months", "end"),
    [
        (datetime(2024, 1, 31, 12, tzinfo=UTC), 1, datetime(2024, 2, 29, 12, tzinfo=UTC)),
        (datetime(2023, 1, 31, tzinfo=UTC), 1, datetime(2023, 2, 28, tzinfo=UTC)),
        (datetime(2024, 2, 29, tzinfo=UTC), 12, datetime(2025, 2, 28, tzinfo=UTC)),
        (datetime(2024, 12, 15, tzinfo=UTC), 1, datetime(2025, 1, 15, tzinfo=UTC)),
        (datetime(2024, 3, 31, tzinfo=UTC), -1, datetime(2024, 2, 29, tzinfo=UTC)),
        (datetime(2024, 8, 31, tzinfo=UTC), 25, datetime(2026, 9, 30, tzinfo=UTC)),
    ],
)
def test_add_months_clamps_to_the_end_of_a_short_month(start: datetime, months: int, end: datetime) -> None:
    assert add_months(start, months) == end


def test_common_currencies_have_their_iso_minor_units() -> None:
    expected = {
        "CNY": 2,
        "USD": 2,
        "EUR": 2,
        "JPY": 0,
        "KRW": 0,
        "GBP": 2,
        "HKD": 2,
        "TWD": 2,
        "SGD": 2,
        "KWD": 3,
        "CLF": 4,
    }
    assert {code: CURRENCY_MINOR_UNITS[code] for code in expected} == expected
    assert len(CURRENCY_MINOR_UNITS) > 150


@pytest.mark.parametrize(
    ("amount", "currency"),
    [("128.50", "CNY"), ("100.00", "JPY"), ("0", "USD"), ("1.234", "KWD"), ("999999999999.99", "CNY")],
)
def test_amounts_within_the_currency_precision_pass(amount: str, currency: str) -> None:
    check_amount(Decimal(amount), currency)


@pytest.mark.parametrize(
    ("amount", "currency"),
    [
        ("-0.01", "CNY"),
        ("100.5", "JPY"),
        ("12.345", "CNY"),
        ("NaN", "CNY"),
        ("Infinity", "USD"),
        ("1000000000000", "CNY"),
    ],
)
def test_amounts_out_of_range_or_too_precise_are_refused(amount: str, currency: str) -> None:
    with pytest.raises(InvalidAmount) as refused:
        check_amount(Decimal(amount), currency, field="items[0].amount")
    assert refused.value.extra == {"field": "items[0].amount"}


def test_an_unknown_currency_is_refused() -> None:
    with pytest.raises(UnknownCurrency):
        check_amount(Decimal(1), "RMB")
