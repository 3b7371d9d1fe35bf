"""Events as CloudEvents: the envelope, the data (personal data redacted), the subjects, and the
AsyncAPI document generated from the same types (and committed under docs/)."""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import msgspec
import pytest

from domain.events import LedgerAggregate
from domain.identities import Identity
from domain.member import Member, Profile, PurchaseItem
from domain.program import PROGRAM_ID, Program
from domain.rules import Rules
from service.bus import cloudevents
from service.bus.asyncapi import asyncapi_document, render
from service.config import Settings

ROOT = Path(__file__).resolve().parents[2]
AT = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
PHONE = "+8613800138000"


@dataclass(frozen=True)
class Recorded:
    """The fields of service.store.event_store.RecordedEvent that the envelope reads."""

    position: int
    event_id: UUID
    stream_id: UUID
    stream_version: int
    event_type: str
    channel: str | None
    recorded_at: datetime
    event: Any
    hash: bytes | None = bytes(range(32))
    global_hash: bytes | None = bytes(range(32, 64))
    traceparent: str | None = None


def recorded(event: Any, position: int = 7, channel: str | None = "pos-sh-01") -> Recorded:
    return Recorded(
        position=position,
        event_id=uuid4(),
        stream_id=event.originator_id,
        stream_version=event.originator_version,
        event_type=cloudevents.event_type(type(event)),
        channel=channel,
        recorded_at=AT,
        event=event,
    )


def member_events() -> list[Any]:
    member = Member.enrol(
        member_id=uuid4(),
        identities=[Identity(kind="phone", value=PHONE), Identity(kind="email", value="li@x.cn")],
        profile=Profile(name="Li Lei", birthday=date(1990, 5, 4), locale="zh-CN"),
        channel="pos-sh-01",
        at=AT,
        rules=Rules(),
    )
    member.earn_purchase(
        order_ref="A-1",
        amount=Decimal("1000.00"),
        currency="CNY",
        items=[PurchaseItem(sku="TEA-1", category="tea", amount=Decimal("1000.00"), quantity=1)],
        occurred_at=AT,
        at=AT,
        channel="pos-sh-01",
        rules=Rules(),
        rules_version=1,
    )
    member.link_identity(identity=Identity(kind="app_user", value="u-12345678"), channel="app", at=AT)
    return list(member.collect_events())


def body(event: Any, **kw: Any) -> dict[str, Any]:
    return json.loads(cloudevents.encode(recorded(event, **kw)))


def test_a_traced_cause_is_carried_as_the_distributed_tracing_extension() -> None:
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    traced = replace(recorded(member_events()[0]), traceparent=traceparent)

    assert json.loads(cloudevents.encode(traced))["traceparent"] == traceparent
    assert cloudevents.decode(cloudevents.encode(traced)).traceparent == traceparent
    assert "traceparent" not in json.loads(cloudevents.encode(recorded(member_events()[0])))


def test_the_envelope_carries_every_cloudevents_attribute() -> None:
    enrolled = member_events()[0]
    rec = recorded(enrolled)
    message = json.loads(cloudevents.encode(rec, source="urn:test"))
    assert list(message) == [
        "specversion",
        "id",
        "source",
        "type",
        "subject",
        "time",
        "datacontenttype",
        "data",
        "position",
        "streamversion",
        "channel",
        "hash",
        "globalhash",
    ]
    assert message["specversion"] == "1.0"  # constant, yet never dropped by omit_defaults
    assert message["id"] == str(rec.event_id)
    assert message["source"] == "urn:test"
    assert message["type"] == "loyalty.member_enrolled.v1"
    assert message["subject"] == str(enrolled.originator_id)
    assert message["time"] == "2026-03-01T09:30:00Z"
    assert message["datacontenttype"] == "application/json"
    assert message["position"] == 7
    assert message["streamversion"] == 1
    assert message["channel"] == "pos-sh-01"
    assert (message["hash"], message["globalhash"]) == (rec.hash.hex(), rec.global_hash.hex())  # type: ignore[union-attr]
    assert cloudevents.decode(cloudevents.encode(rec)).id == rec.event_id


def test_an_event_without_a_channel_leaves_the_attribute_out_rather_than_null() -> None:
    message = body(member_events()[0], channel=None)
    assert "channel" not in message
    assert message["specversion"] == "1.0"
    assert message["datacontenttype"] == "application/json"


def test_data_is_the_event_without_bookkeeping_with_json_friendly_values() -> None:
    data = body(member_events()[1])["data"]
    for bookkeeping in ("originator_id", "originator_version", "timestamp", "originator_topic"):
        assert bookkeeping not in data
    assert data["order_ref"] == "A-1"
    assert data["amount"] == "1000.00"  # Decimal as a string: no float rounding
    assert data["points"] == 1000
    assert data["items"] == [{"sku": "TEA-1", "category": "tea", "amount": "1000.00", "quantity": 1}]
    assert data["breakdown"] == [{"rule": "base", "points": 1000}]
    assert datetime.fromisoformat(data["available_at"]) == AT
    assert data["expires_at"].endswith("Z")


def test_personal_data_is_never_broadcast() -> None:
    events = member_events()
    everything = b"".join(cloudevents.encode(recorded(e)) for e in events)
    for secret in (PHONE, "li@x.cn", "u-12345678", "Li Lei", "1990-05-04", "zh-CN"):
        assert secret.encode() not in everything
    enrolled = body(events[0])["data"]
    assert enrolled["identities"] == [{"kind": "phone"}, {"kind": "email"}]
    assert "profile" not in enrolled
    linked = next(e for e in events if cloudevents.event_type(type(e)) == "identity_linked")
    assert body(linked)["data"]["identity"] == {"kind": "app_user"}


def test_a_forgotten_members_personal_fields_read_as_none_and_are_sent_as_null() -> None:
    enrolled = member_events()[0]
    object.__setattr__(enrolled, "identities", None)  # what decoding gives once the key is shredded
    object.__setattr__(enrolled, "profile", None)
    assert body(enrolled)["data"]["identities"] is None


def test_subjects_name_the_event_type_and_the_member_or_the_program() -> None:
    member_id = uuid4()
    assert cloudevents.nats_subject("points_earned", member_id) == f"loyalty.events.points_earned.{member_id}"
    assert cloudevents.nats_subject("rules_published", PROGRAM_ID) == "loyalty.events.rules_published.program"
    assert cloudevents.nats_subject("points_earned", member_id, "t1.events").startswith("t1.events.")
    program_events = list(Program.create(at=AT).collect_events())
    assert [body(e)["subject"] for e in program_events] == ["program", "program"]
    assert body(program_events[1])["data"]["rules"]["currency"] == "CNY"


def test_every_event_type_has_a_data_struct_and_none_can_carry_personal_values() -> None:
    catalogue = cloudevents.event_classes()
    assert {
        "member_enrolled",
        "identity_linked",
        "points_earned",
        "points_redeemed",
        "tier_changed",
        "rules_published",
        "campaign_started",
        "campaign_ended",
    } <= set(catalogue)
    program_types = ("program_created", "rules_published", "campaign_started", "campaign_ended")
    for name, (cls, kind) in catalogue.items():
        assert kind == ("program" if name in program_types else "member")
        struct = cloudevents.data_type(cls).struct
        assert not set(struct.__struct_fields__) & cloudevents.BOOKKEEPING
        assert "profile" not in struct.__struct_fields__
    names = set(asyncapi_document()["components"]["schemas"])
    assert "Identity" not in names
    assert "Profile" not in names
    assert "RedactedIdentity" in names


def test_a_class_that_forgets_to_declare_an_identity_personal_is_refused() -> None:
    class CarelessEvent(LedgerAggregate.Event):
        identity: Identity
        at: datetime

    with pytest.raises(TypeError, match="holds identities but is not personal"):
        cloudevents.data_type(CarelessEvent)


def test_the_asyncapi_document_has_a_channel_per_event_type() -> None:
    document = asyncapi_document(Settings(stream_name="LOYALTY", stream_max_age_days=30))
    assert document["asyncapi"] == "3.0.0"
    catalogue = cloudevents.event_classes()
    assert set(document["channels"]) == set(catalogue) | {
        "segment_entered",
        "segment_left",
        "audit_checkpoint",
    }
    assert document["channels"]["audit_checkpoint"]["address"] == "loyalty.audit.checkpoint"
    checkpoint = document["components"]["messages"]["audit_checkpoint"]["payload"]
    assert checkpoint == {"$ref": "#/components/schemas/SignedCheckpoint"}
    assert document["channels"]["points_earned"]["address"] == "loyalty.events.points_earned.{member_id}"
    assert document["channels"]["rules_published"]["address"] == "loyalty.events.rules_published.program"
    assert "parameters" not in document["channels"]["rules_published"]
    message = document["components"]["messages"]["points_earned"]
    envelope, narrowing = message["payload"]["allOf"]
    assert envelope == {"$ref": "#/components/schemas/CloudEvent_PointsEarnedData_"}
    assert narrowing["properties"]["type"] == {"const": "loyalty.points_earned.v1"}
    schemas = document["components"]["schemas"]
    assert schemas["CloudEvent_PointsEarnedData_"]["properties"]["data"] == {
        "$ref": "#/components/schemas/PointsEarnedData"
    }
    amount = schemas["PointsEarnedData"]["properties"]["amount"]
    assert {"type": "string", "format": "decimal"} in amount["anyOf"]
    assert schemas["PointsEarnedData"]["properties"]["at"] == {"type": "string", "format": "date-time"}
    jetstream = document["x-jetstream"]
    assert jetstream["stream"] == "LOYALTY"
    assert jetstream["subjects"] == ["loyalty.events.>"]
    assert jetstream["maxAgeSeconds"] == 30 * 86400
    assert jetstream["duplicateWindowSeconds"] == 3600
    entered = document["channels"]["segment_entered"]
    assert entered["address"] == "loyalty.segments.{segment}.{member_id}"
    assert entered["x-jetstream"] == {"stream": "LOYALTY_SEGMENTS", "subjects": ["loyalty.segments.>"]}
    narrowing = document["components"]["messages"]["segment_left"]["payload"]["allOf"][1]
    assert narrowing["properties"]["type"] == {"const": "loyalty.segment_left.v1"}


def test_every_ref_in_the_document_resolves() -> None:
    document = asyncapi_document()

    def refs(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                yield node["$ref"]
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    for ref in refs(document):
        target: Any = document
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]


def test_the_committed_asyncapi_document_is_the_generated_one() -> None:
    committed = (ROOT / "docs" / "asyncapi.json").read_text()
    assert committed == render(), "regenerate it: python -m service.bus.asyncapi > docs/asyncapi.json"


def descriptions(node: Any) -> Any:
    """Every schema `description` under `node`."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "description" and isinstance(value, str):
                yield value
            else:
                yield from descriptions(value)
    elif isinstance(node, list):
        for value in node:
            yield from descriptions(value)


def test_schema_descriptions_are_cleaned_whatever_docstrings_msgspec_hands_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What msgspec 0.22 gives on Python 3.11: the docstring's continuation lines still indented.
    real = msgspec.json.schema_components

    def as_0_22_on_3_11(*args: Any, **kwargs: Any) -> Any:
        refs, schemas = real(*args, **kwargs)
        schemas["RedactedIdentity"]["description"] = "An identity with its value removed:\n    only its kind."
        return refs, schemas

    monkeypatch.setattr(msgspec.json, "schema_components", as_0_22_on_3_11)
    schemas = asyncapi_document()["components"]["schemas"]
    assert schemas["RedactedIdentity"]["description"] == "An identity with its value removed:\nonly its kind."
    assert schemas["CloudEvent_PointsEarnedData_"]["description"] == inspect.cleandoc(
        cloudevents.CloudEvent.__doc__ or ""
    )
    for description in descriptions(schemas):
        assert description == inspect.cleandoc(description)
