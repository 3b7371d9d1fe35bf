"""The projections' fast paths give what the library's paths give: typed decoding, dispatch."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

from eventsourcing.persistence import JSONTranscoder, StoredEvent

from domain.identities import normalise_identity
from domain.member import Member
from domain.program import Program
from domain.rules import DEFAULT_RULES
from projections.dispatch import mutate
from service.store.codec import EventCodec
from service.store.keys import Keyring
from tests.unit.helpers import T0, buy, replay
from tests.unit.test_merge_and_unlink import app_member
from tests.unit.test_replay import LATER_RULES, busy_member

KEYRING = Keyring(bytes(range(32)))


def histories() -> list[list[Any]]:
    """Every kind of event the ledger stores, on a few streams."""
    member, history = busy_member()
    member.unlink_identity(
        identity=normalise_identity("social", "wechat:oAbC"), channel="app", at=T0 + timedelta(hours=1)
    )
    history += member.collect_events()
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
    program = Program.create(at=T0)
    program.publish_rules(rules=LATER_RULES, at=T0 + timedelta(days=1), channel="ops")
    return [
        history,
        list(target.collect_events()),
        list(source.collect_events()),
        list(program.collect_events()),
    ]


def library_decode(codec: EventCodec, stored: StoredEvent, key: bytes | None) -> Any:
    """The library's Mapper, then the personal fields opened as the codec does."""
    event = codec._mapper.to_domain_event(stored)
    return codec._open_all(event, key)


def assert_same(a: Any, b: Any, path: str = "") -> None:
    """Equal, of the same types all the way down, dicts in the same order."""
    assert type(a) is type(b), path
    if isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def test_typed_decoding_equals_the_library_mapper_for_every_event_kind() -> None:
    codec = EventCodec(KEYRING)
    seen = set()
    for events in histories():
        key, _ = KEYRING.new_member_key(events[0].originator_id)
        for event in events:
            stored = codec.encode(event, key)
            for k in (key, None):  # readable, and as after the key is shredded
                assert_same(vars(codec.decode(stored, k)), vars(library_decode(codec, stored, k)))
            seen.add(type(event).__name__)
    assert {"MemberEnrolled", "PointsEarned", "MembersMerged", "RulesPublished"} <= seen
    # Every one of them took the typed path.
    assert all(typed is not None for _, typed, _ in codec._typed.values())


def test_encoding_writes_the_library_bytes_for_every_event_kind() -> None:
    codec = EventCodec(KEYRING)
    library = JSONTranscoder.encode
    for events in histories():
        for event in events:
            state = {k: v for k, v in vars(event).items() if k not in ("originator_id", "originator_version")}
            assert codec._transcoder.encode(state) == library(codec._transcoder, state), type(event)
    # Values whose JSON could differ, and the same instant in two zones (written differently).
    odd = [
        "".join(map(chr, range(0x30))) + '\x7f\u2028é😀"\\/',
        1.5,
        1e16,
        {1: "a key that is not a string"},
        (1, "a tuple"),
        datetime(2024, 1, 15, 9, 30, tzinfo=UTC),
        datetime(2024, 1, 15, 17, 30, tzinfo=timezone(timedelta(hours=8))),
        Decimal("-0.10"),
        UUID(int=7),
        True,
        None,
    ]
    for value in [*odd, {"all": odd}]:
        assert codec._transcoder.encode(value) == library(codec._transcoder, value), value


def test_state_of_another_shape_takes_the_library_path() -> None:
    codec = EventCodec(KEYRING)
    _, history = busy_member()
    earned = next(e for e in history if type(e).__name__ == "PointsEarned")
    stored = codec.encode(earned, None)
    state = json.loads(stored.state)
    # An attribute the class does not declare, a field missing (an older schema), a plain string.
    for changed in (
        {**state, "extra": 1},
        {k: v for k, v in state.items() if k != "reason"},
        {**state, "at": state["at"]["_data_"]},
    ):
        odd = StoredEvent(
            stored.originator_id, stored.originator_version, stored.topic, json.dumps(changed).encode()
        )
        assert_same(vars(codec.decode(odd, None)), vars(library_decode(codec, odd, None)))


def test_dispatch_mutates_exactly_as_the_library() -> None:
    for events in histories():
        ours: Any = None
        for event in events:
            ours = mutate(event, ours)
        assert ours == replay(events)
