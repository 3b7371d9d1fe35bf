"""Wire formats of the HTTP API (msgspec Structs; the OpenAPI document is generated from them).

These are not domain types: handlers convert between the two. Money travels as a decimal
string (never a JSON number, so no float ever touches it); points as integers.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal
from uuid import UUID

import msgspec
from msgspec import Meta

from domain.rules import Rules
from service.store.access import CHANNEL_KINDS, SCOPES

Money = Annotated[
    str,
    Meta(pattern=r"^(0|[1-9][0-9]{0,11})(\.[0-9]{1,4})?$", description='Decimal string, e.g. "128.50"'),
]
Points = Annotated[int, Meta(gt=0, le=1_000_000_000)]
SignedPoints = Annotated[int, Meta(ge=-1_000_000_000, le=1_000_000_000)]
Currency = Annotated[str, Meta(pattern=r"^[A-Z]{3}$", description="ISO 4217 code")]
Ref = Annotated[str, Meta(min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$")]
Text = Annotated[str, Meta(min_length=1, max_length=500)]


class Body(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of request bodies: unknown fields are an error, not silently dropped."""


class Out(msgspec.Struct, frozen=True, kw_only=True):
    """Base of response bodies."""


# --- requests -------------------------------------------------------------------------------


class IdentityIn(Body, kw_only=True):
    kind: Annotated[str, Meta(min_length=1, max_length=20)]
    value: Annotated[str, Meta(min_length=1, max_length=320)]


class ProfileIn(Body, kw_only=True):
    name: Annotated[str, Meta(max_length=200)] | None = None
    birthday: date | None = None
    locale: Annotated[str, Meta(max_length=35)] | None = None


class EnrolIn(Body, kw_only=True):
    identities: Annotated[list[IdentityIn], Meta(min_length=1, max_length=20)]
    profile: ProfileIn | None = None


class MergeIn(Body, kw_only=True):
    source_member_id: UUID


class PurchaseItemIn(Body, kw_only=True):
    sku: Ref
    category: Ref | None = None
    amount: Money
    quantity: Annotated[int, Meta(gt=0, le=1_000_000)] = 1


class EarnIn(Body, kw_only=True):
    """A purchase (`order_ref`, `amount`, `currency`) or an award (`points`, `reason`)."""

    order_ref: Ref | None = None
    amount: Money | None = None
    currency: Currency | None = None
    occurred_at: datetime | None = None
    items: Annotated[list[PurchaseItemIn], Meta(max_length=500)] | None = None
    points: Points | None = None
    reason: Text | None = None


class QuoteIn(EarnIn, kw_only=True):
    member_id: UUID


class RedeemIn(Body, kw_only=True):
    points: Points
    reward_ref: Ref | None = None
    order_ref: Ref | None = None


class ChannelIn(Body, kw_only=True):
    id: Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]
    name: Annotated[str, Meta(min_length=1, max_length=200)]
    kind: Literal[CHANNEL_KINDS]  # type: ignore[valid-type]


Scope = Literal[SCOPES]  # type: ignore[valid-type]  # the one list, in service.store.access


class ApiKeyIn(Body, kw_only=True):
    channel: Annotated[str, Meta(min_length=1, max_length=64)]
    scopes: Annotated[list[Scope], Meta(min_length=1)]
    name: Annotated[str, Meta(max_length=200)] | None = None


RulesIn = Rules  # the rules document of SPEC §3 is itself the wire format (ADR 0003)


# --- responses ------------------------------------------------------------------------------


class BalanceOut(Out, kw_only=True):
    available: int
    pending: int
    held: int
    lifetime_earned: int
    lifetime_redeemed: int
    expired: int
    qualifying: int
    tier: str


class IdentityOut(Out, kw_only=True):
    kind: str
    value: str


class MemberOut(Out, kw_only=True):
    member_id: UUID
    status: str
    merged_into: UUID | None
    tier: str
    identities: list[IdentityOut]
    balance: BalanceOut
    channels: list[str]
    first_activity_at: datetime | None
    last_activity_at: datetime | None
    position: int | None = None


class BreakdownOut(Out, kw_only=True):
    rule: str
    points: int


class EarnOut(Out, kw_only=True):
    member_id: UUID
    event_id: UUID | None
    points: int
    breakdown: list[BreakdownOut]
    rules_version: int
    available_at: datetime
    expires_at: datetime | None
    position: int
    balance: BalanceOut


class QuoteOut(Out, kw_only=True):
    member_id: UUID
    points: int
    breakdown: list[BreakdownOut]
    rules_version: int
    tier: str


class RedeemOut(Out, kw_only=True):
    member_id: UUID
    redemption_id: UUID
    points: int
    reward_ref: str | None
    order_ref: str | None
    position: int
    balance: BalanceOut


class BalanceAtOut(Out, kw_only=True):
    member_id: UUID
    as_of: datetime
    balance: BalanceOut


class HistoryItemOut(Out, kw_only=True):
    position: int
    event_id: UUID
    stream_version: int
    type: str
    channel: str | None
    points: int | None
    occurred_at: datetime
    recorded_at: datetime


class HistoryOut(Out, kw_only=True):
    member_id: UUID
    events: list[HistoryItemOut]
    next_after: int | None


class ProgramOut(Out, kw_only=True):
    rules_version: int
    rules: Rules
    position: int | None = None


class RulesVersionOut(Out, kw_only=True):
    version: int
    rules: Rules


class ChannelOut(Out, kw_only=True):
    id: str
    name: str
    kind: str


class ApiKeyOut(Out, kw_only=True):
    key_id: UUID
    key: str
    channel: str
    scopes: list[str]
    name: str | None


class ProblemField(Out, kw_only=True):
    field: str
    message: str


class Problem(Out, kw_only=True):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[ProblemField] | None = None
