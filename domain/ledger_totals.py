"""Running totals over a member's lots and accruals: the balance, the next expiry, qualifying
points and the next instant of change at any `now` in O(log n), where sums over every lot and
accrual grew with each earn.

Every query of the member's balance is a sum of points whose instant is at or before `now`
(a lot is expired once `expires_at <= now`; it stops being pending once `available_at <= now`
or it expired; an accrual is outside the tier window once `occurred_at <= now - window`): so
points kept sorted by instant with prefix sums answer each with a bisection, for any `now`,
past or future, exactly as the sums did.

The totals are derived state, never recorded: `LedgerTotals.of` follows the member's lists by
identity and length (the aggregate only appends to them in place; any other change assigns a
new list), adding what was appended and rebuilding after anything else (a snapshot, a
redemption, an expiry).
"""

from __future__ import annotations

from bisect import bisect_right
from datetime import datetime
from itertools import accumulate
from operator import itemgetter
from typing import Generic, TypeVar

from domain.lots import Lot
from domain.member_values import Accrual

T = TypeVar("T")


class SortedSums:
    """Points at instants, sorted by instant, with running sums."""

    __slots__ = ("_instants", "_sums")

    def __init__(self, points_at: list[tuple[datetime, int]]) -> None:
        points_at.sort()  # by instant (ties by points: their order within an instant is moot)
        self._instants: list[datetime] = [instant for instant, _ in points_at]
        # _sums[i]: the points of the first i instants
        self._sums: list[int] = list(accumulate(map(itemgetter(1), points_at), initial=0))

    def add(self, instant: datetime, points: int) -> None:
        """Count `points` at `instant` (in order: O(1); out of order: the sums after it move)."""
        instants, sums = self._instants, self._sums
        if not instants or instant >= instants[-1]:
            instants.append(instant)
            sums.append(sums[-1] + points)
            return
        i = bisect_right(instants, instant)
        instants.insert(i, instant)
        sums[i + 1 :] = [total + points for total in sums[i:]]

    @property
    def total(self) -> int:
        """All the points."""
        return self._sums[-1]

    def up_to(self, instant: datetime) -> int:
        """The points at or before `instant`."""
        return self._sums[bisect_right(self._instants, instant)]

    def first(self) -> datetime | None:
        """The earliest instant, if any."""
        return self._instants[0] if self._instants else None

    def first_after(self, instant: datetime) -> datetime | None:
        """The earliest instant after `instant`, if any."""
        i = bisect_right(self._instants, instant)
        return self._instants[i] if i < len(self._instants) else None

    def instants_in(self, after: datetime, until: datetime) -> list[datetime]:
        """The instants in (after, until], in order."""
        return self._instants[bisect_right(self._instants, after) : bisect_right(self._instants, until)]


class _Following(Generic[T]):
    """Totals of a list the aggregate only appends to in place (any other change assigns a new
    list): followed by identity and length."""

    __slots__ = ("count", "items")

    def __init__(self, items: list[T]) -> None:
        # Counted all at once by the subclass (a sort, not one insertion each).
        self.items = items  # kept referenced, so its identity is never reused by another list
        self.count = len(items)

    def follows(self, items: list[T]) -> bool:
        """Brought up to date with `items`; False when they are another list, or shrank."""
        if self.items is not items or len(items) < self.count:
            return False
        if len(items) > self.count:
            self.catch_up()
        return True

    def catch_up(self) -> None:
        """Count the items appended since the last call."""
        for item in self.items[self.count :]:
            self._count(item)
        self.count = len(self.items)

    def _count(self, item: T) -> None:
        raise NotImplementedError


class LotTotals(_Following[Lot]):
    """A member's lots by the instants that move them between pending, spendable and expired."""

    __slots__ = ("_unlocks", "expiries", "settles", "total")

    def __init__(self, lots: list[Lot]) -> None:
        self.total = sum(lot.points for lot in lots)
        # Lots that expire, at their expiry; every lot at the instant it stops being pending
        # (it unlocks, or it expires while still locked).
        self.expiries = SortedSums(
            [(lot.expires_at, lot.points) for lot in lots if lot.expires_at is not None]
        )
        self.settles = SortedSums([(_settles(lot), lot.points) for lot in lots])
        self._unlocks: SortedSums | None = None  # made when first asked (only the clock's question)
        super().__init__(lots)

    @property
    def unlocks(self) -> SortedSums:
        """Every lot at its available_at."""
        if self._unlocks is None:
            self._unlocks = SortedSums([(lot.available_at, lot.points) for lot in self.items[: self.count]])
        return self._unlocks

    def _count(self, item: Lot) -> None:
        self.total += item.points
        if item.expires_at is not None:
            self.expiries.add(item.expires_at, item.points)
        self.settles.add(_settles(item), item.points)
        if self._unlocks is not None:
            self._unlocks.add(item.available_at, item.points)

    def split(self, now: datetime) -> tuple[int, int, int]:
        """(spendable, pending, expired) points at `now`."""
        lapsed = self.expiries.up_to(now)
        pending = self.total - self.settles.up_to(now)
        return self.total - lapsed - pending, pending, lapsed

    def soonest_expiry(self, now: datetime) -> tuple[datetime, int] | None:
        """The first expiry after `now` and the points of the lots expiring then."""
        soonest = self.expiries.first_after(now)
        if soonest is None:
            return None
        return soonest, self.expiries.up_to(soonest) - self.expiries.up_to(now)


class AccrualTotals(_Following[Accrual]):
    """A member's accruals by business time."""

    __slots__ = ("by_time",)

    def __init__(self, accruals: list[Accrual]) -> None:
        self.by_time = SortedSums([(a.occurred_at, a.points) for a in accruals])
        super().__init__(accruals)

    def _count(self, item: Accrual) -> None:
        self.by_time.add(item.occurred_at, item.points)

    def after(self, since: datetime) -> int:
        """The points earned with a business time after `since`."""
        return self.by_time.total - self.by_time.up_to(since)

    def within(self, since: datetime, until: datetime) -> int:
        """The points earned with a business time in (since, until]."""
        return self.by_time.up_to(until) - self.by_time.up_to(since)


class LedgerTotals:
    """The running totals of one member's lots and accruals."""

    __slots__ = ("accruals", "lots")

    def __init__(self, lots: list[Lot], accruals: list[Accrual]) -> None:
        self.lots = LotTotals(lots)
        self.accruals = AccrualTotals(accruals)

    @classmethod
    def of(cls, kept: LedgerTotals | None, lots: list[Lot], accruals: list[Accrual]) -> LedgerTotals:
        """`kept` brought up to date with `lots` and `accruals` (a new one when it is None)."""
        if kept is None:
            return cls(lots, accruals)
        if not kept.lots.follows(lots):
            kept.lots = LotTotals(lots)
        if not kept.accruals.follows(accruals):
            kept.accruals = AccrualTotals(accruals)
        return kept


def _settles(lot: Lot) -> datetime:
    """When the lot stops being pending: it unlocks, or it expires while still locked."""
    expires_at = lot.expires_at
    return expires_at if expires_at is not None and expires_at < lot.available_at else lot.available_at
