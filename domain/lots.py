"""Expiry lots: one per earn, spent and expired oldest-expiry first."""

from __future__ import annotations

import calendar
from collections.abc import Sequence
from datetime import datetime

from msgspec import Struct
from msgspec.structs import replace


class Lot(Struct, frozen=True, kw_only=True):
    """Points left from one earn; `lot_id` is the stream version of that earn."""

    lot_id: int
    points: int
    available_at: datetime
    expires_at: datetime | None


class LotDraw(Struct, frozen=True):
    """Points taken from one lot."""

    lot_id: int
    points: int


def is_spendable(lot: Lot, now: datetime) -> bool:
    """Whether the lot is unlocked and not yet expired at `now`."""
    return lot.available_at <= now and not is_expired(lot, now)


def is_expired(lot: Lot, now: datetime) -> bool:
    """Whether the lot's expiry has passed at `now`."""
    return lot.expires_at is not None and lot.expires_at <= now


def spending_order(lots: Sequence[Lot]) -> list[Lot]:
    """Lots soonest-expiring first, never-expiring last, ties by age (lot_id)."""
    expiring = sorted(
        (lot for lot in lots if lot.expires_at is not None),
        key=lambda lot: (lot.expires_at, lot.lot_id),
    )
    forever = sorted((lot for lot in lots if lot.expires_at is None), key=lambda lot: lot.lot_id)
    return expiring + forever


def draw_oldest_first(lots: Sequence[Lot], points: int, now: datetime) -> list[LotDraw]:
    """Choose which spendable lots pay `points`; ValueError if they cannot."""
    if points < 0:
        raise ValueError("cannot draw a negative number of points")
    draws: list[LotDraw] = []
    remaining = points
    for lot in spending_order([lot for lot in lots if is_spendable(lot, now)]):
        if remaining == 0:
            break
        take = min(lot.points, remaining)
        if take > 0:
            draws.append(LotDraw(lot.lot_id, take))
            remaining -= take
    if remaining > 0:
        raise ValueError(f"lots hold {points - remaining} spendable points, {points} needed")
    return draws


def apply_draws(lots: Sequence[Lot], draws: Sequence[LotDraw]) -> list[Lot]:
    """Lots after taking `draws` from them; emptied lots are dropped."""
    taken: dict[int, int] = {}
    for draw in draws:
        taken[draw.lot_id] = taken.get(draw.lot_id, 0) + draw.points
    result: list[Lot] = []
    for lot in lots:
        left = lot.points - taken.get(lot.lot_id, 0)
        if left > 0:
            result.append(lot if left == lot.points else replace(lot, points=left))
    return result


def add_months(at: datetime, months: int) -> datetime:
    """`at` plus whole calendar months, clamping the day (Jan 31 + 1 month = Feb 28/29)."""
    index = at.year * 12 + (at.month - 1) + months
    year, month = divmod(index, 12)
    day = min(at.day, calendar.monthrange(year, month + 1)[1])
    return at.replace(year=year, month=month + 1, day=day)
