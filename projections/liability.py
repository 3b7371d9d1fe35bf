"""The `liability` read model: what the program owes, as points that add up at any instant.

Each member's outstanding points are kept as items (migration 0012): its lots (points left,
available_at, expires_at), its open holds (points, expiry), its debt, its recorded expiries and
its lifetime earned. A member's balance at an instant is a function of these (the rules of
`Member.balance`), so the totals at `now` are sums: a lot turning available or lapsing, a hold
running out, need no event and no re-projection. Merges, transfers, expiries and reversals are
counted right because the items are whatever the aggregate holds after each event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from .projection import MemberProjection, Touched

HORIZONS = (30, 90, 365)  # days ahead: points expiring within each


class LiabilityProjection(MemberProjection):
    """Per member, its items; each batch replaces the touched members' items."""

    kind = "liability"
    columns = (
        ("member_id", "uuid"),
        ("kind", "text"),
        ("item", "integer"),
        ("points", "bigint"),
        ("available_at", "timestamptz"),
        ("expires_at", "timestamptz"),
    )

    def bind(self, table: str) -> None:
        super().bind(table)
        names = ", ".join(c for c, _ in self.columns)
        casts = ", ".join(f"${i}::{t}[]" for i, (_, t) in enumerate(self.columns, start=1))
        self._insert = f"INSERT INTO {table} ({names}) SELECT * FROM unnest({casts})"

    async def write(
        self, conn: asyncpg.Connection, touched: Mapping[UUID, Touched], *, after: int = 0
    ) -> None:
        if not touched:
            return
        rows = [row for t in touched.values() for row in self.items(t)]
        await conn.execute(f"DELETE FROM {self.table} WHERE member_id = ANY($1::uuid[])", list(touched))
        if rows:
            await conn.execute(self._insert, *(list(column) for column in zip(*rows, strict=True)))

    def items(self, t: Touched) -> list[tuple[Any, ...]]:
        """The member's items as rows."""
        m = t.member
        rows: list[tuple[Any, ...]] = [
            (m.id, "lot", i, lot.points, lot.available_at, lot.expires_at)
            for i, lot in enumerate(m.lots)
            if lot.points
        ]
        rows += [(m.id, "hold", i, h.points, None, h.expires_at) for i, h in enumerate(m.holds.values())]
        for kind, points in (("debt", m.debt), ("expired", m.expired), ("earned", m.lifetime_earned)):
            if points:
                rows.append((m.id, kind, 0, points, None, None))
        return rows

    def row(self, t: Touched) -> tuple[Any, ...]:
        raise NotImplementedError("a member has several rows: see items()")


@dataclass(frozen=True, slots=True)
class LiabilityTotals:
    """Outstanding points of every member at `at` (each as `Member.balance` counts them)."""

    at: datetime
    available: int
    pending: int
    held: int
    expiring: dict[int, int]  # days ahead (HORIZONS) -> points expiring by then
    expired: int  # breakage so far: recorded expiries and lots past their expiry
    earned: int  # lifetime earned (net of refunds), for the breakage rate


async def liability_totals(conn: Any, at: datetime) -> LiabilityTotals:
    """The totals at `at` (connection or pool).

    available = spendable - held - debt per member, summed; a hold counts only until its
    expiry and only up to what its member can spend (as the balance does), which is worked
    out for the few members with open holds.
    """
    live = "kind = 'lot' AND (expires_at IS NULL OR expires_at > $1)"
    horizons = ", ".join(
        f"coalesce(sum(points) FILTER (WHERE {live} AND expires_at <= $1 + interval '{d} days'), 0)"
        f" AS within_{d}"
        for d in HORIZONS
    )
    row = await conn.fetchrow(
        "SELECT"
        f" coalesce(sum(points) FILTER (WHERE {live} AND available_at <= $1), 0) AS spendable,"
        f" coalesce(sum(points) FILTER (WHERE {live} AND available_at > $1), 0) AS pending,"
        " coalesce(sum(points) FILTER (WHERE kind = 'lot' AND expires_at <= $1), 0) AS lapsed,"
        " coalesce(sum(points) FILTER (WHERE kind = 'debt'), 0) AS debt,"
        " coalesce(sum(points) FILTER (WHERE kind = 'expired'), 0) AS expired,"
        " coalesce(sum(points) FILTER (WHERE kind = 'earned'), 0) AS earned,"
        f" {horizons}"
        " FROM liability",
        at,
    )
    held = await conn.fetchval(
        "SELECT coalesce(sum(least(h.points, s.points)), 0) FROM"
        " (SELECT member_id, sum(points) AS points FROM liability"
        "  WHERE kind = 'hold' AND expires_at > $1 GROUP BY member_id) h"
        " CROSS JOIN LATERAL (SELECT coalesce(sum(points), 0) AS points FROM liability l"
        "  WHERE l.member_id = h.member_id AND l.kind = 'lot' AND l.available_at <= $1"
        "  AND (l.expires_at IS NULL OR l.expires_at > $1)) s",
        at,
    )
    return LiabilityTotals(
        at=at,
        available=int(row["spendable"]) - int(held) - int(row["debt"]),
        pending=int(row["pending"]),
        held=int(held),
        expiring={d: int(row[f"within_{d}"]) for d in HORIZONS},
        expired=int(row["expired"]) + int(row["lapsed"]),
        earned=int(row["earned"]),
    )
