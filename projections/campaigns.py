"""The `campaign_members` read model: what each campaign (each variant of it) did for each
member, and the per-variant results of a campaign summed from it (SPEC §4, A/B comparison).

A row holds the member's campaign tallies (`Member.campaign_tallies`: earns, bonus points and
revenue per campaign and variant, net of refunds, moved by merges) as JSON. Only members some
campaign applied to get a row (and a merged source, whose tallies went to its target).
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from domain.member import MemberStatus

from .projection import MemberProjection, Touched

_encode = msgspec.json.encode


class VariantResult(msgspec.Struct, frozen=True, kw_only=True):
    """One variant of a campaign (None: a campaign without variants)."""

    variant: str | None
    members: int  # members reached: at least one earn the campaign applied to
    earns: int
    bonus_points: int
    revenue: Decimal


class CampaignMembersProjection(MemberProjection):
    """One row per member some campaign applied to."""

    kind = "campaign_members"
    columns = (
        ("member_id", "uuid"),
        ("campaigns", "jsonb"),
        ("version", "integer"),
        ("position", "bigint"),
        ("updated_at", "timestamptz"),
    )

    def row(self, t: Touched) -> tuple[Any, ...]:
        tallies = [
            {
                "campaign_id": str(tally.campaign_id),
                "variant": tally.variant,
                "earns": tally.earns,
                "points": tally.points,
                "revenue": str(tally.revenue),
            }
            for tally in t.member.campaign_tallies.values()
        ]
        return (t.member.id, _encode(tallies).decode(), t.member.version, t.position, t.recorded_at)

    async def write(
        self, conn: asyncpg.Connection, touched: Mapping[UUID, Touched], *, after: int = 0
    ) -> None:
        # Whole rows (the member's state): writing one again is harmless. Most members never
        # meet a campaign: no row for them.
        await super().write(
            conn,
            {
                sid: t
                for sid, t in touched.items()
                if t.member.campaign_tallies or t.member.status is MemberStatus.MERGED
            },
            after=after,
        )


_RESULTS = """
SELECT t->>'variant' AS variant,
       count(*) FILTER (WHERE (t->>'earns')::bigint > 0) AS members,
       coalesce(sum((t->>'earns')::bigint), 0)::bigint AS earns,
       coalesce(sum((t->>'points')::bigint), 0)::bigint AS bonus_points,
       coalesce(sum((t->>'revenue')::numeric), 0) AS revenue
FROM campaign_members, jsonb_array_elements(campaigns) AS t
WHERE t->>'campaign_id' = $1::text
GROUP BY 1
ORDER BY 1 NULLS FIRST
"""


async def campaign_results(conn: Any, campaign_id: UUID) -> list[VariantResult]:
    """Per variant of the campaign: members reached, earns, bonus points, revenue."""
    rows = await conn.fetch(_RESULTS, str(campaign_id))
    return [
        VariantResult(
            variant=r["variant"],
            members=r["members"],
            earns=r["earns"],
            bonus_points=r["bonus_points"],
            revenue=r["revenue"],
        )
        for r in rows
    ]
