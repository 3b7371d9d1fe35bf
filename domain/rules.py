"""The program's rules document, its validation, and the pure earn computation."""

from __future__ import annotations

from collections.abc import Callable
from decimal import ROUND_FLOOR, Decimal
from typing import Annotated
from uuid import UUID

from msgspec import Meta, Struct, field
from msgspec.structs import force_setattr

from domain.errors import InvalidRules
from domain.money import CURRENCY_MINOR_UNITS, MAX_AMOUNT, decimal_places

# Sanity caps: far above any real program, low enough that a typo is caught.
MAX_POINTS_PER_UNIT = Decimal(1000)
MAX_MULTIPLIER = Decimal(100)
MAX_DAYS = 3660
MAX_EXPIRY_MONTHS = 120
MAX_PENDING_DAYS = 365

# Records one problem: (field path, message).
_Problem = Callable[[str, str], None]

_DecimalText = Meta(description="A decimal number, written as a string.", examples=["1.25"])


class EarnRule(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base earn rate and the life of the lot each earn creates."""

    points_per_unit: Annotated[Decimal, _DecimalText] = Decimal(1)
    min_amount: Annotated[Decimal, _DecimalText] = Decimal("0.00")
    pending_days: Annotated[int, Meta(ge=0, le=MAX_PENDING_DAYS)] = 0
    # 0 means the points never expire.
    expiry_months: Annotated[int, Meta(ge=0, le=MAX_EXPIRY_MONTHS)] = 12


class Tier(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A tier: reached when qualifying points reach `threshold`."""

    name: Annotated[str, Meta(min_length=1, max_length=50)]
    threshold: Annotated[int, Meta(ge=0)]
    multiplier: Annotated[Decimal, _DecimalText] = Decimal(1)
    benefits: dict[str, str] = {}


class RedemptionRule(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Smallest redemption, and a point's money value (for liability)."""

    min_points: Annotated[int, Meta(ge=1)] = 1
    point_value: Annotated[Decimal, _DecimalText] = Decimal("0.01")


class SegmentRules(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Thresholds of the member segments."""

    new_days: Annotated[int, Meta(ge=1, le=MAX_DAYS)] = 30
    at_risk_days: Annotated[int, Meta(ge=1, le=MAX_DAYS)] = 60
    dormant_days: Annotated[int, Meta(ge=1, le=MAX_DAYS)] = 180
    high_value_lifetime_points: Annotated[int, Meta(ge=0)] = 10000


def _default_tiers() -> list[Tier]:
    return [
        Tier(name="member", threshold=0, multiplier=Decimal(1), benefits={}),
        Tier(name="silver", threshold=1000, multiplier=Decimal("1.25"), benefits={"discount": "5%"}),
        Tier(name="gold", threshold=5000, multiplier=Decimal("1.5"), benefits={"discount": "10%"}),
    ]


class Rules(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The rules document; `Rules()` is the program's starting rules (SPEC §3)."""

    currency: Annotated[str, Meta(pattern="^[A-Z]{3}$", examples=["CNY"])] = "CNY"
    earn: EarnRule = field(default_factory=EarnRule)
    tiers: Annotated[list[Tier], Meta(min_length=1)] = field(default_factory=_default_tiers)
    tier_window_days: Annotated[int, Meta(ge=1, le=MAX_DAYS)] = 365
    downgrade_grace_days: Annotated[int, Meta(ge=0, le=MAX_DAYS)] = 30
    redemption: RedemptionRule = field(default_factory=RedemptionRule)
    segments: SegmentRules = field(default_factory=SegmentRules)


DEFAULT_RULES: Rules = Rules()


class BreakdownPart(Struct, frozen=True, omit_defaults=True):
    """One named part of an earn; the parts of a breakdown sum to its points. A `tier` part names
    the member's tier; a `campaign` part its campaign and the member's variant of it (none
    without variants)."""

    rule: str
    points: int
    campaign_id: UUID | None = None
    variant: str | None = None
    tier: str | None = None

    def __post_init__(self) -> None:
        # Earns recorded before the tier had a field of its own say `tier:<name>` (SPEC §3 names
        # the rule `tier`): read back as the part they are, without rewriting stored events.
        if self.rule.startswith("tier:"):
            force_setattr(self, "tier", self.rule[len("tier:") :])
            force_setattr(self, "rule", "tier")


class EarnQuote(Struct, frozen=True, kw_only=True):
    """The points a purchase earns and why."""

    points: int
    breakdown: list[BreakdownPart]
    rules_version: int
    tier: str


def validate_rules(rules: Rules) -> None:
    """Raise InvalidRules listing every problem, each with its field path."""
    errors: list[dict[str, str]] = []

    def problem(path: str, message: str) -> None:
        errors.append({"field": path, "message": message})

    if rules.currency not in CURRENCY_MINOR_UNITS:
        problem("currency", f"{rules.currency!r} is not an ISO 4217 currency code")
    _check_earn(rules, problem)
    _check_tiers(rules.tiers, problem)
    _check_range(problem, "tier_window_days", rules.tier_window_days, 1, MAX_DAYS)
    _check_range(problem, "downgrade_grace_days", rules.downgrade_grace_days, 0, MAX_DAYS)
    if rules.redemption.min_points < 1:
        problem("redemption.min_points", "must be at least 1")
    value = rules.redemption.point_value
    if not value.is_finite() or value < 0 or value >= MAX_AMOUNT:
        problem("redemption.point_value", "must be a finite number >= 0")
    seg = rules.segments
    for name in ("new_days", "at_risk_days", "dormant_days"):
        _check_range(problem, f"segments.{name}", getattr(seg, name), 1, MAX_DAYS)
    if seg.dormant_days <= seg.at_risk_days:
        problem("segments.dormant_days", "must be greater than segments.at_risk_days")
    if seg.high_value_lifetime_points < 0:
        problem("segments.high_value_lifetime_points", "must be >= 0")
    if errors:
        raise InvalidRules(f"rules have {len(errors)} problem(s)", errors=errors)


def _check_earn(rules: Rules, problem: _Problem) -> None:
    earn = rules.earn
    rate = earn.points_per_unit
    if not rate.is_finite() or rate <= 0 or rate > MAX_POINTS_PER_UNIT:
        problem("earn.points_per_unit", f"must be > 0 and <= {MAX_POINTS_PER_UNIT}")
    minimum = earn.min_amount
    if not minimum.is_finite() or minimum < 0 or minimum >= MAX_AMOUNT:
        problem("earn.min_amount", "must be a finite amount >= 0")
    elif decimal_places(minimum) > CURRENCY_MINOR_UNITS.get(rules.currency, 4):
        problem("earn.min_amount", f"has more decimal places than {rules.currency} allows")
    _check_range(problem, "earn.pending_days", earn.pending_days, 0, MAX_PENDING_DAYS)
    _check_range(problem, "earn.expiry_months", earn.expiry_months, 0, MAX_EXPIRY_MONTHS)


def _check_tiers(tiers: list[Tier], problem: _Problem) -> None:
    if not tiers:
        problem("tiers", "at least one tier is needed")
        return
    if tiers[0].threshold != 0:
        problem("tiers[0].threshold", "the first tier must have threshold 0")
    seen: set[str] = set()
    for i, tier in enumerate(tiers):
        if not tier.name.strip():
            problem(f"tiers[{i}].name", "must not be blank")
        elif tier.name in seen:
            problem(f"tiers[{i}].name", f"duplicate tier name {tier.name!r}")
        seen.add(tier.name)
        if i > 0 and tier.threshold <= tiers[i - 1].threshold:
            problem(f"tiers[{i}].threshold", "thresholds must be strictly increasing")
        m = tier.multiplier
        if not m.is_finite() or m < 1 or m > MAX_MULTIPLIER:
            problem(f"tiers[{i}].multiplier", f"must be >= 1 and <= {MAX_MULTIPLIER}")


def _check_range(problem: _Problem, path: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        problem(path, f"must be between {low} and {high}")


def tier_for(rules: Rules, qualifying: int) -> Tier:
    """The highest tier whose threshold is at most `qualifying`."""
    reached = [t for t in rules.tiers if t.threshold <= qualifying]
    return max(reached, key=lambda t: t.threshold) if reached else _lowest(rules)


def tier_named(rules: Rules, name: str) -> Tier:
    """The tier called `name`, or the lowest tier when the rules no longer have it."""
    return next((t for t in rules.tiers if t.name == name), None) or _lowest(rules)


def _lowest(rules: Rules) -> Tier:
    return min(rules.tiers, key=lambda t: t.threshold)


def floor_points(value: Decimal) -> int:
    """Points are whole: every computed part is rounded down."""
    return int(value.to_integral_value(rounding=ROUND_FLOOR))


def quote_purchase(rules: Rules, rules_version: int, tier: str, amount: Decimal) -> EarnQuote:
    """Points for a purchase of `amount` by a member in `tier` (rounding down each part)."""
    current = tier_named(rules, tier)
    if amount < rules.earn.min_amount:
        parts = [BreakdownPart("base", 0)]
    else:
        base = floor_points(amount * rules.earn.points_per_unit)
        parts = [BreakdownPart("base", base)]
        tier_bonus = floor_points(base * (current.multiplier - 1))
        if tier_bonus > 0:
            parts.append(BreakdownPart("tier", tier_bonus, tier=current.name))
    return EarnQuote(
        points=sum(p.points for p in parts),
        breakdown=parts,
        rules_version=rules_version,
        tier=current.name,
    )
