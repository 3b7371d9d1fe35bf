"""What the use cases are asked to do: one command per state change, plus the queries' inputs.

The HTTP edge (service/api) turns each request into one of these; tests and other entry points
build them directly. Values are the ledger's own types (Decimal money, aware datetimes, raw
identities that the use case normalises); who asks and when is the CommandContext beside them.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from uuid import UUID

from msgspec import Struct

from domain.campaigns import Campaign
from domain.identities import Identity
from domain.member_values import Profile, PurchaseItem
from domain.rules import Rules


class Command(Struct, frozen=True, kw_only=True):
    """Base of the commands."""


class Enrol(Command):
    """Enrol a new member with these identities (as given: normalised by the use case)."""

    identities: list[Identity]
    profile: Profile | None = None


class LinkIdentity(Command):
    member_id: UUID
    identity: Identity


class UnlinkIdentity(Command):
    member_id: UUID
    identity: Identity


class Merge(Command):
    """The target absorbs the source (a duplicate of the same person)."""

    target_id: UUID
    source_id: UUID


class Forget(Command):
    """Forget a member at their request (crypto-shredding of their personal data)."""

    member_id: UUID


class EarnPurchase(Command):
    """Earn for a purchase (once per order, program-wide); `occurred_at` None: now."""

    member_id: UUID
    order_ref: str
    amount: Decimal
    currency: str
    items: list[PurchaseItem] = []
    occurred_at: datetime | None = None


class Award(Command):
    """Award points outside a purchase."""

    member_id: UUID
    points: int
    reason: str


class Redeem(Command):
    member_id: UUID
    points: int
    reward_ref: str | None = None
    order_ref: str | None = None


class PublishRules(Command):
    rules: Rules


class QuotePurchase(Struct, frozen=True, kw_only=True):
    """What a purchase would earn a member now (a query: nothing is written)."""

    member_id: UUID
    amount: Decimal
    currency: str
    items: list[PurchaseItem] = []
    occurred_at: datetime | None = None


class ReverseEarn(Command):
    """Refund a purchase: whole (`amount` None: what remains of it) or in part."""

    member_id: UUID
    order_ref: str
    amount: Decimal | None = None


class ReverseRedemption(Command):
    """Undo a redemption (`redemption_id`: the id its redeem answered with)."""

    member_id: UUID
    redemption_id: UUID


class PlaceHold(Command):
    """Reserve points at a checkout for `ttl_seconds` (the hold id is assigned by the use case)."""

    member_id: UUID
    points: int
    ttl_seconds: int = 900
    order_ref: str | None = None


class CaptureHold(Command):
    """Spend a hold, whole (`points` None) or in part (the rest is released)."""

    hold_id: UUID
    points: int | None = None


class ReleaseHold(Command):
    hold_id: UUID


class Adjust(Command):
    """Correct a balance by `points` (either sign); below zero only with `allow_negative`."""

    member_id: UUID
    points: int
    reason: str
    allow_negative: bool = False


class Transfer(Command):
    """Move points from `member_id` to `to_member_id` (both streams, one atomic append)."""

    member_id: UUID
    to_member_id: UUID
    points: int


class Settle(Command):
    """Record what time alone has made due for a member (asked by the service's clock)."""

    member_id: UUID


class StartCampaign(Command):
    """Add a campaign to the program (its id is that of its campaign_started event)."""

    campaign: Campaign


class EndCampaign(Command):
    campaign_id: UUID
