"""Value types of the member aggregate: status, profile, purchase lines, results, state."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from uuid import UUID

from msgspec import Struct

from domain.lots import LotDraw
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


class Expiring(Struct, frozen=True, kw_only=True):
    """The next points to expire, and when."""

    points: int
    at: datetime


class Balance(Struct, frozen=True, kw_only=True):
    """A member's points at one instant. `available` is negative when a reversal took back
    points already spent (shown, not hidden)."""

    available: int
    pending: int
    held: int
    lifetime_earned: int
    lifetime_redeemed: int
    expired: int
    qualifying: int
    tier: str
    expiring: Expiring | None = None


class EarnResult(Struct, frozen=True, kw_only=True):
    """What an earn recorded."""

    points: int
    breakdown: list[BreakdownPart]
    rules_version: int
    available_at: datetime
    expires_at: datetime | None
    lot_id: int


class RedeemResult(Struct, frozen=True, kw_only=True):
    """What a redemption recorded; `redemption_id` is the id of its event."""

    redemption_id: UUID
    points: int


class OrderRecord(Struct, frozen=True, kw_only=True):
    """A purchase earned on this member: what a later (partial) refund needs, and how much of
    it has been refunded so far (and the points taken back for that)."""

    amount: Decimal
    currency: str
    points: int
    lot_id: int
    occurred_at: datetime
    refunded: Decimal = Decimal(0)
    reversed_points: int = 0
    # The campaign parts of its earn ("<campaign id>/<variant>" -> points): a refund takes them back in
    # proportion from the campaigns' tallies too (so a cap counts what was kept).
    campaigns: dict[str, int] = {}


class Hold(Struct, frozen=True, kw_only=True):
    """Points reserved at a checkout until captured, released, or `expires_at`."""

    points: int
    expires_at: datetime
    order_ref: str | None = None


class Redemption(Struct, frozen=True, kw_only=True):
    """A redemption, kept so that it can be undone (the lots it drew, with their dates)."""

    points: int
    draws: list[LotDraw]
    reversed: bool = False


class Accrual(Struct, frozen=True, kw_only=True):
    """Points earned at a business time; summed over the tier window as qualifying."""

    occurred_at: datetime
    points: int
