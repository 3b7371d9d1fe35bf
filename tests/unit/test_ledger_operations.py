"""The complete ledger, told as stories: refunds, undone redemptions, holds, adjustments,
transfers, and what time alone makes due (expiry, expired holds, downgrades)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from uuid import UUID, uuid4

import pytest
from msgspec.structs import replace

from domain.errors import (
    AlreadyReversed,
    CaptureExceedsHold,
    HoldNotActive,
    HoldNotFound,
    InsufficientPoints,
    OrderNotEarned,
    OverRefund,
    TransferRefused,
)
from domain.events import event_type
from domain.member import Member
from domain.rules import DEFAULT_RULES
from tests.unit.helpers import T0, buy, enrolled_member, replay

RULES = DEFAULT_RULES


def other_member() -> Member:
    from domain.identities import normalise_identity

    member = Member.enrol(
        member_id=UUID(int=2),
        identities=[normalise_identity("email", "b@x.cn")],
        profile=None,
        channel="app",
        at=T0,
        rules=RULES,
    )
    member.collect_events()
    return member


def recorded(member: Member) -> list[str]:
    return [event_type(type(e)) for e in member.collect_events()]


def available(member: Member, at: object = T0) -> int:
    return member.balance(now=at, rules=RULES).available  # type: ignore[arg-type]


def redeem(member: Member, points: int, at: object = T0) -> UUID:
    redemption_id = uuid4()
    member.redeem(
        redemption_id=redemption_id,
        points=points,
        reward_ref=None,
        order_ref=None,
        at=at,  # type: ignore[arg-type]
        channel="pos",
        rules=RULES,
    )
    return redemption_id


def test_partial_refunds_take_back_points_in_proportion_never_more_than_the_order_earned() -> None:
    member = enrolled_member()
    buy(member, "100.00", order_ref="O-1")  # 100 points
    member.collect_events()

    first = member.reverse_earn(order_ref="O-1", amount=Decimal("33.33"), at=T0, channel="pos", rules=RULES)
    second = member.reverse_earn(order_ref="O-1", amount=Decimal("33.33"), at=T0, channel="pos", rules=RULES)
    with pytest.raises(OverRefund):
        member.reverse_earn(order_ref="O-1", amount=Decimal("40"), at=T0, channel="pos", rules=RULES)
    last = member.reverse_earn(order_ref="O-1", amount=None, at=T0, channel="pos", rules=RULES)

    assert (first, second, last) == (33, 33, 34)
    assert available(member) == 0
    assert member.balance(now=T0, rules=RULES).lifetime_earned == 0
    assert member.qualifying(now=T0, window_days=365) == 0
    assert recorded(member) == ["earn_reversed"] * 3
    with pytest.raises(OverRefund):
        member.reverse_earn(order_ref="O-1", amount=None, at=T0, channel="pos", rules=RULES)
    with pytest.raises(OrderNotEarned):
        member.reverse_earn(order_ref="NOPE", amount=None, at=T0, channel="pos", rules=RULES)


def test_a_refund_after_the_points_were_spent_shows_a_negative_balance_which_the_next_earn_pays() -> None:
    member = enrolled_member()
    buy(member, "100", order_ref="O-1")
    redeem(member, 80)

    member.reverse_earn(order_ref="O-1", amount=None, at=T0, channel="pos", rules=RULES)
    assert available(member) == -80  # shown, not hidden

    buy(member, "100", order_ref="O-2")
    assert available(member) == 20
    assert sum(lot.points for lot in member.lots) == 20


def test_an_undone_redemption_gives_the_points_back_with_their_original_expiry() -> None:
    member = enrolled_member()
    buy(member, "60", order_ref="OLD", at=T0)
    later = T0 + timedelta(days=30)
    buy(member, "60", order_ref="NEW", at=later)
    expiries = {lot.lot_id: lot.expires_at for lot in member.lots}
    redemption_id = redeem(member, 100, at=later)  # all of OLD (60), 40 of NEW
    assert [lot.points for lot in member.lots] == [20]

    member.reverse_redemption(redemption_id=redemption_id, at=later, channel="pos")

    assert {lot.lot_id: (lot.points, lot.expires_at) for lot in member.lots} == {
        lot_id: (60, expires) for lot_id, expires in expiries.items()
    }
    assert member.balance(now=later, rules=RULES).lifetime_redeemed == 0
    with pytest.raises(AlreadyReversed):
        member.reverse_redemption(redemption_id=redemption_id, at=later, channel="pos")


def test_a_hold_reserves_points_and_a_partial_capture_releases_the_rest() -> None:
    member = enrolled_member()
    buy(member, "500", order_ref="O-1")
    hold_id = uuid4()
    member.hold(
        hold_id=hold_id,
        points=300,
        expires_at=T0 + timedelta(minutes=15),
        order_ref="CART-9",
        at=T0,
        channel="app",
        rules=RULES,
    )
    assert member.balance(now=T0, rules=RULES).held == 300
    assert available(member) == 200
    with pytest.raises(InsufficientPoints):
        redeem(member, 201)
    with pytest.raises(CaptureExceedsHold):
        member.capture(hold_id=hold_id, points=301, at=T0, channel="app")

    spent = member.capture(hold_id=hold_id, points=120, at=T0, channel="app")

    assert spent == 120
    balance = member.balance(now=T0, rules=RULES)
    assert (balance.available, balance.held, balance.lifetime_redeemed) == (380, 0, 120)
    with pytest.raises(HoldNotActive):
        member.capture(hold_id=hold_id, points=None, at=T0, channel="app")
    with pytest.raises(HoldNotActive):
        member.release(hold_id=hold_id, at=T0, channel="app")
    with pytest.raises(HoldNotFound):
        member.release(hold_id=uuid4(), at=T0, channel="app")


def test_a_hold_past_its_time_cannot_be_captured_and_the_service_releases_it_once() -> None:
    member = enrolled_member()
    buy(member, "100", order_ref="O-1")
    hold_id = uuid4()
    expires = T0 + timedelta(minutes=15)
    member.hold(
        hold_id=hold_id, points=50, expires_at=expires, order_ref=None, at=T0, channel="app", rules=RULES
    )
    member.collect_events()

    with pytest.raises(HoldNotActive):
        member.capture(hold_id=hold_id, points=None, at=expires, channel="app")
    assert member.settle(at=expires - timedelta(seconds=1), channel="system", rules=RULES) == 0
    assert member.settle(at=expires, channel="system", rules=RULES) == 1
    assert member.settle(at=expires, channel="system", rules=RULES) == 0
    (released,) = member.collect_events()
    assert event_type(type(released)) == "hold_released"
    assert released.reason == "expired"  # type: ignore[attr-defined]
    assert available(member, expires) == 100


def test_a_negative_adjustment_may_go_below_zero_only_when_allowed() -> None:
    member = enrolled_member()
    member.adjust(points=50, reason="goodwill", allow_negative=False, at=T0, channel="crm", rules=RULES)
    assert available(member) == 50

    with pytest.raises(InsufficientPoints):
        member.adjust(points=-80, reason="fraud", allow_negative=False, at=T0, channel="crm", rules=RULES)
    member.adjust(points=-80, reason="fraud", allow_negative=True, at=T0, channel="crm", rules=RULES)

    assert available(member) == -30
    assert recorded(member) == ["points_adjusted", "points_adjusted"]


def test_a_transfer_moves_points_with_their_expiry_in_one_change_of_both_members() -> None:
    sender, receiver = enrolled_member(), other_member()
    buy(sender, "100", order_ref="O-1")
    expiry = sender.lots[0].expires_at
    sender.collect_events()

    sender.transfer(to=receiver, points=70, at=T0, channel="app", rules=RULES)

    assert (available(sender), available(receiver)) == (30, 70)
    assert [lot.expires_at for lot in receiver.lots] == [expiry]
    assert recorded(sender) == recorded(receiver) == ["points_transferred"]
    with pytest.raises(InsufficientPoints):
        sender.transfer(to=receiver, points=31, at=T0, channel="app", rules=RULES)
    with pytest.raises(TransferRefused):
        sender.transfer(to=sender, points=1, at=T0, channel="app", rules=RULES)


def test_settling_expires_due_lots_as_events() -> None:
    member = enrolled_member()
    buy(member, "100", order_ref="O-1")
    member.collect_events()
    expiry = member.lots[0].expires_at
    assert expiry is not None
    assert member.next_balance_change(after=T0, rules=RULES) is not None

    assert member.settle(at=expiry, channel="system", rules=RULES) == 1

    (expired,) = member.collect_events()
    assert event_type(type(expired)) == "points_expired"
    balance = member.balance(now=expiry, rules=RULES)
    assert (balance.available, balance.expired) == (0, 100)


def test_a_tier_goes_down_only_after_the_grace_period_below_its_threshold() -> None:
    rules = replace(RULES, tier_window_days=30, downgrade_grace_days=10)
    member = enrolled_member(rules=rules)
    buy(member, "1000", order_ref="O-1", rules=rules)
    assert member.tier == "silver"
    member.collect_events()
    below = T0 + timedelta(days=30)  # the purchase leaves the window

    assert member.settle(at=below + timedelta(days=9), channel="system", rules=rules) == 0
    assert member.tier == "silver"
    assert member.settle(at=below + timedelta(days=10), channel="system", rules=rules) == 1
    (changed,) = member.collect_events()
    assert (changed.from_tier, changed.to_tier, changed.reason) == ("silver", "member", "downgrade")  # type: ignore[attr-defined]


def test_the_points_always_add_up_and_a_replay_gives_the_same_member() -> None:
    from domain.identities import normalise_identity

    member = Member.enrol(
        member_id=uuid4(),
        identities=[normalise_identity("phone", "139 1234 5678")],
        profile=None,
        channel="pos",
        at=T0,
        rules=RULES,
    )
    receiver = other_member()
    buy(member, "300", order_ref="O-1")
    buy(member, "200", order_ref="O-2")
    redemption_id = redeem(member, 150)
    member.reverse_earn(order_ref="O-2", amount=Decimal("50"), at=T0, channel="pos", rules=RULES)
    member.reverse_redemption(redemption_id=redemption_id, at=T0, channel="pos")
    hold_id = uuid4()
    member.hold(
        hold_id=hold_id,
        points=60,
        expires_at=T0 + timedelta(hours=1),
        order_ref=None,
        at=T0,
        channel="app",
        rules=RULES,
    )
    member.capture(hold_id=hold_id, points=40, at=T0, channel="app")
    member.adjust(points=-25, reason="correction", allow_negative=False, at=T0, channel="crm", rules=RULES)
    member.transfer(to=receiver, points=100, at=T0, channel="app", rules=RULES)

    balance = member.balance(now=T0, rules=RULES)
    lots = sum(lot.points for lot in member.lots)
    assert balance.available + balance.held + balance.pending == lots - member.debt
    assert lots - member.debt == (
        balance.lifetime_earned
        + member.adjusted
        + member.transferred
        - balance.lifetime_redeemed
        - balance.expired
    )
    assert replay(member.collect_events()) == member


def test_what_fell_due_behind_a_later_event_is_still_due() -> None:
    member = enrolled_member()
    buy(member, "100", order_ref="O-1")
    expiry = member.lots[0].expires_at
    assert expiry is not None
    # An award recorded after the lot expired, before anything settled it.
    member.award(
        points=5, reason="late", at=expiry + timedelta(days=1), channel="crm", rules=RULES, rules_version=1
    )

    assert member.next_balance_change(after=expiry + timedelta(days=1), rules=RULES) == expiry


def test_a_merged_order_keeps_what_was_refunded_of_it() -> None:
    source, target = enrolled_member(), other_member()
    buy(source, "100", order_ref="O-1")
    source.reverse_earn(order_ref="O-1", amount=Decimal("50"), at=T0, channel="pos", rules=RULES)
    target.merge(source=source, at=T0, channel="crm", rules=RULES)

    taken = target.reverse_earn(order_ref="O-1", amount=None, at=T0, channel="pos", rules=RULES)

    assert taken == 50  # not 100: the order earned 100 in all
    assert available(target) == 0


def test_a_hold_never_makes_available_negative_past_its_time_or_its_lots() -> None:
    member = enrolled_member()
    member.award(points=100, reason="welcome", at=T0, channel="crm", rules=RULES, rules_version=1)
    expiry = member.lots[0].expires_at
    assert expiry is not None
    hold_id = uuid4()
    member.hold(
        hold_id=hold_id,
        points=100,
        expires_at=expiry + timedelta(days=1),
        order_ref=None,
        at=T0,
        channel="app",
        rules=RULES,
    )

    # The lots expire under the open hold: nothing is left to hold, nothing is owed.
    after = member.balance(now=expiry, rules=RULES)
    assert (after.available, after.held) == (0, 0)
    with pytest.raises(InsufficientPoints):
        member.capture(hold_id=hold_id, points=None, at=expiry, channel="app")
    # Past its time, a hold holds nothing even before the service records its release.
    short = enrolled_member()
    buy(short, "50", order_ref="S-1")
    short.hold(
        hold_id=uuid4(),
        points=50,
        expires_at=T0 + timedelta(minutes=1),
        order_ref=None,
        at=T0,
        channel="app",
        rules=RULES,
    )
    assert available(short, T0 + timedelta(minutes=1)) == 50
