"""History replays to the same state, through the same bytes the store writes."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from typing import Any
from uuid import uuid4

import pytest
from eventsourcing.domain import Snapshot
from msgspec.structs import replace

from domain.errors import InvalidRules
from domain.events import event_type
from domain.identities import normalise_identity
from domain.member import Member, Profile, PurchaseItem
from domain.program import PROGRAM_ID, Program
from domain.rules import DEFAULT_RULES, EarnRule, Tier
from tests.unit.helpers import MEMBER_ID, T0, buy, mapper, replay

LATER_RULES = replace(
    DEFAULT_RULES,
    earn=EarnRule(points_per_unit=Decimal(2), pending_days=3),
    tiers=[Tier(name="member", threshold=0), Tier(name="vip", threshold=200, multiplier=Decimal(2))],
)


def busy_member() -> tuple[Member, list[Any]]:
    """A member with a bit of everything in its history, and that history."""
    member = Member.enrol(
        member_id=MEMBER_ID,
        identities=[normalise_identity("phone", "13812345678")],
        profile=Profile(name="Wei", birthday=date(1990, 5, 4), locale="zh-CN"),
        channel="pos",
        at=T0,
        rules=DEFAULT_RULES,
    )
    member.link_identity(
        identity=normalise_identity("social", "wechat:oAbC"), channel="mini", at=T0 + timedelta(minutes=1)
    )
    member.earn_purchase(
        order_ref="A-1",
        amount=Decimal("1200.50"),
        currency="CNY",
        items=[PurchaseItem(sku="tea", category="drinks", amount=Decimal("1200.50"), quantity=2)],
        occurred_at=T0 - timedelta(days=2),
        at=T0 + timedelta(minutes=2),
        channel="app",
        rules=DEFAULT_RULES,
        rules_version=1,
    )
    member.award(
        points=50,
        reason="survey",
        at=T0 + timedelta(minutes=3),
        channel="internal",
        rules=DEFAULT_RULES,
        rules_version=1,
    )
    buy(member, "99.90", order_ref="A-2", at=T0 + timedelta(minutes=4), rules=LATER_RULES)
    member.redeem(
        redemption_id=uuid4(),
        points=300,
        reward_ref="mug",
        order_ref="A-3",
        at=T0 + timedelta(minutes=5),
        channel="pos",
        rules=DEFAULT_RULES,
    )
    return member, list(member.collect_events())


def test_replaying_the_events_rebuilds_the_same_member() -> None:
    member, history = busy_member()
    assert [event_type(type(e)) for e in history] == [
        "member_enrolled",
        "identity_linked",
        "points_earned",
        "tier_changed",
        "points_earned",
        "points_earned",
        "tier_changed",
        "points_redeemed",
    ]

    rebuilt = replay(history)

    assert rebuilt == member
    # Replay never consults rules: the second earn keeps the pending lock of LATER_RULES.
    now = T0 + timedelta(minutes=5)
    assert rebuilt.balance(now=now, rules=DEFAULT_RULES) == member.balance(now=now, rules=DEFAULT_RULES)
    # floor(99.90 x 2) = 199 points, still locked for three days.
    assert rebuilt.balance(now=now, rules=DEFAULT_RULES).pending == 199
    assert rebuilt.tier == "vip"


def test_events_survive_the_json_transcoder_and_replay_identically() -> None:
    member, history = busy_member()
    codec = mapper()

    stored = [codec.to_stored_event(e) for e in history]
    decoded = [codec.to_domain_event(s) for s in stored]

    assert [vars(e) for e in decoded] == [vars(e) for e in history]
    assert replay(decoded) == member


def test_a_snapshot_round_trip_restores_the_member_exactly() -> None:
    member, _ = busy_member()
    codec = mapper()

    snapshot = Snapshot.take(member)
    restored_snapshot = codec.to_domain_event(codec.to_stored_event(snapshot))
    restored = restored_snapshot.mutate(None)

    assert restored == member
    assert set(Member.personal_fields) <= set(snapshot.state)
    # The restored member carries on exactly like the original.
    later = T0 + timedelta(days=10)
    redemption_id = uuid4()
    for m in (member, restored):
        m.redeem(
            redemption_id=redemption_id,
            points=10,
            reward_ref=None,
            order_ref=None,
            at=later,
            channel="app",
            rules=DEFAULT_RULES,
        )
    assert restored == member


def test_the_program_keeps_every_rules_version() -> None:
    program = Program.create(at=T0)
    assert program.id == PROGRAM_ID
    assert (program.rules_version, program.rules) == (1, DEFAULT_RULES)

    version = program.publish_rules(rules=LATER_RULES, at=T0 + timedelta(days=1), channel="ops")

    assert version == 2
    assert program.rules == LATER_RULES
    assert program.rules_at(1) == DEFAULT_RULES
    with pytest.raises(KeyError):
        program.rules_at(3)
    history = list(program.collect_events())
    assert [event_type(type(e)) for e in history] == [
        "program_created",
        "rules_published",
        "rules_published",
    ]
    assert (history[1].channel, history[2].channel) == ("system", "ops")

    codec = mapper()
    rebuilt = replay([codec.to_domain_event(codec.to_stored_event(e)) for e in history])
    assert rebuilt == program
    snapshot = codec.to_domain_event(codec.to_stored_event(Snapshot.take(program)))
    assert snapshot.mutate(None).rules_at(2) == LATER_RULES


def test_invalid_rules_are_not_published() -> None:
    program = Program.create(at=T0)
    program.collect_events()

    with pytest.raises(InvalidRules):
        program.publish_rules(rules=replace(DEFAULT_RULES, tiers=[]), at=T0, channel="ops")

    assert program.collect_events() == []
    assert program.rules_version == 1


def test_history_still_replays_once_personal_data_is_unreadable() -> None:
    member, history = busy_member()
    # After a member is forgotten the store decodes every personal field as None.
    shredded = []
    for original in history:
        state = dict(vars(original))
        for name in type(original).personal_fields:
            state[name] = None
        clone = object.__new__(type(original))
        object.__setattr__(clone, "__dict__", state)
        shredded.append(clone)

    rebuilt = replay(shredded)

    assert (rebuilt.identities, rebuilt.profile) == ([], None)
    now = T0 + timedelta(days=30)
    assert rebuilt.balance(now=now, rules=DEFAULT_RULES) == member.balance(now=now, rules=DEFAULT_RULES)
    assert rebuilt.orders == member.orders
