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
