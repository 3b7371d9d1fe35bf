"""Duplicate members become one; identities come and go, but never the last one."""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID, uuid4

import pytest

from domain.errors import IdentityNotLinked, LastIdentity, MemberNotActive, MergeRefused
from domain.events import event_type
from domain.identities import normalise_identity
from domain.member import Member, MemberStatus
from domain.rules import DEFAULT_RULES
from tests.unit.helpers import T0, buy, enrolled_member, mapper, replay

SOURCE_ID = UUID("00000000-0000-4000-8000-000000000002")


def app_member() -> Member:
    """The same person, enrolled again in the app with an e-mail address."""
    return Member.enrol(
        member_id=SOURCE_ID,
        identities=[normalise_identity("email", "Li.Lei@Example.com")],
        profile=None,
        channel="app",
        at=T0,
        rules=DEFAULT_RULES,
    )


def test_merge_moves_lots_totals_identities_and_retires_the_source() -> None:
    target = enrolled_member()
    buy(target, "300", order_ref="POS-1")
    source = app_member()
    buy(source, "800", order_ref="APP-1", channel="app", occurred_at=T0 - timedelta(days=200))
    source.redeem(
        redemption_id=uuid4(),
        points=100,
        reward_ref=None,
        order_ref=None,
        at=T0,
        channel="app",
        rules=DEFAULT_RULES,
    )
    target.collect_events()
    source.collect_events()
    now = T0 + timedelta(minutes=1)

    target.merge(source=source, at=now, channel="crm", rules=DEFAULT_RULES)

    target_events, source_events = target.collect_events(), source.collect_events()
    assert [event_type(type(e)) for e in target_events] == ["members_merged", "tier_changed"]
    assert [event_type(type(e)) for e in source_events] == ["members_merged"]
    balance = target.balance(now=now, rules=DEFAULT_RULES)
    assert balance.available == 300 + 700
    assert balance.lifetime_earned == 1100
    assert balance.lifetime_redeemed == 100
    assert balance.qualifying == 1100
    assert {i.kind for i in target.identities} == {"phone", "email"}
    assert target.channels == ["pos", "app"]
    assert "APP-1" in target.orders
    # Lot ids stay unique, so draws and refunds can name them.
    assert len({lot.lot_id for lot in target.lots}) == len(target.lots)
    assert target.orders["APP-1"].lot_id in {lot.lot_id for lot in target.lots}
    assert source.status == MemberStatus.MERGED
    assert source.merged_into == target.id


def test_a_merged_source_keeps_nothing_so_sums_over_members_do_not_change() -> None:
    target, source = enrolled_member(), app_member()
    buy(target, "300", order_ref="POS-1")
    buy(source, "800", order_ref="APP-1", channel="app")
    source.redeem(
        redemption_id=uuid4(),
        points=100,
        reward_ref=None,
        order_ref=None,
        at=T0,
        channel="app",
        rules=DEFAULT_RULES,
    )
    now = T0 + timedelta(minutes=1)
    fields = ("available", "pending", "held", "lifetime_earned", "lifetime_redeemed", "expired", "qualifying")

    def total() -> dict[str, int]:
        balances = [m.balance(now=now, rules=DEFAULT_RULES) for m in (target, source)]
        return {f: sum(getattr(b, f) for b in balances) for f in fields}

    before = total()
    target.merge(source=source, at=now, channel="crm", rules=DEFAULT_RULES)

    assert total() == before
    left = source.balance(now=now, rules=DEFAULT_RULES)
    assert all(getattr(left, f) == 0 for f in fields)
    assert source.identities == []
    assert source.lots == []


def test_merge_re_evaluates_the_tier() -> None:
    target = enrolled_member()
    buy(target, "600", order_ref="POS-1")
    source = app_member()
    buy(source, "600", order_ref="APP-1", channel="app")

    target.merge(source=source, at=T0, channel="crm", rules=DEFAULT_RULES)

    assert target.tier == "silver"
    assert [event_type(type(e)) for e in target.collect_events()][-2:] == ["members_merged", "tier_changed"]


def test_the_merged_source_refuses_every_later_command_naming_its_target() -> None:
    target, source = enrolled_member(), app_member()
    target.merge(source=source, at=T0, channel="crm", rules=DEFAULT_RULES)

    with pytest.raises(MemberNotActive) as refused:
        buy(source, "10", order_ref="LATE-1")

    assert refused.value.code == "member_merged"
    assert refused.value.extra["merged_into"] == str(target.id)


def test_a_member_cannot_merge_into_itself_or_absorb_a_merged_one() -> None:
    target, source = enrolled_member(), app_member()
    with pytest.raises(MergeRefused):
        target.merge(source=target, at=T0, channel="crm", rules=DEFAULT_RULES)
    target.merge(source=source, at=T0, channel="crm", rules=DEFAULT_RULES)
    with pytest.raises(MemberNotActive):
        target.merge(source=source, at=T0, channel="crm", rules=DEFAULT_RULES)
    with pytest.raises(MemberNotActive):
        source.merge(source=target, at=T0, channel="crm", rules=DEFAULT_RULES)


def test_merge_is_refused_while_the_source_has_open_holds() -> None:
    target, source = enrolled_member(), app_member()
    source.held = 10  # holds arrive in a later issue; the rule is already here

    target.collect_events()
    source.collect_events()

    with pytest.raises(MergeRefused):
        target.merge(source=source, at=T0, channel="crm", rules=DEFAULT_RULES)
    assert target.collect_events() == []
    assert source.collect_events() == []
    assert source.status == MemberStatus.ACTIVE


def test_both_sides_of_a_merge_replay_to_the_same_state_through_the_transcoder() -> None:
    target = Member.enrol(
        member_id=UUID(int=1),
        identities=[normalise_identity("phone", "138 1234 5678")],
        profile=None,
        channel="pos",
        at=T0,
        rules=DEFAULT_RULES,
    )
    buy(target, "300", order_ref="POS-1")
    source = app_member()
    buy(source, "800", order_ref="APP-1", channel="app")
    target.merge(source=source, at=T0, channel="crm", rules=DEFAULT_RULES)
    codec = mapper()

    def through_store(events: list[object]) -> Member:
        return replay([codec.to_domain_event(codec.to_stored_event(e)) for e in events])  # type: ignore[arg-type]

    rebuilt_target = through_store(target.collect_events())
    rebuilt_source = through_store(source.collect_events())

    assert rebuilt_target == target
    assert rebuilt_source == source


def test_unlink_keeps_at_least_one_identity() -> None:
    member = enrolled_member()
    email = normalise_identity("email", "a@b.cn")
    member.link_identity(identity=email, channel="app", at=T0)

    member.unlink_identity(identity=normalise_identity("phone", "138 1234 5678"), channel="app", at=T0)

    assert member.identities == [email]
    with pytest.raises(LastIdentity):
        member.unlink_identity(identity=email, channel="app", at=T0)
    with pytest.raises(IdentityNotLinked):
        member.unlink_identity(identity=normalise_identity("email", "other@b.cn"), channel="app", at=T0)
