"""A member asks to be forgotten: the account closes, the personal data goes, the points stay."""

from __future__ import annotations

from datetime import timedelta
from uuid import uuid4

import pytest
from eventsourcing.domain import Snapshot

from domain.errors import MemberNotActive
from domain.events import event_type
from domain.identities import normalise_identity
from domain.member import Member, MemberStatus, Profile
from domain.rules import DEFAULT_RULES
from service.store.codec import EventCodec
from service.store.keys import Keyring
from tests.unit.helpers import T0, buy, enrolled_member, mapper, replay


def test_forget_closes_the_account_and_keeps_the_points() -> None:
    member = enrolled_member()
    buy(member, "300", order_ref="POS-1")
    before = member.balance(now=T0, rules=DEFAULT_RULES)

    member.forget(at=T0 + timedelta(minutes=1), channel="privacy-desk")

    assert member.status is MemberStatus.FORGOTTEN
    assert (member.identities, member.profile) == ([], None)
    assert member.balance(now=T0, rules=DEFAULT_RULES) == before
    with pytest.raises(MemberNotActive) as refused:
        buy(member, "10", order_ref="POS-2")
    assert refused.value.code == "member_forgotten"
    with pytest.raises(MemberNotActive):
        member.forget(at=T0 + timedelta(minutes=2), channel="privacy-desk")


def test_forget_releases_open_holds_first() -> None:
    member = enrolled_member()
    buy(member, "300", order_ref="POS-1")
    hold_id = uuid4()
    member.hold(
        hold_id=hold_id,
        points=100,
        expires_at=T0 + timedelta(minutes=15),
        order_ref=None,
        at=T0,
        channel="web",
        rules=DEFAULT_RULES,
    )
    member.collect_events()

    member.forget(at=T0 + timedelta(minutes=1), channel="privacy-desk")

    recorded = member.collect_events()
    assert [event_type(type(e)) for e in recorded] == ["hold_released", "member_forgotten"]
    assert (recorded[0].hold_id, recorded[0].reason) == (hold_id, "forgotten")
    assert member.balance(now=T0 + timedelta(minutes=1), rules=DEFAULT_RULES).held == 0


def joined(kind: str, value: str) -> Member:
    return Member.enrol(
        member_id=uuid4(),
        identities=[normalise_identity(kind, value)],
        profile=Profile(name="Li Lei"),
        channel="app",
        at=T0,
        rules=DEFAULT_RULES,
    )


def test_a_forgotten_member_names_the_members_merged_into_it_and_replays_without_personal_data() -> None:
    target = joined("phone", "13812345678")
    source = joined("email", "li.lei@example.com")
    buy(source, "200", order_ref="APP-1", channel="app")
    target.merge(source=source, at=T0, channel="crm", rules=DEFAULT_RULES)
    target.forget(at=T0 + timedelta(days=1), channel="privacy-desk")
    history = list(target.collect_events())

    assert history[-1].merged_from == [source.id]
    # Once the key is gone the store reads every personal field as None: history still replays.
    codec = mapper()
    shredded = []
    for original in history:
        stored = codec.to_domain_event(codec.to_stored_event(original))
        for name in type(original).personal_fields:
            object.__setattr__(stored, name, None)
        shredded.append(stored)
    rebuilt = replay(shredded)
    assert rebuilt.status is MemberStatus.FORGOTTEN
    assert (rebuilt.identities, rebuilt.profile) == ([], None)
    now = T0 + timedelta(days=2)
    assert rebuilt.balance(now=now, rules=DEFAULT_RULES) == target.balance(now=now, rules=DEFAULT_RULES)


def test_a_forgotten_members_points_still_expire() -> None:
    member = enrolled_member()
    buy(member, "300", order_ref="POS-1")
    member.forget(at=T0, channel="privacy-desk")
    member.collect_events()
    later = T0 + timedelta(days=2 * 366)

    assert member.settle(at=later, channel="system", rules=DEFAULT_RULES) >= 1
    assert member.balance(now=later, rules=DEFAULT_RULES).available == 0


def test_a_forgotten_members_snapshot_needs_no_key_and_reads_back_empty() -> None:
    member = joined("phone", "13812345678")
    buy(member, "300", order_ref="POS-1", channel="app")
    member.forget(at=T0, channel="privacy-desk")
    codec = EventCodec(Keyring(bytes(32)))

    # Taken by an instance that no longer has the key (or still has it: the same bytes).
    stored = codec.encode(Snapshot.take(member), None)
    restored = codec.decode(stored, None).mutate(None)

    assert (restored.identities, restored.profile) == ([], None)
    assert restored.balance(now=T0, rules=DEFAULT_RULES) == member.balance(now=T0, rules=DEFAULT_RULES)


def test_a_snapshot_taken_before_the_key_was_shredded_reads_back_with_no_identities() -> None:
    member = joined("phone", "13812345678")
    buy(member, "300", order_ref="POS-1", channel="app")
    codec = EventCodec(Keyring(bytes(32)))
    key = bytes(range(32))

    stored = codec.encode(Snapshot.take(member), key)
    restored = codec.decode(stored, None).mutate(None)  # the key is gone since

    assert (restored.identities, restored.profile) == ([], None)
    assert restored.balance(now=T0, rules=DEFAULT_RULES) == member.balance(now=T0, rules=DEFAULT_RULES)
