"""A small reference model of the ledger, written from the rules as stated, not from the domain.

Per member: lots (points, unlock, expiry), the debt, open holds, the orders and redemptions that
can be undone, the accruals that make the tier, and the totals. It imports nothing of ours, so a
bug in the domain is not copied here; where a rule is a choice (which lots pay first, what a
refund does to an expired lot) the choice is the one the domain documents. A refused command
raises `Refused` with the domain's error class name and changes nothing.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

# The program's rules for the run (published by the test): short periods, so that a few clock
# advances unlock, expire and downgrade.
PENDING = timedelta(days=1)
EXPIRY_MONTHS = 1
WINDOW = timedelta(days=20)
GRACE = timedelta(days=5)
TIERS = (("member", 0, Fraction(1)), ("silver", 300, Fraction(3, 2)))  # name, threshold, multiplier


class Refused(Exception):
    """The model refuses the command; `code` is the domain error class it expects."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def add_months(at: datetime, months: int) -> datetime:
    """Calendar months later, the day clamped to the month's last."""
    year, month = divmod(at.year * 12 + at.month - 1 + months, 12)
    return at.replace(year=year, month=month + 1, day=min(at.day, calendar.monthrange(year, month + 1)[1]))


def threshold(tier: str) -> int:
    return next(t for name, t, _ in TIERS if name == tier)


def tier_for(qualifying: int) -> str:
    reached = [t for t in TIERS if t[1] <= qualifying]
    return max(reached, key=lambda t: t[1])[0] if reached else TIERS[0][0]


@dataclass
class Lot:
    lot_id: int
    points: int
    available_at: datetime
    expires_at: datetime | None

    def live(self, now: datetime) -> bool:
        return self.expires_at is None or self.expires_at > now

    def spendable(self, now: datetime) -> bool:
        return self.available_at <= now and self.live(now)


Draw = tuple[int, int, datetime, datetime | None]  # lot id, points, the lot's dates


@dataclass
class Order:
    amount: Decimal
    points: int
    lot_id: int
    occurred_at: datetime
    refunded: Decimal = Decimal(0)
    reversed: int = 0


@dataclass
class Redemption:
    points: int
    draws: list[Draw]
    reversed: bool = False


@dataclass
class Member:
    lots: list[Lot] = field(default_factory=list)
    last_lot_id: int = 0
    debt: int = 0
    holds: dict[str, tuple[int, datetime]] = field(default_factory=dict)  # open: points, expiry
    closed_holds: set[str] = field(default_factory=set)
    orders: dict[str, Order] = field(default_factory=dict)
    redemptions: dict[str, Redemption] = field(default_factory=dict)
    accruals: list[tuple[datetime, int]] = field(default_factory=list)
    tier: str = "member"
    earned: int = 0
    redeemed: int = 0
    expired: int = 0
    merged: bool = False
    # Whether a refund or an allowed adjustment ever left this member owing points: only
    # then may `available` be negative.
    may_owe: bool = False

    # -- what is shown --------------------------------------------------------------------

    def spendable(self, now: datetime) -> int:
        return sum(lot.points for lot in self.lots if lot.spendable(now))

    def held(self, now: datetime) -> int:
        """Holds reserve points until their time, and only while the points are there."""
        return min(sum(points for points, until in self.holds.values() if until > now), self.spendable(now))

    def available(self, now: datetime) -> int:
        return self.spendable(now) - self.held(now) - self.debt

    def qualifying(self, now: datetime) -> int:
        return sum(p for at, p in self.accruals if at > now - WINDOW)

    def balance(self, now: datetime) -> dict[str, Any]:
        """The fields of the domain's Balance, by name."""
        soonest = min((lot.expires_at for lot in self.lots if lot.live(now) and lot.expires_at), default=None)
        return {
            "available": self.available(now),
            "pending": sum(lot.points for lot in self.lots if lot.live(now) and lot.available_at > now),
            "held": self.held(now),
            "lifetime_earned": self.earned,
            "lifetime_redeemed": self.redeemed,
            "expired": self.expired + sum(lot.points for lot in self.lots if not lot.live(now)),
            "qualifying": self.qualifying(now),
            "tier": self.tier,
            "expiring": None
            if soonest is None
            else (sum(lot.points for lot in self.lots if lot.expires_at == soonest), soonest),
        }

    # -- lots -----------------------------------------------------------------------------

    def add_lot(self, lot: Lot) -> None:
        """A new lot first pays what is owed."""
        self.last_lot_id = max(self.last_lot_id, lot.lot_id)
        paid = min(self.debt, lot.points)
        self.debt -= paid
        lot.points -= paid
        if lot.points:
            self.lots.append(lot)

    def draw(self, points: int, now: datetime) -> list[Draw]:
        """Up to `points` from spendable lots, soonest expiry first (never-expiring last)."""
        order = sorted(
            (lot for lot in self.lots if lot.spendable(now)),
            key=lambda lot: (lot.expires_at is None, lot.expires_at or now, lot.lot_id),
        )
        draws: list[Draw] = []
        for lot in order:
            take = min(points, lot.points)
            if take <= 0:
                break
            draws.append((lot.lot_id, take, lot.available_at, lot.expires_at))
            lot.points -= take
            points -= take
        self.lots = [lot for lot in self.lots if lot.points > 0]
        return draws

    def check_active(self) -> None:
        if self.merged:
            raise Refused("MemberMerged")

    def upgrade(self, now: datetime) -> None:
        target = tier_for(self.qualifying(now))
        if threshold(target) > threshold(self.tier):
            self.tier = target


class Ledger:
    """The members of one run and the program-wide totals counted as commands succeed."""

    def __init__(self) -> None:
        self.members: dict[str, Member] = {}
        self.hold_owner: dict[str, str] = {}
        self.totals = {"earned": 0, "adjusted": 0, "redeemed": 0, "expired": 0, "reversed": 0}

    def liability(self, now: datetime) -> int:
        """What the members' `available + pending + held` must add up to: earned + adjusted -
        redeemed - expired - reversed, counted as the commands succeeded (lots past their
        expiry that are not settled yet are expired in the balance already)."""
        t = self.totals
        lapsed = sum(lot.points for m in self.members.values() for lot in m.lots if not lot.live(now))
        return t["earned"] + t["adjusted"] - t["redeemed"] - t["expired"] - t["reversed"] - lapsed

    def enrol(self, member_id: str) -> None:
        self.members[member_id] = Member()

    def earn(self, member_id: str, now: datetime, *, amount: Decimal | None, points: int | None) -> int:
        """A purchase of `amount` (unlocks after the pending period) or an award of `points`."""
        m = self.members[member_id]
        m.check_active()
        if amount is not None:
            base = int(amount)  # one point per unit, rounded down
            points = base + int(base * (dict((n, x) for n, _, x in TIERS)[m.tier] - 1))
            available_at = now + PENDING
        else:
            assert points is not None
            available_at = now
        m.last_lot_id += 1
        if points:
            m.add_lot(Lot(m.last_lot_id, points, available_at, add_months(now, EXPIRY_MONTHS)))
            m.accruals.append((now, points))
        m.earned += points
        self.totals["earned"] += points
        m.upgrade(now)
        return points

    def order(self, member_id: str, order_ref: str, amount: Decimal, points: int, now: datetime) -> None:
        m = self.members[member_id]
        m.orders[order_ref] = Order(amount, points, m.last_lot_id, now)

    def redeem(self, member_id: str, points: int, now: datetime) -> list[Draw]:
        m = self.members[member_id]
        m.check_active()
        if points > m.available(now):
            raise Refused("InsufficientPoints")
        m.redeemed += points
        self.totals["redeemed"] += points
        return m.draw(points, now)

    def record_redemption(self, member_id: str, redemption_id: str, points: int, draws: list[Draw]) -> None:
        self.members[member_id].redemptions[redemption_id] = Redemption(points, draws)

    def refund(self, member_id: str, order_ref: str, amount: Decimal | None, now: datetime) -> int:
        """Take back the order's points in proportion to what is refunded so far; what its lot
        no longer holds (spent, moved) is owed. Returns the points taken."""
        m = self.members[member_id]
        m.check_active()
        order = m.orders.get(order_ref)
        if order is None:
            raise Refused("OrderNotEarned")
        remaining = order.amount - order.refunded
        refund = remaining if amount is None else amount
        if remaining <= 0 or refund > remaining:
            raise Refused("OverRefund")
        order.refunded += refund
        due = (
            order.points
            if order.refunded == order.amount
            else int(Fraction(order.points) * Fraction(order.refunded) / Fraction(order.amount))
        )
        take = max(0, due - order.reversed)
        order.reversed += take
        lot = next((lot for lot in m.lots if lot.lot_id == order.lot_id and lot.live(now)), None)
        drawn = min(take, lot.points) if lot else 0
        if lot:
            lot.points -= drawn
            m.lots = [lot for lot in m.lots if lot.points > 0]
        m.debt += take - drawn
        m.may_owe |= take > drawn
        m.earned -= take
        m.accruals.append((order.occurred_at, -take))
        self.totals["reversed"] += take
        return take

    def undo_redemption(self, member_id: str, redemption_id: str) -> int:
        """The redemption's points back into the lots they came from, with their dates."""
        m = self.members[member_id]
        m.check_active()
        found = m.redemptions.get(redemption_id)
        if found is None:
            raise Refused("RedemptionNotFound")
        if found.reversed:
            raise Refused("AlreadyReversed")
        found.reversed = True
        back: dict[int, Lot] = {}
        for lot_id, points, available_at, expires_at in found.draws:
            if lot_id in back:
                back[lot_id].points += points
            else:
                back[lot_id] = Lot(lot_id, points, available_at, expires_at)
        for lot_id, lot in sorted(back.items()):
            existing = next((old for old in m.lots if old.lot_id == lot_id), None)
            if existing is None:
                m.add_lot(lot)
            else:
                existing.points += lot.points
        m.lots.sort(key=lambda lot: lot.lot_id)
        m.redeemed -= found.points
        self.totals["redeemed"] -= found.points
        return found.points

    def hold(self, member_id: str, hold_id: str, points: int, expires_at: datetime, now: datetime) -> None:
        m = self.members[member_id]
        m.check_active()
        if points > m.available(now):
            raise Refused("InsufficientPoints")
        m.holds[hold_id] = (points, expires_at)
        self.hold_owner[hold_id] = member_id

    def _open_hold(self, hold_id: str, now: datetime) -> tuple[Member, int]:
        m = self.members[self.hold_owner[hold_id]]
        m.check_active()
        if hold_id not in m.holds or m.holds[hold_id][1] <= now:
            raise Refused("HoldNotActive")
        return m, m.holds[hold_id][0]

    def capture(self, hold_id: str, points: int | None, now: datetime) -> int:
        """Spend the hold (the rest is released); never more than the spendable lots still hold."""
        m, held = self._open_hold(hold_id, now)
        spend = held if points is None else points
        if not 0 < spend <= held:
            raise Refused("CaptureExceedsHold")
        if spend > m.spendable(now):
            raise Refused("InsufficientPoints")
        del m.holds[hold_id]
        m.closed_holds.add(hold_id)
        m.draw(spend, now)
        m.redeemed += spend
        self.totals["redeemed"] += spend
        return spend

    def release(self, hold_id: str, now: datetime) -> int:
        m, held = self._open_hold(hold_id, now)
        del m.holds[hold_id]
        m.closed_holds.add(hold_id)
        return held

    def adjust(self, member_id: str, points: int, allow_negative: bool, now: datetime) -> None:
        m = self.members[member_id]
        m.check_active()
        if points > 0:
            m.add_lot(Lot(m.last_lot_id + 1, points, now, add_months(now, EXPIRY_MONTHS)))
        else:
            available = m.available(now)
            if -points > available and not allow_negative:
                raise Refused("InsufficientPoints")
            drawn = sum(d[1] for d in m.draw(min(-points, max(0, available)), now))
            m.debt += -points - drawn
            m.may_owe |= -points > drawn
        self.totals["adjusted"] += points

    def transfer(self, sender_id: str, receiver_id: str, points: int, now: datetime) -> None:
        """The sender's lots (soonest expiry first) become the receiver's, dates kept."""
        sender, receiver = self.members[sender_id], self.members[receiver_id]
        sender.check_active()
        if sender_id == receiver_id:
            raise Refused("TransferRefused")
        receiver.check_active()
        if points > sender.available(now):
            raise Refused("InsufficientPoints")
        first = receiver.last_lot_id
        for i, (_, taken, available_at, expires_at) in enumerate(sender.draw(points, now), start=1):
            receiver.add_lot(Lot(first + i, taken, available_at, expires_at))

    def merge(self, target_id: str, source_id: str, now: datetime) -> None:
        """The target takes everything of the source (lots renumbered after its own, in order);
        the source keeps nothing."""
        target, source = self.members[target_id], self.members[source_id]
        target.check_active()
        if target_id == source_id:
            raise Refused("MergeRefused")
        source.check_active()
        if source.holds:
            raise Refused("MergeRefused")
        old = [lot.lot_id for lot in source.lots]
        old += [d[0] for r in source.redemptions.values() for d in r.draws]
        new = {lot_id: target.last_lot_id + i for i, lot_id in enumerate(dict.fromkeys(old), start=1)}
        target.lots += [Lot(new[x.lot_id], x.points, x.available_at, x.expires_at) for x in source.lots]
        target.last_lot_id += len(new)
        target.accruals += source.accruals
        for ref, o in source.orders.items():
            target.orders[ref] = Order(
                o.amount, o.points, new.get(o.lot_id, 0), o.occurred_at, o.refunded, o.reversed
            )
        for rid, r in source.redemptions.items():
            target.redemptions[rid] = Redemption(r.points, [(new[d[0]], *d[1:]) for d in r.draws], r.reversed)
        target.earned += source.earned
        target.redeemed += source.redeemed
        target.expired += source.expired
        target.debt += source.debt
        target.may_owe |= source.may_owe
        tier = source.tier
        self.members[source_id] = Member(tier=tier, merged=True, closed_holds=source.closed_holds)
        target.upgrade(now)

    def settle(self, member_id: str, now: datetime) -> int:
        """Expire lots past their expiry, release holds past theirs, and go down a tier when
        qualifying points stayed below its threshold for the grace period. Returns the events."""
        m = self.members[member_id]
        if m.merged:
            return 0
        events = 0
        lapsed = [lot for lot in m.lots if not lot.live(now)]
        if lapsed:
            events += 1
            m.expired += sum(lot.points for lot in lapsed)
            self.totals["expired"] += sum(lot.points for lot in lapsed)
            m.lots = [lot for lot in m.lots if lot.live(now)]
        for hold_id, (_, expires_at) in sorted(m.holds.items()):
            if expires_at <= now:
                del m.holds[hold_id]
                m.closed_holds.add(hold_id)
                events += 1
        target = tier_for(m.qualifying(now))
        if threshold(target) < threshold(m.tier):
            since = now - GRACE
            checks = [since, *(at for at, _ in m.accruals if since < at <= now)]
            if all(
                sum(p for at, p in m.accruals if t - WINDOW < at <= t) < threshold(m.tier) for t in checks
            ):
                m.tier = target
                events += 1
        return events
