"""Stored schema of the member's events (bound into `Member`, which records them).

Schema evolution: a new field gets a default and goes last; a field never changes type.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from uuid import UUID

from msgspec import Struct

from domain.events import LedgerAggregate
from domain.identities import Identity
from domain.lots import Lot, LotDraw
from domain.member_values import Accrual, OrderRecord, Profile, PurchaseItem
from domain.rules import BreakdownPart


class MemberEnrolled(LedgerAggregate.Created):
    """A member joined through a channel."""

    personal_fields = ("identities", "profile")
    identities: list[Identity]
    profile: Profile | None
    tier: str
    at: datetime
    channel: str


class IdentityLinked(LedgerAggregate.Event):
    """Another identity now leads to this member."""

    personal_fields = ("identity",)
    identity: Identity
    at: datetime
    channel: str


class PointsEarned(LedgerAggregate.Event):
    """Points were earned by a purchase (`source="purchase"`) or awarded; they form one lot."""

    source: str
    order_ref: str | None
    amount: Decimal | None
    currency: str | None
    items: list[PurchaseItem]
    points: int
    breakdown: list[BreakdownPart]
    rules_version: int
    tier: str
    available_at: datetime
    expires_at: datetime | None
    occurred_at: datetime
    reason: str | None
    at: datetime
    channel: str


class PointsRedeemed(LedgerAggregate.Event):
    """Points were spent, drawn from lots oldest-expiry first."""

    points: int
    draws: list[LotDraw]
    reward_ref: str | None
    order_ref: str | None
    at: datetime
    channel: str


class TierChanged(LedgerAggregate.Event):
    """Qualifying points moved the member to another tier."""

    from_tier: str
    to_tier: str
    qualifying: int
    at: datetime
    channel: str


class IdentityUnlinked(LedgerAggregate.Event):
    """An identity no longer leads to this member."""

    personal_fields = ("identity",)
    identity: Identity
    at: datetime
    channel: str


class Absorbed(Struct, frozen=True, kw_only=True):
    """What a merge moves from the source member to the target (lots renumbered)."""

    lots: list[Lot]
    last_lot_id: int
    accruals: list[Accrual]
    orders: dict[str, OrderRecord]
    lifetime_earned: int
    lifetime_redeemed: int
    expired: int
    debt: int
    channels: list[str]
    first_activity_at: datetime
    last_activity_at: datetime


class MembersMerged(LedgerAggregate.Event):
    """Two members became one: recorded on both streams, in one atomic append. On the
    target it carries what was absorbed; on the source (`absorbed` None) it retires it."""

    personal_fields = ("identities",)
    source_member_id: UUID
    target_member_id: UUID
    identities: list[Identity]
    absorbed: Absorbed | None
    at: datetime
    channel: str
