"""The loyalty ledger's domain: pure, deterministic, no I/O (time and ids come in)."""

from __future__ import annotations

from domain.campaigns import Campaign, CampaignRecord, CampaignTally, CampaignVariant
from domain.identities import Identity
from domain.lots import Lot, LotDraw
from domain.member_events import Absorbed
from domain.member_values import Accrual, Expiring, Hold, OrderRecord, Profile, PurchaseItem, Redemption
from domain.rules import (
    BreakdownPart,
    EarnRule,
    RedemptionRule,
    Rules,
    SegmentRules,
    Tier,
)

# Every Struct type found in events or aggregate state; the store registers a
# transcoding for each (nested ones included, in case they ever appear on their own).
PERSISTED_STRUCTS: tuple[type, ...] = (
    Identity,
    Profile,
    PurchaseItem,
    BreakdownPart,
    Lot,
    LotDraw,
    OrderRecord,
    Accrual,
    Rules,
    EarnRule,
    Tier,
    RedemptionRule,
    SegmentRules,
    Absorbed,
    Hold,
    Redemption,
    Expiring,
    Campaign,
    CampaignVariant,
    CampaignRecord,
    CampaignTally,
)

__all__ = ["PERSISTED_STRUCTS"]
