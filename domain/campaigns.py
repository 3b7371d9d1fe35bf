"""Campaigns: the campaign document and its validation, A/B variant assignment, and the bonus
parts a purchase earns from the campaigns live in the program (SPEC §3)."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Collection, Iterable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Annotated
from uuid import UUID

from msgspec import Meta, Struct

from domain.errors import InvalidCampaign
from domain.member_values import PurchaseItem
from domain.money import CURRENCY_MINOR_UNITS, MAX_AMOUNT, decimal_places
from domain.rules import MAX_MULTIPLIER, BreakdownPart, floor_points

MAX_BONUS_POINTS = 1_000_000
MAX_WEIGHT = 1_000_000
MAX_VARIANTS = 20

_Label = Annotated[str, Meta(min_length=1, max_length=200)]
_Labels = Annotated[list[_Label], Meta(max_length=200)]
_DecimalText = Meta(description="A decimal number, written as a string.", examples=["2"])


class CampaignVariant(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One arm of an A/B test: its share of members (`weight`) and its own reward, if any
    (otherwise the campaign's). A control arm gives `bonus_points: 0` or `multiplier: 1`."""

    name: Annotated[str, Meta(min_length=1, max_length=50)]
    weight: int
    multiplier: Annotated[Decimal, _DecimalText] | None = None
    bonus_points: int | None = None


class Campaign(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A promotion: while its window is open, matching purchases earn its bonus on top of base
    and tier. Empty `channels`/`tiers` match every one; `categories`/`skus` match purchase
    items, and the campaign then counts only the matching items' amounts."""

    name: Annotated[str, Meta(min_length=1, max_length=200)]
    starts_at: datetime
    ends_at: datetime
    channels: _Labels = []
    min_amount: Annotated[Decimal, _DecimalText] | None = None
    tiers: _Labels = []
    categories: _Labels = []
    skus: _Labels = []
    multiplier: Annotated[Decimal, _DecimalText] | None = None
    bonus_points: int | None = None
    cap_per_member: int | None = None
    variants: Annotated[list[CampaignVariant], Meta(max_length=MAX_VARIANTS)] = []


class CampaignRecord(Struct, frozen=True, kw_only=True):
    """A campaign as the program holds it: started (recorded) at `started_at`, ended early by
    an operator at `ended_at` (None: runs to the end of its window)."""

    campaign_id: UUID
    campaign: Campaign
    started_at: datetime
    ended_at: datetime | None = None

    def live_at(self, when: datetime) -> bool:
        """Whether a purchase at `when` falls in the window (an ended campaign is never live)."""
        c = self.campaign
        return self.ended_at is None and c.starts_at <= when < c.ends_at

    def status(self, now: datetime) -> str:
        """`scheduled`, `live`, `finished` (its window closed) or `ended` (ended early)."""
        if self.ended_at is not None:
            return "ended"
        if now < self.campaign.starts_at:
            return "scheduled"
        return "live" if now < self.campaign.ends_at else "finished"


class CampaignTally(Struct, frozen=True, kw_only=True):
    """What one campaign (one variant of it) did for one member: the earns it applied to, the
    bonus points it paid (net of refunds: what counts against `cap_per_member`) and the revenue
    of those purchases (net of refunds)."""

    campaign_id: UUID
    variant: str | None
    earns: int = 0
    points: int = 0
    revenue: Decimal = Decimal(0)


def validate_campaign(
    campaign: Campaign, *, now: datetime, currency: str, tiers: Collection[str], channels: Collection[str]
) -> None:
    """Raise InvalidCampaign listing every problem, each with its field path."""
    errors: list[dict[str, str]] = []

    def problem(path: str, message: str) -> None:
        errors.append({"field": path, "message": message})

    if not campaign.name.strip():
        problem("name", "must not be blank")
    aware = True
    for name in ("starts_at", "ends_at"):
        if getattr(campaign, name).tzinfo is None:
            problem(name, "must include a time zone offset")
            aware = False
    if aware:
        if campaign.ends_at <= campaign.starts_at:
            problem("ends_at", "must be after starts_at")
        elif campaign.ends_at <= now:
            problem("ends_at", "is in the past: the campaign would never apply")
    for i, channel in enumerate(campaign.channels):
        if channel not in channels:
            problem(f"channels[{i}]", f"no channel {channel!r}")
    for i, tier in enumerate(campaign.tiers):
        if tier not in tiers:
            problem(f"tiers[{i}]", f"the rules have no tier {tier!r}")
    if campaign.min_amount is not None:
        m = campaign.min_amount
        if not m.is_finite() or m < 0 or m >= MAX_AMOUNT:
            problem("min_amount", "must be a finite amount >= 0")
        elif decimal_places(m) > CURRENCY_MINOR_UNITS.get(currency, 4):
            problem("min_amount", f"has more decimal places than {currency} allows")
    if campaign.cap_per_member is not None and not 1 <= campaign.cap_per_member <= 10**9:
        problem("cap_per_member", "must be between 1 and 1000000000")
    _check_reward("", campaign.multiplier, campaign.bonus_points, minimum_bonus=1, problem=problem)
    own_reward = campaign.multiplier is not None or campaign.bonus_points is not None
    seen: set[str] = set()
    for i, variant in enumerate(campaign.variants):
        path = f"variants[{i}]."
        if not variant.name.strip():
            problem(f"{path}name", "must not be blank")
        elif variant.name in seen:
            problem(f"{path}name", f"duplicate variant name {variant.name!r}")
        seen.add(variant.name)
        if not 1 <= variant.weight <= MAX_WEIGHT:
            problem(f"{path}weight", f"must be a positive whole number, at most {MAX_WEIGHT}")
        _check_reward(path, variant.multiplier, variant.bonus_points, minimum_bonus=0, problem=problem)
        if not own_reward and variant.multiplier is None and variant.bonus_points is None:
            problem(f"{path}multiplier", "give multiplier or bonus_points (here or on the campaign)")
    if not own_reward and not campaign.variants:
        problem("multiplier", "give multiplier or bonus_points")
    if errors:
        raise InvalidCampaign(f"the campaign has {len(errors)} problem(s)", errors=errors)


def _check_reward(
    path: str,
    multiplier: Decimal | None,
    bonus: int | None,
    *,
    minimum_bonus: int,
    problem: Callable[[str, str], None],
) -> None:
    if multiplier is not None and bonus is not None:
        problem(f"{path}bonus_points", "give multiplier or bonus_points, not both")
    if multiplier is not None and (not multiplier.is_finite() or not 1 <= multiplier <= MAX_MULTIPLIER):
        problem(f"{path}multiplier", f"must be >= 1 and <= {MAX_MULTIPLIER}")
    if bonus is not None and not minimum_bonus <= bonus <= MAX_BONUS_POINTS:
        problem(f"{path}bonus_points", f"must be between {minimum_bonus} and {MAX_BONUS_POINTS}")


def _bonus_of(base: int, multiplier: Decimal) -> int:
    """floor(base x (multiplier - 1)), in integers (the same value, without Decimal rounding)."""
    numerator, denominator = _extra(multiplier)
    return base * numerator // denominator


@functools.lru_cache(maxsize=1024)
def _extra(multiplier: Decimal) -> tuple[int, int]:
    return (multiplier - 1).as_integer_ratio()


def variant_of(campaign_id: UUID, member_id: UUID, variants: list[CampaignVariant]) -> CampaignVariant | None:
    """The member's variant: a keyed hash (BLAKE2b keyed by the campaign id) of the member id,
    placed on the variants' cumulative weights. A pure function of the two ids (ADR 13)."""
    if not variants:
        return None
    digest = hashlib.blake2b(member_id.bytes, key=campaign_id.bytes, digest_size=8).digest()
    point = int.from_bytes(digest, "big") % sum(v.weight for v in variants)
    for variant in variants:
        if point < variant.weight:
            return variant
        point -= variant.weight
    raise AssertionError("unreachable: point is below the total weight")


class Purchase(Struct, frozen=True, kw_only=True):
    """What the campaigns of one purchase are matched against."""

    member_id: UUID
    tier: str
    channel: str
    amount: Decimal
    items: list[PurchaseItem]
    occurred_at: datetime


def campaign_parts(
    offers: Iterable[CampaignRecord],
    purchase: Purchase,
    *,
    points_per_unit: Decimal,
    base: int,
    paid: Mapping[UUID, int],
) -> list[BreakdownPart]:
    """One part per campaign the purchase matches, in the order they were started (0 points
    for a control variant or a reached cap). `paid`: bonus points each campaign has already
    paid the member (against `cap_per_member`)."""
    parts: list[BreakdownPart] = []
    for offer in offers:
        c = offer.campaign
        if not offer.live_at(purchase.occurred_at):
            continue
        if (c.channels and purchase.channel not in c.channels) or (c.tiers and purchase.tier not in c.tiers):
            continue
        amount, campaign_base = purchase.amount, base
        if c.categories or c.skus:
            matching = [
                i
                for i in purchase.items
                if i.sku in c.skus or (i.category is not None and i.category in c.categories)
            ]
            if not matching:
                continue
            # Only the matching lines count (never more than the purchase itself).
            amount = min(sum((i.amount for i in matching), Decimal(0)), purchase.amount)
            campaign_base = floor_points(amount * points_per_unit)
        if c.min_amount is not None and amount < c.min_amount:
            continue
        variant = variant_of(offer.campaign_id, purchase.member_id, c.variants)
        multiplier, bonus = c.multiplier, c.bonus_points
        if variant is not None and (variant.multiplier is not None or variant.bonus_points is not None):
            multiplier, bonus = variant.multiplier, variant.bonus_points
        points = _bonus_of(campaign_base, multiplier) if multiplier is not None else bonus or 0
        if c.cap_per_member is not None:
            points = min(points, max(0, c.cap_per_member - paid.get(offer.campaign_id, 0)))
        parts.append(
            BreakdownPart(
                "campaign",
                max(0, points),
                campaign_id=offer.campaign_id,
                variant=None if variant is None else variant.name,
            )
        )
    return parts


class Offer(Struct, frozen=True, kw_only=True):
    """A campaign a member is eligible for now, as that member gets it: their variant, the
    reward it gives them, and what is left of the cap (None: no cap)."""

    record: CampaignRecord
    variant: str | None
    multiplier: Decimal | None
    bonus_points: int | None
    remaining: int | None


def offers_for(
    offers: Iterable[CampaignRecord], *, member_id: UUID, tier: str, now: datetime, paid: Mapping[UUID, int]
) -> list[Offer]:
    """The campaigns live at `now` that a member of `tier` can earn (channels, items and spend
    are the purchase's: they are shown with the campaign), with the member's variant of each."""
    found: list[Offer] = []
    for record in offers:
        c = record.campaign
        if not record.live_at(now) or (c.tiers and tier not in c.tiers):
            continue
        variant = variant_of(record.campaign_id, member_id, c.variants)
        multiplier, bonus = c.multiplier, c.bonus_points
        if variant is not None and (variant.multiplier is not None or variant.bonus_points is not None):
            multiplier, bonus = variant.multiplier, variant.bonus_points
        remaining = None
        if c.cap_per_member is not None:
            remaining = max(0, c.cap_per_member - paid.get(record.campaign_id, 0))
        found.append(
            Offer(
                record=record,
                variant=None if variant is None else variant.name,
                multiplier=multiplier,
                bonus_points=bonus,
                remaining=remaining,
            )
        )
    return found
