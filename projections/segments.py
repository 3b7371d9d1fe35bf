"""The `segments` read model: each member's segments, kept current as events come and time passes.

A member's segments at an instant are a function of a few facts of its aggregate (status,
enrolment, last activity, lifetime earned, channels used) and the rules' `segments` thresholds
(`segments_at`). Only active members are in any segment. The time-based ones (`new`, `active`,
`at_risk`, `dormant`) change with no event when an instant passes (`next_change`): the clock
re-evaluates the rows whose `next_change_at` has come (`reevaluate`, service/clock.py).

Every change of a row's segments is recorded in `segment_transitions` in the transaction that
changes the row (an outbox): the projection's batch, the clock's re-evaluation and a rebuild's
swap all lock the projection's checkpoint first, so they never interleave and transitions are
numbered in commit order. The segments relay publishes them to LOYALTY_SEGMENTS. A rebuild
announces nothing while it folds; at the swap it re-evaluates its rows at the same instant and
announces only where they differ from the live rows (ADR 16).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from domain.member import Member
from domain.member_values import MemberStatus
from domain.rules import SegmentRules

from .projection import MemberProjection, Touched

SEGMENTS = ("new", "active", "high_value", "at_risk", "dormant", "multi_channel")
NOTIFY_CHANNEL = "loyalty_segments"  # NOTIFY at commit of new transitions; payload: last sequence
KIND = "segments"  # the projection's name: its checkpoint, which every writer of its rows locks
_FLAGS = tuple(f"in_{s}" for s in SEGMENTS)
_NO_SEGMENTS = (False,) * len(SEGMENTS)
_encode = msgspec.json.encode
_decode = msgspec.json.decode


@dataclass(frozen=True, slots=True)
class Facts:
    """What a member's segments are decided from."""

    status: str
    enrolled_at: datetime
    last_activity_at: datetime
    lifetime_earned: int
    channels: tuple[str, ...]

    @classmethod
    def of(cls, member: Member) -> Facts:
        return cls(
            status=str(member.status),
            enrolled_at=member.enrolled_at,
            last_activity_at=member.last_activity_at,
            lifetime_earned=member.lifetime_earned,
            channels=tuple(member.channels),
        )


def segments_at(facts: Facts, at: datetime, rules: SegmentRules) -> tuple[bool, ...]:
    """Whether the member is in each of SEGMENTS at `at` (only active members are in any).

    new: enrolled less than `new_days` ago; active: some activity in the last `at_risk_days`;
    at_risk: none since then, but some in the last `dormant_days`; dormant: none for longer;
    high_value: `high_value_lifetime_points` earned (net of refunds); multi_channel: two
    channels or more used.
    """
    if facts.status != MemberStatus.ACTIVE:
        return _NO_SEGMENTS
    idle = at - facts.last_activity_at
    return (
        at < facts.enrolled_at + timedelta(days=rules.new_days),
        idle < timedelta(days=rules.at_risk_days),
        facts.lifetime_earned >= rules.high_value_lifetime_points,
        timedelta(days=rules.at_risk_days) <= idle < timedelta(days=rules.dormant_days),
        idle >= timedelta(days=rules.dormant_days),
        len(facts.channels) >= 2,
    )


def next_change(facts: Facts, at: datetime, rules: SegmentRules) -> datetime | None:
    """The first instant after `at` at which a segment changes with no new event (None: never)."""
    if facts.status != MemberStatus.ACTIVE:
        return None
    instants = (
        facts.enrolled_at + timedelta(days=rules.new_days),
        facts.last_activity_at + timedelta(days=rules.at_risk_days),
        facts.last_activity_at + timedelta(days=rules.dormant_days),
    )
    return min((i for i in instants if i > at), default=None)


def thresholds_key(rules: SegmentRules) -> str:
    """The thresholds a row was decided with; a row with another key is decided again."""
    return f"{rules.new_days}/{rules.at_risk_days}/{rules.dormant_days}/{rules.high_value_lifetime_points}"


@dataclass(frozen=True, slots=True)
class Transition:
    """A member entered or left a segment (one row of the outbox)."""

    member_id: UUID
    segment: str
    entered: bool
    at: datetime
    position: int


def changes(
    member_id: UUID, before: Sequence[bool], after: Sequence[bool], at: datetime, position: int
) -> list[Transition]:
    """The transitions from one set of segment flags to another."""
    return [
        Transition(member_id, name, new, at, position)
        for name, old, new in zip(SEGMENTS, before, after, strict=True)
        if old != new
    ]


async def record_transitions(
    conn: asyncpg.Connection, transitions: Sequence[Transition], *, count: bool = True
) -> None:
    """Append to the outbox (inside the caller's transaction, which holds the checkpoint) and
    wake the segments relay at commit; with `count`, move `segment_counts` by them too. One
    statement."""
    if not transitions:
        return
    deltas: dict[str, int] = {}
    if count:
        for t in transitions:
            deltas[t.segment] = deltas.get(t.segment, 0) + (1 if t.entered else -1)
    await conn.execute(
        "WITH recorded AS (INSERT INTO segment_transitions"
        " (transition_id, member_id, segment, entered, at, position)"
        " SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::boolean[], $5::timestamptz[],"
        " $6::bigint[]) RETURNING sequence),"
        " counted AS (INSERT INTO segment_counts (segment, members)"
        " SELECT * FROM unnest($7::text[], $8::bigint[])"
        " ON CONFLICT (segment) DO UPDATE SET members = segment_counts.members + EXCLUDED.members)"
        " SELECT pg_notify($9, max(sequence)::text) FROM recorded",
        [uuid.uuid4() for _ in transitions],
        [t.member_id for t in transitions],
        [t.segment for t in transitions],
        [t.entered for t in transitions],
        [t.at for t in transitions],
        [t.position for t in transitions],
        list(deltas),
        list(deltas.values()),
        NOTIFY_CHANNEL,
    )


class SegmentsProjection(MemberProjection):
    """One row per member: its segments and the facts they are decided from (see the module)."""

    kind = KIND
    columns = (
        ("member_id", "uuid"),
        ("status", "text"),
        ("enrolled_at", "timestamptz"),
        ("last_activity_at", "timestamptz"),
        ("lifetime_earned", "bigint"),
        ("channels", "jsonb"),
        *((flag, "boolean") for flag in _FLAGS),
        ("thresholds", "text"),
        ("evaluated_at", "timestamptz"),
        ("next_change_at", "timestamptz"),
        ("version", "integer"),
        ("position", "bigint"),
    )

    def bind(self, table: str) -> None:
        super().bind(table)
        # Only the live table's changes are announced (a rebuild's are, at its swap).
        self.announces = table == self.kind

    async def write(
        self, conn: asyncpg.Connection, touched: Mapping[UUID, Touched], *, after: int = 0
    ) -> None:
        if not touched:
            return
        before = {
            r["member_id"]: r
            for r in await conn.fetch(
                f"SELECT member_id, status, channels, evaluated_at, {', '.join(_FLAGS)} FROM {self.table}"
                " WHERE member_id = ANY($1::uuid[])",
                list(touched),
            )
        }
        rows: list[tuple[Any, ...]] = []
        transitions: list[Transition] = []
        journeys: dict[tuple[str, str, int], int] = {}
        for member_id, t in touched.items():
            old = before.get(member_id)
            # As of when the ledger recorded the event, and never back in time (the clock may
            # have decided the row at a later instant).
            at = max(t.at, t.recorded_at) if old is None else max(t.at, t.recorded_at, old["evaluated_at"])
            facts = Facts.of(t.member)
            flags = segments_at(facts, at, t.rules.segments)
            rows.append(_row(member_id, facts, flags, t.rules.segments, at, t.member.version, t.position))
            previous = _NO_SEGMENTS if old is None else tuple(old[f] for f in _FLAGS)
            transitions += changes(member_id, previous, flags, at, t.position)
            if old is not None and (key := _journey(old["status"], tuple(_decode(old["channels"])))):
                journeys[key] = journeys.get(key, 0) - 1
            if key := _journey(facts.status, facts.channels):
                journeys[key] = journeys.get(key, 0) + 1
        # Rows in one statement: the flags are computed above, the columns are the class's.
        await conn.execute(self._upsert, *(list(column) for column in zip(*rows, strict=True)))
        if self.announces:
            await record_transitions(conn, transitions)
            moved = {k: n for k, n in journeys.items() if n}
            if moved:
                await conn.execute(
                    "INSERT INTO journey_counts (first_channel, next_channel, channels, members)"
                    " SELECT * FROM unnest($1::text[], $2::text[], $3::integer[], $4::bigint[])"
                    " ON CONFLICT (first_channel, next_channel, channels)"
                    " DO UPDATE SET members = journey_counts.members + EXCLUDED.members",
                    [k[0] for k in moved],
                    [k[1] for k in moved],
                    [k[2] for k in moved],
                    list(moved.values()),
                )

    async def before_swap(self, conn: asyncpg.Connection, live_table: str) -> None:
        """Decide the rebuilt rows at the instant the live ones were, then announce only the
        differences (ADR 16): what subscribers were told stays true."""
        live_at = await conn.fetchval(f"SELECT max(evaluated_at) FROM {live_table}")
        if live_at is not None:
            # With the current thresholds too, as the clock decided the live rows.
            await reevaluate_table(
                conn, self.table, at=live_at, rules=self.fold.rules.segments, all_thresholds=True
            )
        differing = await conn.fetch(
            "SELECT coalesce(f.member_id, l.member_id) AS member_id,"
            " coalesce(f.position, l.position) AS position,"
            f" greatest(f.evaluated_at, l.evaluated_at) AS at,"
            f" {', '.join(f'coalesce(f.{x}, false) AS f_{x}' for x in _FLAGS)},"
            f" {', '.join(f'coalesce(l.{x}, false) AS l_{x}' for x in _FLAGS)}"
            f" FROM {self.table} f FULL JOIN {live_table} l ON f.member_id = l.member_id"
            f" WHERE ({', '.join(f'f.{x}' for x in _FLAGS)})"
            f" IS DISTINCT FROM ({', '.join(f'l.{x}' for x in _FLAGS)})"
        )
        transitions: list[Transition] = []
        for r in differing:
            transitions += changes(
                r["member_id"],
                tuple(r[f"l_{x}"] for x in _FLAGS),
                tuple(r[f"f_{x}"] for x in _FLAGS),
                r["at"],
                r["position"],
            )
        await record_transitions(conn, transitions, count=False)
        await count_afresh(conn, self.table)

    def row(self, t: Touched) -> tuple[Any, ...]:
        facts = Facts.of(t.member)
        at = max(t.at, t.recorded_at)
        flags = segments_at(facts, at, t.rules.segments)
        return _row(t.member.id, facts, flags, t.rules.segments, at, t.member.version, t.position)


def _journey(status: str, channels: tuple[str, ...]) -> tuple[str, str, int] | None:
    """A row's key in `journey_counts` (None: not counted; only active members are)."""
    if status != MemberStatus.ACTIVE or not channels:
        return None
    return channels[0], channels[1] if len(channels) > 1 else "", len(channels)


async def count_afresh(conn: asyncpg.Connection, table: str) -> None:
    """`segment_counts` and `journey_counts` computed from `table` (a rebuilt one, at its swap)."""
    await conn.execute("DELETE FROM segment_counts")
    await conn.execute(
        "INSERT INTO segment_counts (segment, members) SELECT * FROM unnest($1::text[], ARRAY["
        + ", ".join(f"(SELECT count(*) FROM {table} WHERE in_{s})" for s in SEGMENTS)
        + "]::bigint[])",
        list(SEGMENTS),
    )
    await conn.execute("DELETE FROM journey_counts")
    await conn.execute(
        "INSERT INTO journey_counts (first_channel, next_channel, channels, members)"
        " SELECT channels->>0, coalesce(channels->>1, ''), jsonb_array_length(channels), count(*)"
        f" FROM {table}"
        " WHERE status = 'active' AND jsonb_array_length(channels) > 0 GROUP BY 1, 2, 3"
    )


def _row(
    member_id: UUID,
    facts: Facts,
    flags: tuple[bool, ...],
    rules: SegmentRules,
    at: datetime,
    version: int,
    position: int,
) -> tuple[Any, ...]:
    return (
        member_id,
        facts.status,
        facts.enrolled_at,
        facts.last_activity_at,
        facts.lifetime_earned,
        _encode(list(facts.channels)).decode(),
        *flags,
        thresholds_key(rules),
        at,
        next_change(facts, at, rules),
        version,
        position,
    )


async def reevaluate_table(
    conn: asyncpg.Connection,
    table: str,
    *,
    at: datetime,
    rules: SegmentRules,
    limit: int | None = None,
    all_thresholds: bool = False,
) -> tuple[int, list[Transition]]:
    """Decide again, at `at`, the rows of `table` whose next change has come (and with
    `all_thresholds`, those decided with other thresholds); returns how many rows were decided
    and the transitions.

    Inside the caller's transaction, which must hold the projection's checkpoint.
    """
    key = thresholds_key(rules)
    where, args = (
        ("next_change_at <= $1 OR thresholds <> $2", (at, key))
        if all_thresholds
        else ("next_change_at <= $1", (at,))
    )
    rows = await conn.fetch(
        f"SELECT member_id, status, enrolled_at, last_activity_at, lifetime_earned, channels,"
        f" {', '.join(_FLAGS)}, evaluated_at, position FROM {table} WHERE {where}"
        f" ORDER BY next_change_at NULLS LAST, member_id" + ("" if limit is None else f" LIMIT {int(limit)}"),
        *args,
    )
    if not rows:
        return 0, []
    transitions: list[Transition] = []
    updates: list[tuple[Any, ...]] = []
    for r in rows:
        channels = tuple(_decode(r["channels"]))
        facts = Facts(r["status"], r["enrolled_at"], r["last_activity_at"], r["lifetime_earned"], channels)
        when = max(at, r["evaluated_at"])
        flags = segments_at(facts, when, rules)
        transitions += changes(r["member_id"], tuple(r[f] for f in _FLAGS), flags, when, r["position"])
        updates.append((r["member_id"], *flags, key, when, next_change(facts, when, rules)))
    sets = ", ".join(f"{f} = u.{f}" for f in _FLAGS)
    casts = ", ".join(f"${i}::boolean[]" for i in range(2, 2 + len(_FLAGS)))
    n = 2 + len(_FLAGS)
    await conn.execute(
        f"UPDATE {table} s SET {sets}, thresholds = u.thresholds, evaluated_at = u.evaluated_at,"
        f" next_change_at = u.next_change_at"
        f" FROM unnest($1::uuid[], {casts}, ${n}::text[], ${n + 1}::timestamptz[], ${n + 2}::timestamptz[])"
        f" AS u(member_id, {', '.join(_FLAGS)}, thresholds, evaluated_at, next_change_at)"
        f" WHERE s.member_id = u.member_id",
        *(list(column) for column in zip(*updates, strict=True)),
    )
    return len(rows), transitions


async def reevaluate(
    conn: asyncpg.Connection, *, now: datetime, rules: SegmentRules, limit: int, all_thresholds: bool = False
) -> int:
    """The clock's pass (service/clock.py): in one transaction holding the projection's
    checkpoint, decide again up to `limit` rows whose time has come and record their
    transitions. Returns how many rows were decided (`limit`: more may be due).

    Rows are decided no later than the oldest event the projection has not applied yet:
    that event may change the facts they are decided from.
    """
    async with conn.transaction():
        checkpoint = await conn.fetchval("SELECT position FROM checkpoints WHERE name = $1 FOR UPDATE", KIND)
        if checkpoint is None:
            return 0
        waiting = await conn.fetchval("SELECT recorded_at FROM events WHERE position = $1", checkpoint + 1)
        at = now if waiting is None else min(now, waiting)
        decided, transitions = await reevaluate_table(
            conn, KIND, at=at, rules=rules, limit=limit, all_thresholds=all_thresholds
        )
        await record_transitions(conn, transitions)
        return decided


# -- reads ----------------------------------------------------------------------------------


async def segment_counts(conn: Any) -> dict[str, int]:
    """Members in each segment (connection or pool), as kept with the rows."""
    found = {
        r["segment"]: int(r["members"])
        for r in await conn.fetch("SELECT segment, members FROM segment_counts")
    }
    return {s: found.get(s, 0) for s in SEGMENTS}


async def segment_members(conn: Any, segment: str, *, after: UUID | None, limit: int) -> list[UUID]:
    """Up to `limit` members of `segment` (one of SEGMENTS), by member id, after `after`."""
    if segment not in SEGMENTS:
        raise ValueError(f"no segment {segment!r}")
    rows = await conn.fetch(
        f"SELECT member_id FROM segments WHERE in_{segment} AND ($1::uuid IS NULL OR member_id > $1)"
        " ORDER BY member_id LIMIT $2",
        after,
        limit,
    )
    return [r["member_id"] for r in rows]


async def member_segments(conn: Any, member_id: UUID) -> list[str] | None:
    """The member's segments (None: the projection has no row for it yet)."""
    row = await conn.fetchrow(f"SELECT {', '.join(_FLAGS)} FROM segments WHERE member_id = $1", member_id)
    if row is None:
        return None
    return [s for s, flag in zip(SEGMENTS, _FLAGS, strict=True) if row[flag]]


@dataclass(frozen=True, slots=True)
class Journeys:
    """Active members by how many channels they used, and by their first and next channel."""

    by_channel_count: dict[int, int]
    # (first channel, next channel or None for members who used only one) -> members
    first_to_next: dict[tuple[str, str | None], int]


async def journeys(conn: Any) -> Journeys:
    """From `journey_counts`, kept with the `segments` rows of active members."""
    rows = await conn.fetch(
        "SELECT first_channel, next_channel, channels, members FROM journey_counts WHERE members > 0"
        " ORDER BY channels, first_channel, next_channel"
    )
    by_count: dict[int, int] = {}
    pairs: dict[tuple[str, str | None], int] = {}
    for r in rows:
        n, key = int(r["channels"]), (r["first_channel"], r["next_channel"] or None)
        by_count[n] = by_count.get(n, 0) + int(r["members"])
        pairs[key] = pairs.get(key, 0) + int(r["members"])
    return Journeys(by_channel_count=by_count, first_to_next=dict(sorted(pairs.items(), key=_pair_order)))


def _pair_order(item: tuple[tuple[str, str | None], int]) -> tuple[str, bool, str]:
    (first, nxt), _ = item
    return first, nxt is not None, nxt or ""
