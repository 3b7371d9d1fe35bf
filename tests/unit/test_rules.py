"""The rules document, its validation, and how a purchase turns into points."""

from __future__ import annotations

import math
import random
from decimal import Decimal
from fractions import Fraction

import msgspec
import pytest
from msgspec.structs import replace

from domain.errors import InvalidRules
from domain.rules import (
    DEFAULT_RULES,
    BreakdownPart,
    EarnRule,
    Rules,
    SegmentRules,
    Tier,
    quote_purchase,
    tier_for,
    tier_named,
    validate_rules,
)

SPEC_EXAMPLE = b"""
{"currency": "CNY",
 "earn": {"points_per_unit": "1", "min_amount": "0.00", "pending_days": 0, "expiry_months": 12},
 "tiers": [{"name": "member", "threshold": 0,    "multiplier": "1",    "benefits": {}},
           {"name": "silver", "threshold": 1000, "multiplier": "1.25", "benefits": {"discount": "5%"}},
           {"name": "gold",   "threshold": 5000, "multiplier": "1.5",  "benefits": {"discount": "10%"}}],
 "tier_window_days": 365, "downgrade_grace_days": 30,
 "redemption": {"min_points": 1, "point_value": "0.01"},
 "segments": {"new_days": 30, "at_risk_days": 60, "dormant_days": 180,
              "high_value_lifetime_points": 10000}}
"""


def test_the_program_starts_with_the_spec_example() -> None:
    assert msgspec.json.decode(SPEC_EXAMPLE, type=Rules) == Rules() == DEFAULT_RULES
    validate_rules(DEFAULT_RULES)


def test_a_rules_document_with_an_unknown_field_is_refused() -> None:
    with pytest.raises(msgspec.ValidationError, match="earn_rate"):
        msgspec.json.decode(b'{"earn_rate": "2"}', type=Rules)


def test_validation_names_every_broken_field() -> None:
    broken = Rules(
        currency="XYZ",
        earn=EarnRule(points_per_unit=Decimal(0), min_amount=Decimal("-1"), expiry_months=999),
        tiers=[
            Tier(name="basic", threshold=10),
            Tier(name="plus", threshold=10, multiplier=Decimal("0.5")),
            Tier(name="basic", threshold=20),
        ],
        segments=SegmentRules(at_risk_days=200, dormant_days=100),
    )

    with pytest.raises(InvalidRules) as refused:
        validate_rules(broken)

    errors = refused.value.extra["errors"]
    assert isinstance(errors, list)
    assert {e["field"] for e in errors} == {
        "currency",
        "earn.points_per_unit",
        "earn.min_amount",
        "earn.expiry_months",
        "tiers[0].threshold",
        "tiers[1].threshold",
        "tiers[1].multiplier",
        "tiers[2].name",
        "segments.dormant_days",
    }
    assert all(e["message"] for e in errors)
    assert refused.value.code == "invalid_rules"


def test_rules_need_at_least_one_tier() -> None:
    with pytest.raises(InvalidRules) as refused:
        validate_rules(replace(DEFAULT_RULES, tiers=[]))
    assert refused.value.extra["errors"] == [{"field": "tiers", "message": "at least one tier is needed"}]


def test_the_minimum_amount_respects_the_currency_decimals() -> None:
    yen = replace(DEFAULT_RULES, currency="JPY", earn=EarnRule(min_amount=Decimal("100.5")))
    with pytest.raises(InvalidRules) as refused:
        validate_rules(yen)
    assert refused.value.extra["errors"] == [
        {"field": "earn.min_amount", "message": "has more decimal places than JPY allows"}
    ]
    validate_rules(replace(yen, earn=EarnRule(min_amount=Decimal("100.00"))))


def test_points_round_down_at_each_step() -> None:
    quote = quote_purchase(DEFAULT_RULES, 3, "gold", Decimal("19.99"))
    # base floor(19.99) = 19; gold 1.5: floor(19 x 0.5) = 9.
    assert quote.breakdown == [BreakdownPart("base", 19), BreakdownPart("tier", 9, tier="gold")]
    assert (quote.points, quote.rules_version, quote.tier) == (28, 3, "gold")


def test_a_tier_part_recorded_as_tier_colon_name_reads_back_as_a_tier_part() -> None:
    # Earns recorded before the tier had its own field: their stored bytes stay as they are.
    legacy = msgspec.json.decode(b'{"rule": "tier:silver", "points": 24}', type=BreakdownPart)
    assert legacy == BreakdownPart("tier", 24, tier="silver")
    assert msgspec.json.encode(legacy) == b'{"rule":"tier","points":24,"tier":"silver"}'


def test_a_tier_part_is_listed_only_when_it_adds_points() -> None:
    quote = quote_purchase(DEFAULT_RULES, 1, "silver", Decimal("3.99"))
    # floor(3 x 0.25) = 0: nothing to show for the tier.
    assert quote.breakdown == [BreakdownPart("base", 3)]


def test_below_the_minimum_purchase_earns_nothing() -> None:
    rules = replace(DEFAULT_RULES, earn=EarnRule(min_amount=Decimal("50.00")))
    assert quote_purchase(rules, 1, "gold", Decimal("49.99")).breakdown == [BreakdownPart("base", 0)]
    assert quote_purchase(rules, 1, "gold", Decimal("50.00")).points == 75


def test_breakdown_parts_always_sum_to_the_points() -> None:
    rng = random.Random(0)
    rates = ["1", "0.5", "2", "1.5", "0.01", "3.33"]
    multipliers = ["1", "1.25", "1.5", "2", "1.1", "3.75"]
    for _ in range(2000):
        rate = Decimal(rng.choice(rates))
        multiplier = Decimal(rng.choice(multipliers))
        rules = replace(
            DEFAULT_RULES,
            earn=EarnRule(points_per_unit=rate),
            tiers=[Tier(name="only", threshold=0, multiplier=multiplier)],
        )
        amount = Decimal(rng.randrange(0, 10**9)).scaleb(-2)

        quote = quote_purchase(rules, 1, "only", amount)

        assert quote.points == sum(part.points for part in quote.breakdown)
        assert all(part.points >= 0 for part in quote.breakdown)
        # Checked against exact rational arithmetic, not Decimal.
        base = math.floor(Fraction(amount) * Fraction(rate))
        bonus = math.floor(base * (Fraction(multiplier) - 1))
        assert quote.breakdown[0] == BreakdownPart("base", base)
        assert quote.points == base + bonus


def test_tier_for_picks_the_highest_tier_reached() -> None:
    assert [tier_for(DEFAULT_RULES, q).name for q in (0, 999, 1000, 4999, 5000, 10**9)] == [
        "member",
        "member",
        "silver",
        "silver",
        "gold",
        "gold",
    ]


def test_a_tier_that_no_longer_exists_falls_back_to_the_lowest() -> None:
    assert tier_named(DEFAULT_RULES, "gold").multiplier == Decimal("1.5")
    assert tier_named(DEFAULT_RULES, "platinum").name == "member"
    assert quote_purchase(DEFAULT_RULES, 1, "platinum", Decimal(10)).tier == "member"
