"""The running totals answer exactly what the plain sums over every lot and accrual answered, at
any instant (past, future, on the instant a lot unlocks or expires), whatever the member went
through; and the hot events recorded directly are the events the library's `@event` records."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from eventsourcing.domain import Snapshot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from msgspec.structs import replace

from domain.errors import DomainError
from domain.identities import Identity
from domain.ledger_totals import AccrualTotals, LotTotals
from domain.lots import Lot, is_expired
from domain.member import Member
from domain.member_values import Accrual, Balance, Expiring
from domain.rules import DEFAULT_RULES, Rules
from tests.unit.helpers import MEMBER_ID, T0, enrolled_member

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
OTHER_ID = UUID("00000000-0000-4000-8000-000000000002")

# -- the plain sums, as the member computed them before the running totals -------------------


def plain_balance(member: Member, now: datetime, rules: Rules) -> Balance:
    spendable = pending = lapsed = 0
    for lot in member.lots:
        if is_expired(lot, now):
            lapsed += lot.points
        elif lot.available_at > now:
            pending += lot.points
        else:
            spendable += lot.points
    held = min(sum(h.points for h in member.holds.values() if h.expires_at > now), spendable)
    return Balance(
        available=spendable - held - member.debt,
        pending=pending,
        held=held,
        lifetime_earned=member.lifetime_earned,
        lifetime_redeemed=member.lifetime_redeemed,
        expired=member.expired + lapsed,
        qualifying=plain_qualifying(member, now, rules.tier_window_days),
        tier=member.tier,
        expiring=plain_expiring(member, now),
    )


def plain_expiring(member: Member, now: datetime) -> Expiring | None:
    soonest = min(
        (lot.expires_at for lot in member.lots if lot.expires_at and lot.expires_at > now), default=None
    )
    if soonest is None:
        return None
    return Expiring(points=sum(lot.points for lot in member.lots if lot.expires_at == soonest), at=soonest)


def plain_qualifying(member: Member, now: datetime, window_days: int) -> int:
    since = now - timedelta(days=window_days)
    return sum(a.points for a in member.accruals if a.occurred_at > since)


def plain_next_change(member: Member, after: datetime, rules: Rules) -> datetime | None:
    window = timedelta(days=rules.tier_window_days)
    grace = timedelta(days=rules.downgrade_grace_days)
    instants = [i for lot in member.lots for i in (lot.available_at, lot.expires_at) if i is not None]
    for accrual in member.accruals:
        instants += [accrual.occurred_at + window, accrual.occurred_at + window + grace]
    holds = [held.expires_at for held in member.holds.values()]
    overdue = [i for lot in member.lots if (i := lot.expires_at) is not None and i <= after]
    overdue += [i for i in holds if i <= after]
    if overdue:
        return min(overdue)
    return min((i for i in [*instants, *holds] if i > after), default=None)


def instants_of(member: Member, rules: Rules) -> list[datetime]:
    """Every instant at which an answer can change, and the microseconds either side."""
    window = timedelta(days=rules.tier_window_days)
    grace = timedelta(days=rules.downgrade_grace_days)
    found = {T0}
    for lot in member.lots:
        found |= {lot.available_at, *([lot.expires_at] if lot.expires_at else [])}
    for accrual in member.accruals:
        found |= {accrual.occurred_at, accrual.occurred_at + window, accrual.occurred_at + window + grace}
    found |= {h.expires_at for h in member.holds.values()}
    tick = timedelta(microseconds=1)
    return sorted({t + d for t in found for d in (-tick, timedelta(0), tick)})


def assert_same_answers(member: Member, rules: Rules) -> None:
    for now in instants_of(member, rules):
        assert member.balance(now=now, rules=rules) == plain_balance(member, now, rules), now
        assert member.next_balance_change(after=now, rules=rules) == plain_next_change(member, now, rules), (
            now
        )
        assert member.qualifying(now=now, window_days=7) == plain_qualifying(member, now, 7)


# -- the totals alone, over lists of lots and accruals ---------------------------------------

instants = st.integers(min_value=0, max_value=40).map(lambda d: T0 + timedelta(days=d))
lots = st.builds(
    lambda i, points, available_at, expires_at: Lot(
        lot_id=i, points=points, available_at=available_at, expires_at=expires_at
    ),
    st.integers(1, 10_000),
    st.integers(1, 500),
    instants,
    st.none() | instants,
)
accruals = st.builds(Accrual, occurred_at=instants, points=st.integers(-300, 500))


@PROPERTY
@given(first=st.lists(lots, max_size=30), then=st.lists(lots, max_size=10), now=instants)
def test_lot_totals_split_the_lots_as_their_dates_say(
    first: list[Lot], then: list[Lot], now: datetime
) -> None:
    kept = list(first)
    totals = LotTotals(kept)
    kept.extend(then)  # appended after the totals were made: counted when followed
    assert totals.follows(kept)
    for at in (now, now - timedelta(microseconds=1), now + timedelta(microseconds=1)):
        expired = sum(lot.points for lot in kept if is_expired(lot, at))
        pending = sum(lot.points for lot in kept if not is_expired(lot, at) and lot.available_at > at)
        assert totals.split(at) == (sum(lot.points for lot in kept) - expired - pending, pending, expired)
    assert not totals.follows(list(kept))  # another list: made again, never trusted


@PROPERTY
@given(first=st.lists(accruals, max_size=30), then=st.lists(accruals, max_size=10), since=instants)
def test_accrual_totals_count_the_accruals_after_an_instant(
    first: list[Accrual], then: list[Accrual], since: datetime
) -> None:
    kept = list(first)
    totals = AccrualTotals(kept)
    kept.extend(then)  # out of business-time order too (backdated earns, refunds)
    assert totals.follows(kept)
    assert totals.after(since) == sum(a.points for a in kept if a.occurred_at > since)
    until = since + timedelta(days=3)
    assert totals.within(since, until) == sum(a.points for a in kept if since < a.occurred_at <= until)


# -- a member through random histories -------------------------------------------------------

steps = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "earn",
                "earn",
                "earn",
                "award",
                "redeem",
                "refund",
                "undo",
                "hold",
                "capture",
                "adjust",
                "settle",
            ]
        ),
        st.integers(min_value=0, max_value=72),  # hours the clock moves first
        st.integers(min_value=0, max_value=20),  # days a purchase is backdated
        st.integers(min_value=1, max_value=2_000),  # an amount or a number of points
    ),
    max_size=25,
)
rules_strategy = st.builds(
    lambda pending_days, expiry_months, window, grace: replace(
        DEFAULT_RULES,
        earn=replace(DEFAULT_RULES.earn, pending_days=pending_days, expiry_months=expiry_months),
        tier_window_days=window,
        downgrade_grace_days=grace,
    ),
    st.sampled_from([0, 1, 3, 40]),
    st.sampled_from([0, 1, 2]),
    st.sampled_from([1, 10, 30]),
    st.sampled_from([0, 2]),
)


def live_through(member: Member, history: list[tuple[str, int, int, int]], rules: Rules) -> None:
    """Apply each step (a refused one is skipped), checking the answers after each."""
    now = T0
    for n, (kind, hours, backdate, size) in enumerate(history):
        now += timedelta(hours=hours)
        try:
            if kind == "earn":
                member.earn_purchase(
                    order_ref=f"O-{n}",
                    amount=Decimal(size),
                    currency="CNY",
                    items=[],
                    occurred_at=now - timedelta(days=backdate),
                    at=now,
                    channel="pos",
                    rules=rules,
                    rules_version=1,
                )
            elif kind == "award":
                member.award(
                    points=size, reason="goodwill", at=now, channel="ops", rules=rules, rules_version=1
                )
            elif kind == "redeem":
                member.redeem(
                    redemption_id=UUID(int=n + 100),
                    points=size // 4 + 1,
                    reward_ref=None,
                    order_ref=None,
                    at=now,
                    channel="app",
                    rules=rules,
                )
            elif kind == "refund" and member.orders:
                order_ref = sorted(member.orders)[size % len(member.orders)]
                member.reverse_earn(order_ref=order_ref, amount=None, at=now, channel="pos", rules=rules)
            elif kind == "undo" and member.redemptions:
                redemption_id = sorted(member.redemptions)[size % len(member.redemptions)]
                member.reverse_redemption(redemption_id=UUID(redemption_id), at=now, channel="app")
            elif kind == "hold":
                member.hold(
                    hold_id=UUID(int=n + 1000),
                    points=size // 4 + 1,
                    expires_at=now + timedelta(hours=backdate + 1),
                    order_ref=None,
                    at=now,
                    channel="pos",
                    rules=rules,
                )
            elif kind == "capture" and member.holds:
                member.capture(hold_id=UUID(sorted(member.holds)[0]), points=None, at=now, channel="pos")
            elif kind == "adjust":
                member.adjust(
                    points=size if backdate % 2 else -size,
                    reason="fix",
                    allow_negative=backdate % 3 == 0,
                    at=now,
                    channel="ops",
                    rules=rules,
                )
            elif kind == "settle":
                member.settle(at=now, channel="clock", rules=rules)
        except DomainError:
            pass
        assert member.balance(now=now, rules=rules) == plain_balance(member, now, rules)
        assert member.next_balance_change(after=now, rules=rules) == plain_next_change(member, now, rules)


@PROPERTY
@given(history=steps, rules=rules_strategy)
def test_balances_equal_the_plain_sums_at_every_instant(
    history: list[tuple[str, int, int, int]], rules: Rules
) -> None:
    member = enrolled_member(rules=rules)
    live_through(member, history, rules)
    assert_same_answers(member, rules)
    # Restored from a snapshot (no running totals in its state): the same member, the same answers.
    member.collect_events()
    restored = Snapshot.take(member).mutate(None)
    assert restored == member
    assert_same_answers(restored, rules)


@PROPERTY
@given(history=steps, rules=rules_strategy)
def test_a_merge_brings_the_sources_totals_along(
    history: list[tuple[str, int, int, int]], rules: Rules
) -> None:
    source = Member.enrol(
        member_id=OTHER_ID,
        identities=[Identity(kind="email", value="a@example.com")],
        profile=None,
        channel="pos",
        at=T0,
        rules=rules,
    )
    target = enrolled_member(rules=rules)
    live_through(source, history, rules)
    live_through(target, history[::-1], rules)
    target.balance(now=T0, rules=rules)  # totals made before the merge: followed after it
    merged_at = T0 + timedelta(days=100)  # after every step: the source's holds have run out
    source.settle(at=merged_at, channel="clock", rules=rules)  # open holds refuse a merge
    target.merge(source=source, at=merged_at, channel="ops", rules=rules)
    assert_same_answers(target, rules)
    assert_same_answers(source, rules)


def replayed(events: list[Any]) -> Member:
    member: Any = None
    for recorded in events:
        member = recorded.mutate(member)
    return member


@PROPERTY
@given(history=steps, rules=rules_strategy)
def test_a_replay_of_the_recorded_events_is_the_same_member(
    history: list[tuple[str, int, int, int]], rules: Rules
) -> None:
    member = Member.enrol(
        member_id=MEMBER_ID,
        identities=[Identity(kind="email", value="a@example.com")],
        profile=None,
        channel="pos",
        at=T0,
        rules=rules,
    )
    live_through(member, history, rules)
    again = replayed(list(member.collect_events()))
    assert again == member
    assert_same_answers(again, rules)


# -- the direct record path ------------------------------------------------------------------


def twins() -> tuple[Member, Member]:
    return enrolled_member(), enrolled_member()


def test_an_earn_recorded_directly_is_the_event_the_library_records() -> None:
    fields: dict[str, Any] = {
        "source": "purchase",
        "order_ref": "O-1",
        "amount": Decimal("12.50"),
        "currency": "CNY",
        "items": [],
        "points": 12,
        "breakdown": [],
        "rules_version": 1,
        "tier": "member",
        "available_at": T0,
        "expires_at": T0 + timedelta(days=365),
        "occurred_at": T0,
        "reason": None,
        "at": T0 + timedelta(minutes=1),
        "channel": "pos",
        "program_version": 3,
    }
    direct, library = twins()
    direct._record_points_earned(**fields)
    library._points_earned(**fields)
    assert_recorded_alike(direct, library)


def test_a_redemption_and_a_tier_change_recorded_directly_are_the_library_s_events() -> None:
    direct, library = twins()
    for member in (direct, library):
        member.award(
            points=2_000, reason="welcome", at=T0, channel="ops", rules=DEFAULT_RULES, rules_version=1
        )
    redeemed: dict[str, Any] = {
        "points": 5,
        "draws": [],
        "reward_ref": "R-1",
        "order_ref": None,
        "at": T0 + timedelta(hours=1),
        "channel": "app",
        "redemption_id": UUID(int=7),
    }
    changed: dict[str, Any] = {
        "from_tier": "silver",
        "to_tier": "member",
        "qualifying": 10,
        "at": T0 + timedelta(hours=2),
        "channel": "clock",
        "reason": "downgrade",
    }
    direct._record_points_redeemed(**redeemed)
    direct._record_tier_changed(**changed)
    library._points_redeemed(**redeemed)
    library._tier_changed(**changed)
    assert_recorded_alike(direct, library)


def assert_recorded_alike(direct: Member, library: Member) -> None:
    """The same aggregate, the same events (class, every attribute, so the same stored bytes)."""
    assert direct == library
    assert direct.version == library.version
    recorded, expected = direct.collect_events(), library.collect_events()
    assert [type(e) for e in recorded] == [type(e) for e in expected]
    assert [vars(e) for e in recorded] == [vars(e) for e in expected]
