"""The `channel_days` read model: what members did through each channel, per day (channel ROI).

Rows are (UTC day, channel, member) with counts and sums (migration 0012), added to by each
event once: the projection adds only the events after its own checkpoint, in the transaction
that advances it. A purchase counts on its business day (`occurred_at`, so a POS catching up
offline counts on the day it sold), everything else on the day it was recorded. Points expired
count under the channel that recorded the expiry (the service's own, `system`). A redemption
undone takes its points back from the channel that undid it; a captured hold is a redemption.

Each batch also moves the per-day totals (`channel_totals`, with the members active that day)
and the members' returns through each channel (`channel_returns`), in the same statement: a
range's sums read a row per day and channel, and its active members are counted exactly from a
few thousand kept counts (channel_reach.py, ADR 26), never from a row per member.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import asyncpg

from . import channel_reach as reach
from .projection import MemberProjection, Touched

# The additive columns, in the order of `_Day`'s fields.
_SUMS = (
    "enrolments",
    "purchases",
    "revenue",
    "refunded",
    "redemptions",
    "points_earned",
    "points_redeemed",
    "points_expired",
    "points_reversed",
)
_TYPES = ("integer", "integer", "numeric", "numeric", "integer", "bigint", "bigint", "bigint", "bigint")


@dataclass(slots=True)
class _Day:
    enrolments: int = 0
    purchases: int = 0
    revenue: Decimal = Decimal(0)
    refunded: Decimal = Decimal(0)
    redemptions: int = 0
    points_earned: int = 0
    points_redeemed: int = 0
    points_expired: int = 0
    points_reversed: int = 0


def _day(at: datetime) -> date:
    return at.astimezone(UTC).date()


def add_event(days: dict[tuple[date, str, UUID], _Day], member_id: UUID, event_type: str, event: Any) -> None:
    """Add one event of a member to its (day, channel, member) row."""
    channel = event.channel
    if event_type == "points_earned":
        row = days.setdefault((_day(event.occurred_at), channel, member_id), _Day())
        row.points_earned += event.points
        if event.source == "purchase" and event.amount is not None:
            row.purchases += 1
            row.revenue += event.amount
        return
    row = days.setdefault((_day(event.at), channel, member_id), _Day())
    if event_type == "member_enrolled":
        row.enrolments += 1
    elif event_type == "points_redeemed":
        row.redemptions += 1
        row.points_redeemed += event.points
    elif event_type == "hold_captured":
        if event.points:
            row.redemptions += 1
            row.points_redeemed += event.points
    elif event_type == "redemption_reversed":
        row.points_redeemed -= event.points
    elif event_type == "earn_reversed":
        row.points_reversed += event.points
        row.refunded += event.amount
    elif event_type == "points_expired":
        row.points_expired += event.points


class ChannelsProjection(MemberProjection):
    """Adds each event to its (day, channel, member) row; see the module."""

    kind = "channel_days"
    columns = (
        ("day", "date"),
        ("channel", "text"),
        ("member_id", "uuid"),
        *zip(_SUMS, _TYPES, strict=True),
    )

    def bind(self, table: str) -> None:
        super().bind(table)
        names = ", ".join(c for c, _ in self.columns)
        casts = ", ".join(f"${i}::{t}[]" for i, (_, t) in enumerate(self.columns, start=1))
        adds = ", ".join(f"{c} = {table}.{c} + EXCLUDED.{c}" for c in _SUMS)
        self._add = (
            f"INSERT INTO {table} ({names}) SELECT * FROM unnest({casts})"
            f" ON CONFLICT (day, channel, member_id) DO UPDATE SET {adds}"
        )
        # The live table's rows, the day's totals and the returns (channel_reach.py) in one
        # statement: one round trip a batch.
        totals = ", ".join(f"{c} = channel_totals.{c} + EXCLUDED.{c}" for c in _SUMS)
        self._add_with_totals = (
            f"WITH r ({names}) AS (SELECT * FROM unnest({casts})),"
            f" added AS (INSERT INTO {table} ({names}) SELECT * FROM r"
            f" ON CONFLICT (day, channel, member_id) DO UPDATE SET {adds}"
            " RETURNING day, channel, member_id, purchases + redemptions AS activity),"
            # Active for the first time: the counts only grow, so its activity is all the batch's.
            " fresh AS (SELECT r.day, r.channel, r.member_id"
            " FROM r JOIN added USING (day, channel, member_id)"
            " WHERE r.purchases + r.redemptions > 0 AND added.activity = r.purchases + r.redemptions),"
            f" totals AS (INSERT INTO channel_totals (day, channel, {', '.join(_SUMS)}, active_members)"
            f" SELECT day, channel, {', '.join(_SUMS)}, coalesce(n.members, 0) FROM"
            f" (SELECT day, channel, {', '.join(f'sum({c}) AS {c}' for c in _SUMS)}"
            " FROM r GROUP BY 1, 2) AS s"
            " LEFT JOIN (SELECT day, channel, count(*) AS members FROM fresh GROUP BY 1, 2) AS n"
            " USING (day, channel) ORDER BY 1, 2"
            f" ON CONFLICT (day, channel) DO UPDATE SET {totals},"
            " active_members = channel_totals.active_members + EXCLUDED.active_members),"
            f"{reach.returns_ctes(table)} {reach.UPSERT_RETURNS}"
        )

    async def write(
        self, conn: asyncpg.Connection, touched: Mapping[UUID, Touched], *, after: int = 0
    ) -> None:
        days: dict[tuple[date, str, UUID], _Day] = {}
        for member_id, t in touched.items():
            for e in t.events:
                if e.position > after:
                    add_event(days, member_id, e.event_type, e.event)
        if not days:
            return
        # In key order: parallel rebuild workers never wait on each other's rows in a cycle.
        rows = [(*key, *(getattr(d, s) for s in _SUMS)) for key, d in sorted(days.items())]
        # A rebuild's table: its totals and returns are computed at its swap.
        statement = self._add_with_totals if self.table == self.kind else self._add
        await conn.execute(statement, *(list(column) for column in zip(*rows, strict=True)))

    async def before_swap(self, conn: asyncpg.Connection, live_table: str) -> None:
        """The totals and returns of the rebuilt table replace the live ones'."""
        await conn.execute("DELETE FROM channel_totals")
        await conn.execute(
            f"INSERT INTO channel_totals (day, channel, {', '.join(_SUMS)}, active_members)"
            f" SELECT day, channel, {', '.join(f'sum({c})' for c in _SUMS)},"
            f" count(*) FILTER (WHERE {reach.ACTIVE}) FROM {self.table} GROUP BY 1, 2"
        )
        for statement in reach.recompute(self.table):
            await conn.execute(statement)

    def row(self, t: Touched) -> tuple[Any, ...]:
        raise NotImplementedError("rows are added to per event: see write()")


@dataclass(frozen=True, slots=True)
class ChannelFigures:
    """One channel's figures over a range of days."""

    channel: str
    active_members: int  # members with a purchase or a redemption through it
    enrolments: int
    purchases: int
    revenue: Decimal
    refunded: Decimal
    redemptions: int
    points_earned: int
    points_redeemed: int
    points_expired: int
    points_reversed: int


async def channel_figures(
    conn: asyncpg.Connection, since: date | None, until: date | None
) -> list[ChannelFigures]:
    """Per channel, the figures of the days from `since` to `until` (both included; None: open).

    Read in one snapshot (a read-only repeatable-read transaction on `conn`): the active members
    are member-days less returns (channel_reach.py), two reads that must see the same batches.
    """
    # Only the bounds given: `$1 IS NULL OR day >= $1` would keep the planner off the indexes.
    bounds = [
        (f"day {op} ${i}", v)
        for i, (op, v) in enumerate((b for b in ((">=", since), ("<=", until)) if b[1] is not None), start=1)
    ]
    within = " AND ".join(["true", *(c for c, _ in bounds)])
    args = [v for _, v in bounds]
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        rows = await conn.fetch(
            f"SELECT channel, {', '.join(f'sum({c}) AS {c}' for c in (*_SUMS, 'active_members'))},"
            f" min(day) AS first, max(day) AS last FROM channel_totals WHERE {within}"
            " GROUP BY channel ORDER BY channel",
            *args,
        )
        if not rows:
            return []
        # The days recorded within the range hold all its active days (an open end: the first
        # or last day recorded through any channel).
        first, last = min(r["first"] for r in rows), max(r["last"] for r in rows)
        returns = await reach.returns_within(conn, first, last)
    return [
        ChannelFigures(
            channel=r["channel"],
            active_members=int(r["active_members"]) - returns.get(r["channel"], 0),
            enrolments=int(r["enrolments"]),
            purchases=int(r["purchases"]),
            revenue=r["revenue"],
            refunded=r["refunded"],
            redemptions=int(r["redemptions"]),
            points_earned=int(r["points_earned"]),
            points_redeemed=int(r["points_redeemed"]),
            points_expired=int(r["points_expired"]),
            points_reversed=int(r["points_reversed"]),
        )
        for r in rows
    ]
