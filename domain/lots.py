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
    """Points taken from one lot, with the lot's dates so that they can be given back as they
    were (an undone redemption, a transfer). Draws recorded before the dates were kept have
    None there."""

    lot_id: int
    points: int
    available_at: datetime | None = None
    expires_at: datetime | None = None


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
            draws.append(LotDraw(lot.lot_id, take, lot.available_at, lot.expires_at))
            remaining -= take
    if remaining > 0:
        raise ValueError(f"lots hold {points - remaining} spendable points, {points} needed")
    return draws


def spendable_points(lots: Sequence[Lot], now: datetime) -> int:
    """Points in lots that are unlocked and not expired at `now`."""
    return sum(lot.points for lot in lots if is_spendable(lot, now))


def draw_up_to(lots: Sequence[Lot], points: int, now: datetime) -> list[LotDraw]:
    """Like draw_oldest_first, but takes what the spendable lots hold when it is less."""
    return draw_oldest_first(lots, min(points, spendable_points(lots, now)), now)


def expired_draws(lots: Sequence[Lot], now: datetime) -> list[LotDraw]:
    """The whole of every lot whose expiry has passed at `now`."""
    return [whole(lot) for lot in lots if is_expired(lot, now)]


def whole(lot: Lot) -> LotDraw:
    """A draw of all of a lot's points."""
    return LotDraw(lot.lot_id, lot.points, lot.available_at, lot.expires_at)


def restore(lots: Sequence[Lot], draws: Sequence[LotDraw], *, at: datetime) -> list[Lot]:
    """Lots after giving back `draws` with their dates (into the same lot when it still exists;
    a draw recorded without dates comes back available at `at`, never expiring)."""
    by_id = {lot.lot_id: lot for lot in lots}
    for draw in draws:
        lot = by_id.get(draw.lot_id)
        if lot is not None:
            by_id[draw.lot_id] = replace(lot, points=lot.points + draw.points)
        else:
            by_id[draw.lot_id] = Lot(
                lot_id=draw.lot_id,
                points=draw.points,
                available_at=draw.available_at or at,
                expires_at=draw.expires_at,
            )
    return sorted(by_id.values(), key=lambda lot: lot.lot_id)


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
