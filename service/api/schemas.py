"""Wire formats of the HTTP API (msgspec Structs; the OpenAPI document is generated from them).

These are not domain types: handlers convert between the two. Money travels as a decimal
string (never a JSON number, so no float ever touches it); points as integers.
"""

from __future__ import annotations

import re
import typing
from datetime import date, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
import msgspec.inspect
from msgspec import Meta

from domain.campaigns import Campaign
from domain.rules import EarnRule, RedemptionRule, Rules, SegmentRules, Tier
from service.store.access import CHANNEL_KINDS, SCOPES
from service.store.audit import SignedCheckpoint

_MONEY = r"^(0|[1-9][0-9]{0,11})(\.[0-9]{1,4})?$"
Money = Annotated[str, Meta(pattern=_MONEY, description='Decimal string, e.g. "128.50"')]
Points = Annotated[int, Meta(gt=0, le=1_000_000_000)]
SignedPoints = Annotated[int, Meta(ge=-1_000_000_000, le=1_000_000_000)]
Currency = Annotated[str, Meta(pattern=r"^[A-Z]{3}$", description="ISO 4217 code")]
_REF = r"^[\x21-\x7e]+$"
Ref = Annotated[str, Meta(min_length=1, max_length=200, pattern=_REF)]
# Free text a person reads: no control characters (C0, DEL, C1), no invisible format characters
# (zero-width, bidirectional overrides and isolates, BOM) that make a value display as another.
_PLAIN = r"^[^\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]*$"
Text = Annotated[str, Meta(min_length=1, max_length=500, pattern=_PLAIN)]
Name = Annotated[str, Meta(min_length=1, max_length=200, pattern=_PLAIN)]
# A BCP 47 language tag, e.g. zh-Hans-CN.
_LOCALE = r"^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*$"
Locale = Annotated[str, Meta(min_length=2, max_length=35, pattern=_LOCALE)]
# What a value failing each pattern is told (msgspec's message would quote the regex).
PATTERN_HINTS = {
    _MONEY: 'must be a decimal string like "128.50"',
    _REF: "must be printable ASCII without spaces",
    _PLAIN: "must not contain control characters or invisible formatting characters",
    _LOCALE: "must be a language tag like zh-Hans-CN",
}
# An Idempotency-Key (SPEC §4: 1-200 printable characters), as a header or a batch item's field.
IDEMPOTENCY_KEY = re.compile(r"[\x20-\x7e]{1,200}")
IdempotencyKey = Annotated[str, Meta(min_length=1, max_length=200, pattern=r"^[\x20-\x7e]+$")]
# A 64-bit position or count in a query: beyond it the database cannot hold the value.
QueryInt = Annotated[int, Meta(ge=0, le=2**63 - 1)]


class Body(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of request bodies: unknown fields are an error, not silently dropped."""


class Out(msgspec.Struct, frozen=True, kw_only=True):
    """Base of response bodies."""


# --- requests -------------------------------------------------------------------------------


class IdentityIn(Body, kw_only=True):
    kind: Annotated[str, Meta(min_length=1, max_length=20)]
    value: Annotated[str, Meta(min_length=1, max_length=320)]


class ProfileIn(Body, kw_only=True):
    name: Name | None = None
    birthday: date | None = None
    locale: Locale | None = None


class EnrolIn(Body, kw_only=True):
    identities: Annotated[list[IdentityIn], Meta(min_length=1, max_length=20)]
    profile: ProfileIn | None = None


class ForgetIn(Body, kw_only=True):
    """A forget says nothing but the member's id (the body may be absent or `{}`)."""


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


class ReversalIn(Body, kw_only=True):
    """A refund (`order_ref`, `amount`: none for what remains of the order) or the undoing of a
    redemption (`redemption_id`, the id its redeem answered with) — one or the other."""

    order_ref: Ref | None = None
    amount: Money | None = None
    redemption_id: UUID | None = None


class HoldIn(Body, kw_only=True):
    points: Points
    ttl_seconds: Annotated[int, Meta(ge=1, le=86_400, description="How long the hold lasts")] = 900
    order_ref: Ref | None = None


class CaptureIn(Body, kw_only=True):
    """`points` none: the whole hold; fewer: the rest is released."""

    points: Points | None = None


class ReleaseIn(Body, kw_only=True):
    """A release says nothing but its hold id (the body may be absent or `{}`)."""


class AdjustmentIn(Body, kw_only=True):
    """A correction of either sign (never zero); below zero only with `allow_negative`."""

    points: SignedPoints
    reason: Text
    allow_negative: bool = False


class TransferIn(Body, kw_only=True):
    to_member_id: UUID
    points: Points


class ChannelIn(Body, kw_only=True):
    id: Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]
    name: Name
    kind: Literal[CHANNEL_KINDS]  # type: ignore[valid-type]


Scope = Literal[SCOPES]  # type: ignore[valid-type]  # the one list, in service.store.access


class ApiKeyIn(Body, kw_only=True):
    channel: Annotated[str, Meta(min_length=1, max_length=64)]
    scopes: Annotated[list[Scope], Meta(min_length=1, max_length=len(SCOPES))]
    name: Name | None = None


def _required(cls: type[msgspec.Struct], *, optional: frozenset[str] = frozenset()) -> type[msgspec.Struct]:
    """`cls` as a request body: the same fields, every one required (but `optional`)."""
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    hints = typing.get_type_hints(cls, include_extras=True)
    fields: list[Any] = []
    for f in info.fields:
        tp = _REQUIRED.get(hints[f.name], hints[f.name])
        if f.name not in optional:
            fields.append((f.name, tp))
        elif f.default_factory is not msgspec.NODEFAULT:
            fields.append((f.name, tp, msgspec.field(default_factory=f.default_factory)))
        else:
            fields.append((f.name, tp, f.default))
    return msgspec.defstruct(
        f"{cls.__name__}In", fields, kw_only=True, forbid_unknown_fields=True, frozen=True, module=__name__
    )


# The rules document of SPEC §3 is the wire format (ADR 0003), but a PUT states the whole of it:
# `{}` must not publish the defaults as a new version. A tier's benefits may be left out.
_REQUIRED: dict[Any, Any] = {}
for _part in (EarnRule, RedemptionRule, SegmentRules):
    _REQUIRED[_part] = _required(_part)
_REQUIRED[Tier] = _required(Tier, optional=frozenset({"benefits"}))
_REQUIRED[list[Tier]] = list[_REQUIRED[Tier]]  # type: ignore[misc]
_REQUIRED[typing.get_type_hints(Rules, include_extras=True)["tiers"]] = Annotated[
    list[_REQUIRED[Tier]], Meta(min_length=1)  # type: ignore[misc]
]
RulesIn = _required(Rules)


def rules_of(body: msgspec.Struct) -> Rules:
    """The domain's rules document from a RulesIn body."""
    return msgspec.convert(msgspec.to_builtins(body), Rules)


# --- responses ------------------------------------------------------------------------------


class ExpiringOut(Out, kw_only=True):
    """The next points to expire, and when."""

    points: int
    at: datetime


class BalanceOut(Out, kw_only=True):
    """`available` is negative when a refund took back points already spent."""

    available: int
    pending: int
    held: int
    lifetime_earned: int
    lifetime_redeemed: int
    expired: int
    qualifying: int
    tier: str
    expiring: ExpiringOut | None = None


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
    # The member's segments (GET of the member view; null in a command's answer).
    segments: list[str] | None = None


class BreakdownOut(Out, kw_only=True, omit_defaults=True):
    """One part of an earn: `base`, `tier` (with the member's `tier`), `award` or `campaign`
    (with its `campaign_id` and the member's `variant`, when the campaign has variants)."""

    rule: str
    points: int
    campaign_id: UUID | None = None
    variant: str | None = None
    tier: str | None = None


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


class ReversalOut(Out, kw_only=True):
    """`points` is negative for a refund (taken back), positive for an undone redemption."""

    member_id: UUID
    event_id: UUID
    points: int
    position: int
    balance: BalanceOut


class HoldOut(Out, kw_only=True):
    member_id: UUID
    hold_id: UUID
    points: int
    expires_at: datetime
    position: int
    balance: BalanceOut


class HoldClosedOut(Out, kw_only=True):
    """A capture (`captured` spent, `released` given back) or a release (`captured` 0)."""

    member_id: UUID
    hold_id: UUID
    captured: int
    released: int
    position: int
    balance: BalanceOut


class AdjustmentOut(Out, kw_only=True):
    member_id: UUID
    event_id: UUID
    points: int
    position: int
    balance: BalanceOut


class TransferOut(Out, kw_only=True):
    """`balance` is the sender's (`member_id`)."""

    member_id: UUID
    to_member_id: UUID
    points: int
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


class ProfileOut(Out, kw_only=True):
    name: str | None
    birthday: date | None
    locale: str | None


class ExportedEventOut(Out, kw_only=True):
    """An event of the member's (or of a member merged into it: `member_id`), with its whole
    payload decrypted (`data`: the event's own fields; a forgotten member's personal ones null)."""

    member_id: UUID
    position: int
    event_id: UUID
    stream_version: int
    type: str
    channel: str | None
    occurred_at: datetime
    recorded_at: datetime
    data: dict[str, Any]


class MemberExportOut(Out, kw_only=True):
    """Everything held about a member, decrypted; a forgotten member's holds no personal data."""

    member_id: UUID
    status: str
    merged_into: UUID | None
    merged_from: list[UUID]
    tier: str
    identities: list[IdentityOut]
    profile: ProfileOut | None
    balance: BalanceOut
    channels: list[str]
    enrolled_at: datetime
    first_activity_at: datetime | None
    last_activity_at: datetime | None
    exported_at: datetime
    events: list[ExportedEventOut]


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


class LotOut(Out, kw_only=True):
    """Points left from one earn: `lot_id` is that earn's stream version; pending until
    `available_at`, gone at `expires_at` (null: never)."""

    lot_id: int
    points: int
    available_at: datetime
    expires_at: datetime | None


class LotsOut(Out, kw_only=True):
    """A member's lots not expired at `as_of`, in the order they are spent (soonest expiry first)."""

    member_id: UUID
    as_of: datetime
    lots: list[LotOut]


class LiveEventOut(Out, kw_only=True):
    """One committed event as the live stream sends it (the `data` of an SSE message whose `id`
    is its position): what the member's history shows of it and whose it is (`member_id` null:
    the program's). Never personal data."""

    position: int
    event_id: UUID
    member_id: UUID | None
    stream_version: int
    type: str
    channel: str | None
    points: int | None
    occurred_at: datetime
    recorded_at: datetime


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


# --- campaigns --------------------------------------------------------------------------------


class CampaignOut(Out, kw_only=True):
    """A campaign: its document, and `status` now (`scheduled`, `live`, `finished`, `ended`)."""

    campaign_id: UUID
    status: str
    started_at: datetime
    ended_at: datetime | None
    campaign: Campaign
    position: int | None = None


class CampaignListOut(Out, kw_only=True):
    campaigns: list[CampaignOut]


class MemberCampaignOut(Out, kw_only=True):
    """A campaign as this member gets it: their variant and its reward, what is left of the
    cap (none: no cap); the channels, items and spend it needs are the purchase's."""

    campaign_id: UUID
    name: str
    starts_at: datetime
    ends_at: datetime
    channels: list[str]
    min_amount: str | None
    categories: list[str]
    skus: list[str]
    variant: str | None
    multiplier: str | None
    bonus_points: int | None
    cap_per_member: int | None
    remaining: int | None


class MemberCampaignsOut(Out, kw_only=True):
    member_id: UUID
    at: datetime
    campaigns: list[MemberCampaignOut]


class VariantResultOut(Out, kw_only=True):
    """One variant's results (`variant` none: the campaign has no variants)."""

    variant: str | None
    members: int
    earns: int
    bonus_points: int
    revenue: Annotated[str, Meta(description="Decimal string, in the program's currency")]


class CampaignResultsOut(Out, kw_only=True):
    campaign_id: UUID
    name: str
    variants: list[VariantResultOut]


# --- audit (service/api/audit.py) -----------------------------------------------------------


class AuditBreakOut(Out, kw_only=True):
    """Where the log first stops matching its chains."""

    position: int
    stream: UUID | None
    version: int | None
    reason: Literal[
        "content_changed",
        "stream_version",
        "position_gap",
        "global_chain",
        "checkpoint",
        "checkpoint_signature",
        "truncated",
    ]
    detail: str


class AuditVerifyOut(Out, kw_only=True):
    ok: bool
    after: int  # checked from the position after this one
    position: int  # ... through this one
    global_hash: str  # the global hash at `position`, recomputed (hex)
    events_checked: int
    checkpoints_checked: int
    break_: AuditBreakOut | None = msgspec.field(default=None, name="break")


class AuditCheckpointsOut(Out, kw_only=True):
    checkpoints: list[SignedCheckpoint]
    next_after: int | None


class AuditPublicKeyOut(Out, kw_only=True):
    algorithm: str
    public_key: str  # the raw 32-byte key, base64
    public_key_pem: str  # the same as SubjectPublicKeyInfo PEM
