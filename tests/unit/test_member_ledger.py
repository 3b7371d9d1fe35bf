"""Stories of one member's points: earning, spending, locking, tiers and refusals."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from uuid import UUID, uuid4

import pytest
from msgspec.structs import replace

from domain.errors import (
    BelowRedemptionMinimum,
    CurrencyMismatch,
    DuplicateOrder,
    InsufficientPoints,
    InvalidAmount,
    MemberNotActive,
    UnknownCurrency,
)
from domain.events import event_type
from domain.identities import normalise_identity
from domain.member import Member, MemberStatus, PurchaseItem
from domain.rules import DEFAULT_RULES, BreakdownPart, EarnRule, RedemptionRule
from tests.unit.helpers import T0, buy, enrolled_member

PENDING_WEEK = replace(DEFAULT_RULES, earn=EarnRule(pending_days=7))


def test_enrol_earn_redeem_keeps_the_balance_straight() -> None:
    # Enrol at the POS.
    member = Member.enrol(
        member_id=UUID(int=7),
        identities=[normalise_identity("phone", "+86 138 1234 5678")],
        profile=None,
        channel="pos",
        at=T0,
        rules=DEFAULT_RULES,
    )
    assert member.status is MemberStatus.ACTIVE
    assert member.tier == "member"
    assert member.balance(now=T0, rules=DEFAULT_RULES).available == 0

    # Buy for 128.50 in the app: 128 points.
    earned = buy(member, "128.50", order_ref="A-1", channel="app")
    assert earned.points == 128
    assert earned.breakdown == [BreakdownPart("base", 128)]
    assert earned.expires_at == T0.replace(year=2025)

    # Spend 100 of them at the POS.
    redemption_id = uuid4()
    redeemed = member.redeem(
        redemption_id=redemption_id,
        points=100,
        reward_ref="coffee",
        order_ref=None,
        at=T0,
        channel="pos",
        rules=DEFAULT_RULES,
    )
    assert redeemed.redemption_id == redemption_id

    balance = member.balance(now=T0, rules=DEFAULT_RULES)
    assert (balance.available, balance.pending, balance.held) == (28, 0, 0)
    assert (balance.lifetime_earned, balance.lifetime_redeemed) == (128, 100)
    assert balance.qualifying == 128
    assert member.channels == ["pos", "app"]
    assert member.orders["A-1"].amount == Decimal("128.50")
    assert member.orders["A-1"].lot_id == earned.lot_id
    types = [event_type(type(e)) for e in member.collect_events()]
    assert types == ["member_enrolled", "points_earned", "points_redeemed"]


def test_events_carry_record_time_from_the_edge_not_the_clock() -> None:
    member = enrolled_member()
    buy(member, "10", order_ref="A-1", at=T0 + timedelta(hours=1))
    (earned,) = member.collect_events()
    assert earned.timestamp == T0 + timedelta(hours=1)
    assert member.created_on == T0


def test_spending_takes_the_soonest_expiring_lot_first() -> None:
    member = enrolled_member()
    never = replace(DEFAULT_RULES, earn=EarnRule(expiry_months=0))
    lot_never = buy(member, "100", order_ref="never", rules=never).lot_id
    lot_late = buy(member, "100", order_ref="late").lot_id
    # Backdated receipt from last summer: its lot expires first.
    lot_soon = buy(member, "100", order_ref="soon", occurred_at=T0 - timedelta(days=180)).lot_id
    member.collect_events()

    member.redeem(
        redemption_id=uuid4(),
        points=250,
        reward_ref=None,
        order_ref=None,
        at=T0,
        channel="app",
        rules=DEFAULT_RULES,
    )

    (redeemed,) = member.collect_events()
    assert [(d.lot_id, d.points) for d in redeemed.draws] == [
        (lot_soon, 100),
        (lot_late, 100),
        (lot_never, 50),
    ]
    assert [(lot.lot_id, lot.points) for lot in member.lots] == [(lot_never, 50)]


def test_pending_points_cannot_be_spent_until_available_at() -> None:
    member = enrolled_member(rules=PENDING_WEEK)
    earned = buy(member, "300", order_ref="A-1", rules=PENDING_WEEK)
    assert earned.available_at == T0 + timedelta(days=7)

    balance = member.balance(now=T0, rules=PENDING_WEEK)
    assert (balance.available, balance.pending) == (0, 300)
    with pytest.raises(InsufficientPoints) as refused:
        member.redeem(
            redemption_id=uuid4(),
            points=1,
            reward_ref=None,
            order_ref=None,
            at=T0,
            channel="pos",
            rules=PENDING_WEEK,
        )
    assert refused.value.extra["available"] == 0

    a_week_later = T0 + timedelta(days=7)
    balance = member.balance(now=a_week_later, rules=PENDING_WEEK)
    assert (balance.available, balance.pending) == (300, 0)
    member.redeem(
        redemption_id=uuid4(),
        points=300,
        reward_ref=None,
        order_ref=None,
        at=a_week_later,
        channel="pos",
        rules=PENDING_WEEK,
    )
    assert member.balance(now=a_week_later, rules=PENDING_WEEK).available == 0


def test_points_past_expiry_show_as_expired_and_cannot_be_spent() -> None:
    member = enrolled_member()
    buy(member, "50", order_ref="A-1")
    next_year = T0.replace(year=2025)

    balance = member.balance(now=next_year, rules=DEFAULT_RULES)
    assert (balance.available, balance.expired) == (0, 50)
    with pytest.raises(InsufficientPoints):
        member.redeem(
            redemption_id=uuid4(),
            points=10,
            reward_ref=None,
            order_ref=None,
            at=next_year,
            channel="pos",
            rules=DEFAULT_RULES,
        )
    # Qualifying points age out of the rolling window too.
    assert balance.qualifying == 0


def test_crossing_a_threshold_upgrades_at_once_and_the_next_earn_gets_the_multiplier() -> None:
    member = enrolled_member()
    first = buy(member, "999.99", order_ref="A-1")
    assert first.points == 999
    assert member.tier == "member"
    assert [event_type(type(e)) for e in member.collect_events()] == ["points_earned"]

    crossing = buy(member, "1.00", order_ref="A-2")
    # The earn that crosses the threshold is still at the old tier's rate.
    assert crossing.breakdown == [BreakdownPart("base", 1)]
    _earned, changed = member.collect_events()
    assert event_type(type(changed)) == "tier_changed"
    assert (changed.from_tier, changed.to_tier, changed.qualifying) == ("member", "silver", 1000)
    assert member.tier == "silver"

    boosted = buy(member, "99.99", order_ref="A-3")
    # base floor(99.99) = 99; silver 1.25: floor(99 x 0.25) = 24.
    assert boosted.breakdown == [BreakdownPart("base", 99), BreakdownPart("tier", 24, tier="silver")]
    assert boosted.points == 123
    assert member.balance(now=T0, rules=DEFAULT_RULES).tier == "silver"


def test_a_big_purchase_can_jump_straight_to_the_top_tier() -> None:
    member = enrolled_member()
    buy(member, "6000", order_ref="A-1")
    _, changed = member.collect_events()
    assert (changed.from_tier, changed.to_tier) == ("member", "gold")


def test_awards_count_as_qualifying_and_are_spendable_at_once() -> None:
    member = enrolled_member(rules=PENDING_WEEK)
    result = member.award(
        points=1000, reason="birthday", at=T0, channel="internal", rules=PENDING_WEEK, rules_version=1
    )
    assert result.breakdown == [BreakdownPart("award", 1000)]
    assert member.balance(now=T0, rules=PENDING_WEEK).available == 1000
    assert member.tier == "silver"
    # An award is not the member using a channel.
    assert member.channels == ["pos"]
    with pytest.raises(InvalidAmount) as refused:
        member.award(points=0, reason="oops", at=T0, channel="internal", rules=PENDING_WEEK, rules_version=1)
    assert refused.value.extra == {"field": "points"}


def test_the_same_order_cannot_earn_twice() -> None:
    member = enrolled_member()
    buy(member, "100", order_ref="A-1")
    member.collect_events()

    with pytest.raises(DuplicateOrder) as refused:
        buy(member, "100", order_ref="A-1", channel="app")

    assert refused.value.code == "duplicate_order"
    assert refused.value.extra == {"order_ref": "A-1"}
    assert member.collect_events() == []
    assert member.balance(now=T0, rules=DEFAULT_RULES).available == 100


def test_refused_redemptions_record_nothing() -> None:
    member = enrolled_member()
    buy(member, "80", order_ref="A-1")
    member.collect_events()
    version = member.version

    with pytest.raises(InsufficientPoints) as refused:
        member.redeem(
            redemption_id=uuid4(),
            points=81,
            reward_ref=None,
            order_ref=None,
            at=T0,
            channel="pos",
            rules=DEFAULT_RULES,
        )
    assert refused.value.extra == {"available": 80}

    strict = replace(DEFAULT_RULES, redemption=RedemptionRule(min_points=100))
    with pytest.raises(BelowRedemptionMinimum) as too_small:
        member.redeem(
            redemption_id=uuid4(),
            points=50,
            reward_ref=None,
            order_ref=None,
            at=T0,
            channel="pos",
            rules=strict,
        )
    assert too_small.value.extra == {"min_points": 100}

    assert member.collect_events() == []
    assert member.version == version
    assert member.balance(now=T0, rules=DEFAULT_RULES).available == 80


def test_purchases_in_another_or_unknown_currency_are_refused() -> None:
    member = enrolled_member()
    with pytest.raises(CurrencyMismatch) as mismatch:
        member.earn_purchase(
            order_ref="A-1",
            amount=Decimal("10"),
            currency="USD",
            items=[],
            occurred_at=T0,
            at=T0,
            channel="pos",
            rules=DEFAULT_RULES,
            rules_version=1,
        )
    assert mismatch.value.extra == {"expected": "CNY"}
    with pytest.raises(UnknownCurrency):
        member.earn_purchase(
            order_ref="A-1",
            amount=Decimal("10"),
            currency="XYZ",
            items=[],
            occurred_at=T0,
            at=T0,
            channel="pos",
            rules=DEFAULT_RULES,
            rules_version=1,
        )
    with pytest.raises(InvalidAmount) as bad_item:
        member.earn_purchase(
            order_ref="A-1",
            amount=Decimal("10"),
            currency="CNY",
            items=[PurchaseItem(sku="tea", amount=Decimal("10.001"), quantity=1)],
            occurred_at=T0,
            at=T0,
            channel="pos",
            rules=DEFAULT_RULES,
            rules_version=1,
        )
    assert bad_item.value.extra == {"field": "items[0].amount"}
    assert member.orders == {}


def test_below_the_minimum_purchase_records_the_order_with_zero_points() -> None:
    rules = replace(DEFAULT_RULES, earn=EarnRule(min_amount=Decimal("20.00")))
    member = enrolled_member(rules=rules)
    result = buy(member, "19.99", order_ref="A-1", rules=rules)
    assert (result.points, result.breakdown) == (0, [BreakdownPart("base", 0)])
    assert member.lots == []
    with pytest.raises(DuplicateOrder):
        buy(member, "19.99", order_ref="A-1", rules=rules)


def test_linking_an_identity_twice_records_it_once() -> None:
    member = enrolled_member()
    email = normalise_identity("email", "Wei@Example.com")
    assert member.link_identity(identity=email, channel="app", at=T0) is True
    assert member.link_identity(identity=email, channel="web", at=T0) is False
    assert [event_type(type(e)) for e in member.collect_events()] == ["identity_linked"]
    assert member.identities[-1] == email
    assert member.channels == ["pos", "app"]


def test_a_merged_member_refuses_commands_and_names_the_survivor() -> None:
    member = enrolled_member()
    survivor = UUID(int=99)
    # The merge command arrives later; this is the state it leaves the source in.
    member._status = MemberStatus.MERGED.value
    member.merged_into = survivor

    with pytest.raises(MemberNotActive) as refused:
        buy(member, "10", order_ref="A-1")

    assert refused.value.code == "member_merged"
    assert refused.value.extra == {
        "member_id": str(member.id),
        "status": "merged",
        "merged_into": str(survivor),
    }
    member._status = MemberStatus.FORGOTTEN.value
    member.merged_into = None
    with pytest.raises(MemberNotActive) as forgotten:
        member.link_identity(identity=normalise_identity("device", "ios-1234567"), channel="app", at=T0)
    assert forgotten.value.code == "member_forgotten"


def test_the_balance_stays_the_same_until_the_next_balance_change() -> None:
    member = enrolled_member()
    member.award(points=100, reason="welcome", at=T0, channel="pos", rules=DEFAULT_RULES, rules_version=1)
    stored = member.balance(now=T0, rules=DEFAULT_RULES)

    change = member.next_balance_change(after=T0, rules=DEFAULT_RULES)

    assert change is not None
    assert member.balance(now=change - timedelta(microseconds=1), rules=DEFAULT_RULES) == stored
    assert member.balance(now=change, rules=DEFAULT_RULES) != stored
