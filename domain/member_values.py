"""Value types of the member aggregate: status, profile, purchase lines, results, state."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum

from msgspec import Struct

from domain.rules import BreakdownPart


class MemberStatus(StrEnum):
    """Lifecycle of a member; only active members accept commands."""

    ACTIVE = "active"
    MERGED = "merged"
    FORGOTTEN = "forgotten"


class Profile(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Optional personal details (personal data: encrypted in the store)."""

    name: str | None = None
    birthday: date | None = None
    locale: str | None = None


class PurchaseItem(Struct, frozen=True, kw_only=True):
    """One line of a purchase (campaigns match on sku and category)."""

    sku: str
    category: str | None = None
    amount: Decimal
    quantity: int


class Balance(Struct, frozen=True, kw_only=True):
    """A member's points at one instant."""

    available: int
    pending: int
    held: int
    lifetime_earned: int
    lifetime_redeemed: int
    expired: int
    qualifying: int
    tier: str


class EarnResult(Struct, frozen=True, kw_only=True):
    """What an earn recorded."""

    points: int
    breakdown: list[BreakdownPart]
    rules_version: int
    available_at: datetime
    expires_at: datetime | None
    lot_id: int


class RedeemResult(Struct, frozen=True, kw_only=True):
    """What a redemption recorded; `redemption_id` is the event's stream version."""

    redemption_id: int
    points: int


class OrderRecord(Struct, frozen=True, kw_only=True):
    """A purchase earned on this member: what a later (partial) refund needs."""

    amount: Decimal
    currency: str
    points: int
    lot_id: int
    occurred_at: datetime


class Accrual(Struct, frozen=True, kw_only=True):
    """Points earned at a business time; summed over the tier window as qualifying."""

    occurred_at: datetime
    points: int
