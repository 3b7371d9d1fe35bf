"""Stored schema of the member's events (bound into `Member`, which records them).

Schema evolution: a new field gets a default and goes last; a field never changes type.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from uuid import UUID

from msgspec import Struct

from domain.campaigns import CampaignTally
from domain.events import LedgerAggregate
from domain.identities import Identity
from domain.lots import Lot, LotDraw
from domain.member_values import Accrual, OrderRecord, Profile, PurchaseItem, Redemption
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
    # The version of the program stream (rules and campaigns) the earn was decided on; the
    # append checks it is still the program's version at commit (0: recorded before it was kept).
    program_version: int = 0


class PointsRedeemed(LedgerAggregate.Event):
    """Points were spent, drawn from lots oldest-expiry first. `redemption_id` is the id of
    this event (None on redemptions recorded before it was kept: they cannot be undone)."""

    points: int
    draws: list[LotDraw]
    reward_ref: str | None
    order_ref: str | None
    at: datetime
    channel: str
    redemption_id: UUID | None = None


class TierChanged(LedgerAggregate.Event):
    """Qualifying points moved the member to another tier (`reason`: upgrade or downgrade)."""

    from_tier: str
    to_tier: str
    qualifying: int
    at: datetime
    channel: str
    reason: str = "upgrade"


class EarnReversed(LedgerAggregate.Event):
    """A purchase was refunded (`amount` of it): its points are taken back in proportion, from
    its own lot while it holds them; the rest (already spent) is owed (`debt`)."""

    order_ref: str
    amount: Decimal
    points: int
    draws: list[LotDraw]
    debt: int
    at: datetime
    channel: str


class RedemptionReversed(LedgerAggregate.Event):
    """A redemption was undone: its points are back in the lots they came from, with their
    original expiry."""

    redemption_id: UUID
    points: int
    restored: list[LotDraw]
    at: datetime
    channel: str


class PointsHeld(LedgerAggregate.Event):
    """Points were reserved at a checkout until `expires_at` (they leave `available`)."""

    hold_id: UUID
    points: int
    expires_at: datetime
    order_ref: str | None
    at: datetime
    channel: str


class HoldCaptured(LedgerAggregate.Event):
    """A hold was captured: `points` of it spent (drawn from lots oldest-expiry first), the
    rest (`released`) available again."""

    hold_id: UUID
    points: int
    draws: list[LotDraw]
    released: int
    debt: int
    at: datetime
    channel: str


class HoldReleased(LedgerAggregate.Event):
    """A hold ended without being spent (`reason`: released, or expired by the service)."""

    hold_id: UUID
    points: int
    reason: str
    at: datetime
    channel: str


class PointsAdjusted(LedgerAggregate.Event):
    """A correction: positive points form a new lot; negative ones are drawn oldest-expiry
    first, and what the lots do not hold is owed (`debt`, only when it was allowed)."""

    points: int
    reason: str
    lot: Lot | None
    draws: list[LotDraw]
    debt: int
    at: datetime
    channel: str


class PointsTransferred(LedgerAggregate.Event):
    """Points moved between two members, recorded on both streams in one atomic append: the
    sender's lots drawn (`draws`), the receiver's new lots with the same dates (`lots`)."""

    from_member_id: UUID
    to_member_id: UUID
    points: int
    draws: list[LotDraw]
    lots: list[Lot]
    at: datetime
    channel: str


class PointsExpired(LedgerAggregate.Event):
    """Lots reached their expiry date and were taken out of the balance (by the service)."""

    points: int
    draws: list[LotDraw]
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
    adjusted: int = 0
    transferred: int = 0
    redemptions: dict[str, Redemption] = {}
    campaign_tallies: list[CampaignTally] = []


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


class MemberForgotten(LedgerAggregate.Event):
    """The member's personal data was erased at their request: their data key is destroyed
    (and those of the members merged into them, `merged_from`), their identities are free
    again; the account is closed. Amounts and the rest of the history stay."""

    merged_from: list[UUID]
    at: datetime
    channel: str
