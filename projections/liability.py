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

from domain.member import Member

from .projection import MemberProjection, Touched

HORIZONS = (30, 90, 365)  # days ahead: points expiring within each
_NEVER = datetime.max.replace(tzinfo=UTC)  # stands for 'infinity' (asyncpg maps them both ways)
_NONE = datetime.min.replace(tzinfo=UTC)  # stands for '-infinity'
_HOUR = timedelta(hours=1)
_Key = tuple[str, int]  # (kind, item)
_Item = tuple[int, datetime | None, datetime | None]  # points, available_at, expires_at


def _hour(at: datetime | None, default: datetime) -> datetime:
    return default if at is None else at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _sum_key(
    kind: str, available_at: datetime | None, expires_at: datetime | None
) -> tuple[str, datetime, datetime]:
    if kind != "lot":
        return kind, _NONE, _NONE
    return kind, _hour(available_at, _NONE), _hour(expires_at, _NEVER)


class LiabilityProjection(MemberProjection):
    """Per member, its items; each batch writes those of the touched members that changed."""

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
        self._statements: dict[tuple[bool, bool], str] = {}
        # Per member (LRU): the stream version of the items last written, and those items. A
        # member's items are a function of its state at a version, so they are what the table
        # holds while the member's next event follows that version (whoever wrote them; a batch
        # rolled back after writing leaves this ahead, which that check catches): a batch
        # writes only what differs. Otherwise they are read back (ADR 22).
        self._written: dict[UUID, tuple[int, dict[_Key, _Item]]] = {}

    def _statement(self, *, gone: bool, sums: bool) -> str:
        """A batch's one statement (one round trip): the items gone (if any), those new or
        changed, and (`sums`) the sums they move."""
        found = self._statements.get((gone, sums))
        if found is not None:
            return found
        table, names = self.table, ", ".join(c for c, _ in self.columns)
        parts, n = [], 0
        if gone:
            parts.append(
                f"gone AS (DELETE FROM {table} l"
                " USING unnest($1::uuid[], $2::text[], $3::integer[]) AS g (member_id, kind, item)"
                " WHERE l.member_id = g.member_id AND l.kind = g.kind AND l.item = g.item)"
            )
            n = 3
        casts = ", ".join(f"${i}::{t}[]" for i, (_, t) in enumerate(self.columns, start=n + 1))
        statement = (
            f"INSERT INTO {table} ({names}) SELECT * FROM unnest({casts})"
            " ON CONFLICT (member_id, kind, item) DO UPDATE SET points = EXCLUDED.points,"
            " available_at = EXCLUDED.available_at, expires_at = EXCLUDED.expires_at"
        )
        n += len(self.columns)
        if sums:
            parts.append(f"changed AS ({statement})")
            statement = (
                "INSERT INTO liability_sums (kind, available_hour, expires_hour, points)"
                f" SELECT * FROM unnest(${n + 1}::text[], ${n + 2}::timestamptz[], ${n + 3}::timestamptz[],"
                f" ${n + 4}::bigint[])"
                " ON CONFLICT (kind, available_hour, expires_hour)"
                " DO UPDATE SET points = liability_sums.points + EXCLUDED.points"
            )
        statement = (f"WITH {', '.join(parts)} " if parts else "") + statement
        self._statements[(gone, sums)] = statement
        return statement

    def reset(self) -> None:
        super().reset()
        self._written.clear()

    async def write(
        self, conn: asyncpg.Connection, touched: Mapping[UUID, Touched], *, after: int = 0
    ) -> None:
        if not touched:
            return
        written = self._written
        olds: dict[UUID, dict[_Key, _Item]] = {}
        unknown: list[UUID] = []
        for member_id, t in touched.items():
            # The table holds the member's items as of its last event at or before `after`.
            version = next((e.stream_version - 1 for e in t.events if e.position > after), t.member.version)
            kept = written.get(member_id)
            if kept is not None and kept[0] == version:
                olds[member_id] = kept[1]
            elif version == 0:
                olds[member_id] = {}
            else:
                unknown.append(member_id)
        if unknown:
            for member_id in unknown:
                olds[member_id] = {}
            for r in await conn.fetch(
                f"SELECT member_id, kind, item, points, available_at, expires_at FROM {self.table}"
                " WHERE member_id = ANY($1::uuid[])",
                unknown,
            ):
                olds[r[0]][(r[1], r[2])] = (r[3], r[4], r[5])
        gone: list[tuple[UUID, str, int]] = []
        rows: list[tuple[Any, ...]] = []
        sums: dict[tuple[str, datetime, datetime], int] = {}
        for member_id, t in touched.items():
            old, new = olds[member_id], self.member_items(t.member)
            for key, (points, available_at, expires_at) in old.items():
                if new.get(key) != (points, available_at, expires_at):
                    if key not in new:
                        gone.append((member_id, *key))
                    if key[0] != "hold":
                        moved = _sum_key(key[0], available_at, expires_at)
                        sums[moved] = sums.get(moved, 0) - points
            for key, item in new.items():
                if old.get(key) != item:
                    rows.append((member_id, *key, *item))
                    if key[0] != "hold":
                        moved = _sum_key(key[0], item[1], item[2])
                        sums[moved] = sums.get(moved, 0) + item[0]
            written.pop(member_id, None)  # to the end: the dict's order is the LRU order
            written[member_id] = (t.member.version, new)
        while len(written) > self.cache_size:
            del written[next(iter(written))]
        moved_sums = {k: n for k, n in sums.items() if n}
        if not gone and not rows and not moved_sums:
            return
        # In key order: never two transactions waiting on each other's rows in a cycle.
        gone.sort()
        rows.sort(key=lambda r: (r[0], r[1], r[2]))
        args = [list(c) for c in zip(*gone, strict=True)] if gone else []
        args += [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in self.columns]
        # A rebuild's table: its sums are computed at its swap.
        with_sums = bool(moved_sums) and self.table == self.kind
        if with_sums:
            keys = sorted(moved_sums)
            args += [[k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]]
            args.append([moved_sums[k] for k in keys])
        await conn.execute(self._statement(gone=bool(gone), sums=with_sums), *args)

    @staticmethod
    def member_items(m: Member) -> dict[_Key, _Item]:
        """The member's items by (kind, item): a lot is numbered by its lot id (a lot keeps
        its row while other lots come and go), a hold by its place among the open holds."""
        items: dict[_Key, _Item] = {}
        lots = 0
        for lot in m.lots:
            if lot.points:
                items["lot", lot.lot_id] = (lot.points, lot.available_at, lot.expires_at)
                lots += 1
        if len(items) != lots:  # two lots with one id (never seen): numbered by place rather than fail
            live = [lot for lot in m.lots if lot.points]
            items = {("lot", i): (lot.points, lot.available_at, lot.expires_at) for i, lot in enumerate(live)}
        for i, h in enumerate(m.holds.values()):
            items[("hold", i)] = (h.points, None, h.expires_at)
        for kind, points in (("debt", m.debt), ("expired", m.expired), ("earned", m.lifetime_earned)):
            if points:
                items[(kind, 0)] = (points, None, None)
        return items

    def row(self, t: Touched) -> tuple[Any, ...]:
        raise NotImplementedError("a member has several rows: see member_items()")


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


async def liability_totals(conn: asyncpg.Connection, at: datetime) -> LiabilityTotals:
    """The totals at `at`, read in one snapshot (a read-only repeatable-read transaction on
    `conn`): a projection batch committing between its three reads cannot mix two states.

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
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        summed = await conn.fetchrow(
            "SELECT"
            " coalesce(sum(points) FILTER (WHERE kind = 'lot' AND available_hour < $1"
            " AND expires_hour > $1), 0) AS spendable,"
            " coalesce(sum(points) FILTER (WHERE kind = 'lot' AND available_hour > $1"
            " AND expires_hour > $1), 0) AS pending,"
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
