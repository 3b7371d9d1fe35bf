"""Builders shared by the domain stories: a clock-free start time, members, a transcoder."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate
from eventsourcing.persistence import (
    Mapper,
)

from domain.identities import normalise_identity
from domain.member import EarnResult, Member
from domain.rules import DEFAULT_RULES, Rules
from service.store.codec import make_transcoder

T0 = datetime(2024, 1, 15, 9, 30, tzinfo=UTC)
MEMBER_ID = UUID("00000000-0000-4000-8000-000000000001")


def enrolled_member(*, at: datetime = T0, rules: Rules = DEFAULT_RULES) -> Member:
    """A member who just joined at the POS with a phone number (events already collected)."""
    member = Member.enrol(
        member_id=MEMBER_ID,
        identities=[normalise_identity("phone", "138 1234 5678")],
        profile=None,
        channel="pos",
        at=at,
        rules=rules,
    )
    member.collect_events()
    return member


def buy(
    member: Member,
    amount: str,
    *,
    order_ref: str,
    at: datetime = T0,
    occurred_at: datetime | None = None,
    rules: Rules = DEFAULT_RULES,
    channel: str = "pos",
) -> EarnResult:
    """A purchase in the program currency, earned at once."""
    return member.earn_purchase(
        order_ref=order_ref,
        amount=Decimal(amount),
        currency=rules.currency,
        items=[],
        occurred_at=occurred_at or at,
        at=at,
        channel=channel,
        rules=rules,
        rules_version=1,
    )


def mapper() -> Mapper[UUID]:
    """The library's mapper over the store's own transcoder (it knows every domain type)."""
    return Mapper(transcoder=make_transcoder())


def replay(events: list[Any]) -> Any:
    """Rebuild an aggregate from its events, as the repository does."""
    aggregate: Aggregate | None = None
    for domain_event in events:
        aggregate = domain_event.mutate(aggregate)
    return aggregate
