"""The `liability` read model: what the program owes, as points that add up at any instant.

Each member's outstanding points are kept as items (migration 0012): its lots (points left,
available_at, expires_at), its open holds (points, expiry), its debt, its recorded expiries and
its lifetime earned. A member's balance at an instant is a function of these (the rules of
`Member.balance`), so the totals at `now` are sums: a lot turning available or lapsing, a hold
running out, need no event and no re-projection. Merges, transfers, expiries and reversals are
counted right because the items are whatever the aggregate holds after each event.

The sums are kept too (`liability_sums`: by kind and, for lots, by the hours of their instants),
moved in the transaction that changes a member's items, so a read adds up a few thousand rows
and reads one by one only the lots whose instants fall in the hours around the instant asked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from .projection import MemberProjection, Touched

HORIZONS = (30, 90, 365)  # days ahead: points expiring within each
_NEVER = datetime.max.replace(tzinfo=UTC)  # stands for 'infinity' (asyncpg maps them both ways)
_NONE = datetime.min.replace(tzinfo=UTC)  # stands for '-infinity'
_HOUR = timedelta(hours=1)


def _hour(at: datetime | None, default: datetime) -> datetime:
    return default if at is None else at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _sum_key(
    kind: str, available_at: datetime | None, expires_at: datetime | None
) -> tuple[str, datetime, datetime]:
    if kind != "lot":
        return kind, _NONE, _NONE
    return kind, _hour(available_at, _NONE), _hour(expires_at, _NEVER)


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
        # The live table's items and the sums they move in one statement (one round trip).
        n = len(self.columns)
        self._insert_with_sums = (
            f"WITH items AS ({self._insert})"
            " INSERT INTO liability_sums (kind, available_hour, expires_hour, points)"
            f" SELECT * FROM unnest(${n + 1}::text[], ${n + 2}::timestamptz[], ${n + 3}::timestamptz[],"
            f" ${n + 4}::bigint[])"
            " ON CONFLICT (kind, available_hour, expires_hour)"
            " DO UPDATE SET points = liability_sums.points + EXCLUDED.points"
        )

    async def write(
        self, conn: asyncpg.Connection, touched: Mapping[UUID, Touched], *, after: int = 0
    ) -> None:
        if not touched:
            return
        rows = [row for t in touched.values() for row in self.items(t)]
        old = await conn.fetch(
            f"DELETE FROM {self.table} WHERE member_id = ANY($1::uuid[])"
            " RETURNING kind, points, available_at, expires_at",
            list(touched),
        )
        columns = [list(column) for column in zip(*rows, strict=True)] if rows else [[] for _ in self.columns]
        if self.table != self.kind:  # a rebuild's table: its sums are computed at its swap
            if rows:
                await conn.execute(self._insert, *columns)
            return
        sums: dict[tuple[str, datetime, datetime], int] = {}
        for r in old:
            if r["kind"] != "hold":
                key = _sum_key(r["kind"], r["available_at"], r["expires_at"])
                sums[key] = sums.get(key, 0) - r["points"]
        for _, kind, _, points, available_at, expires_at in rows:
            if kind != "hold":
                key = _sum_key(kind, available_at, expires_at)
                sums[key] = sums.get(key, 0) + points
        moved = {k: n for k, n in sums.items() if n}
        if rows or moved:
            # In key order: never two transactions waiting on each other's rows in a cycle.
            keys = sorted(moved)
            await conn.execute(
                self._insert_with_sums,
                *columns,
                [k[0] for k in keys],
                [k[1] for k in keys],
                [k[2] for k in keys],
                [moved[k] for k in keys],
            )

    async def before_swap(self, conn: asyncpg.Connection, live_table: str) -> None:
        """The sums of the rebuilt table replace the live ones'."""
        await conn.execute("DELETE FROM liability_sums")
        await conn.execute(
            "INSERT INTO liability_sums (kind, available_hour, expires_hour, points)"
            " SELECT kind,"
            "  CASE WHEN kind = 'lot' THEN date_trunc('hour', available_at, 'UTC') ELSE '-infinity' END,"
            "  CASE WHEN kind <> 'lot' THEN '-infinity'"
            "   ELSE coalesce(date_trunc('hour', expires_at, 'UTC'), 'infinity') END,"
            f"  sum(points) FROM {self.table} WHERE kind <> 'hold' GROUP BY 1, 2, 3"
        )

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
    out for the few members with open holds. Lots are added up from `liability_sums` but for
    those whose hours are the hour of `at` or of a horizon's end (their instants decide on
    which side they fall): those are read one by one.
    """
    now_hour = _hour(at, _NONE)
    ends = [_hour(at + timedelta(days=d), _NONE) for d in HORIZONS]
    boundary = [now_hour, *ends]
    within = ", ".join(
        f"coalesce(sum(points) FILTER (WHERE kind = 'lot' AND expires_hour > $1 AND expires_hour < ${i}), 0)"
        f" AS within_{d}"
        for i, d in enumerate(HORIZONS, start=3)
    )
    summed = await conn.fetchrow(
        "SELECT"
        " coalesce(sum(points) FILTER (WHERE kind = 'lot' AND available_hour < $1 AND expires_hour > $1), 0)"
        " AS spendable,"
        " coalesce(sum(points) FILTER (WHERE kind = 'lot' AND available_hour > $1 AND expires_hour > $1), 0)"
        " AS pending,"
        " coalesce(sum(points) FILTER (WHERE kind = 'lot' AND expires_hour < $1), 0) AS lapsed,"
        " coalesce(sum(points) FILTER (WHERE kind = 'debt'), 0) AS debt,"
        " coalesce(sum(points) FILTER (WHERE kind = 'expired'), 0) AS expired,"
        " coalesce(sum(points) FILTER (WHERE kind = 'earned'), 0) AS earned,"
        f" {within}"
        " FROM liability_sums"
        " WHERE kind <> 'lot' OR (available_hour <> $1 AND NOT expires_hour = ANY($2::timestamptz[]))",
        now_hour,
        boundary,
        *ends,
    )
    live = "(expires_at IS NULL OR expires_at > $1)"
    horizons = ", ".join(
        f"coalesce(sum(points) FILTER (WHERE {live} AND expires_at <= $1 + interval '{d} days'), 0)"
        f" AS within_{d}"
        for d in HORIZONS
    )
    near = await conn.fetchrow(
        "SELECT"
        f" coalesce(sum(points) FILTER (WHERE {live} AND available_at <= $1), 0) AS spendable,"
        f" coalesce(sum(points) FILTER (WHERE {live} AND available_at > $1), 0) AS pending,"
        " coalesce(sum(points) FILTER (WHERE expires_at <= $1), 0) AS lapsed,"
        f" {horizons}"
        " FROM liability WHERE kind = 'lot' AND ("
        "  (available_at >= $2 AND available_at < $2 + interval '1 hour')"
        "  OR (expires_at >= $2 AND expires_at < $2 + interval '1 hour')"
        + "".join(
            f" OR (expires_at >= ${i} AND expires_at < ${i} + interval '1 hour')"
            for i in range(3, 3 + len(ends))
        )
        + ")",
        at,
        now_hour,
        *ends,
    )
    close = dict(near)
    row = {k: int(v) + int(close.get(k, 0)) for k, v in dict(summed).items()}
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
