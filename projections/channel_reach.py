"""Members active through each channel over any range of days, exactly, from kept counts (ADR 26).

A member is active through a channel on a day when its `channel_days` row has a purchase or a
redemption; the analytics count the members active at least once in a range. Counting them
distinctly over the rows reads a row per member and day of the range (a year: a million). Instead

    members active in [first, last] = member-days in it - returns within it

where a member-day is an active row (`channel_totals.active_members`, per day, added up with the
other sums) and a *return* is a pair of successive active days `prev` < `day` of one member
through one channel, *within* the range when `first` <= prev (so day <= last too). A member
active in the range has one day there more than its returns within it: its first day there
follows a day before `first`, or none.

`channel_returns` counts the returns by (prev, day) at four grains, a month standing as its
first day: day x day (`dd`), day x month (`dm`), month x day (`md`) and month x month (`mm`).
A range is its head days (to the end of its first month, unless that month is whole in it), its
whole months and its tail days (from the start of its last month), and the returns within it
are the cells of five boxes (`returns_within`): at most a few thousand cells for any range,
against a row per member-day. The day x day cells are the most: about one per pair of days with
a return between them.

Written with the rows in the same statement: counts only grow, so a row is active for the first
time exactly when its activity is the batch's own; its neighbours are the member's active days
before and after it in the table as the statement found it, and the batch's other new days. The
returns between old neighbours that a new day splits are taken away, the new pairs added.
A rebuilt table's counts are computed afresh at its swap (`recompute`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

ACTIVE = "(purchases > 0 OR redemptions > 0)"  # the predicate of the member index (migration 0015)
_OLD_ACTIVE = "(o.purchases > 0 OR o.redemptions > 0)"


def _month_sql(column: str) -> str:
    """The first day of the month of a date column, in SQL (date - integer is a date)."""
    return f"({column} - extract(day FROM {column})::int + 1)"


# Each return (prev, day) counted once at each grain.
_CELLS = (
    "(VALUES ('dd', c.prev, c.day), ('dm', c.prev, {md}), ('md', {mp}, c.day), ('mm', {mp}, {md}))"
    " AS g (grain, prev, day)"
).format(md=_month_sql("c.day"), mp=_month_sql("c.prev"))
# The statement's last part, after returns_ctes(): the changes moved into `channel_returns`.
UPSERT_RETURNS = (
    "INSERT INTO channel_returns (grain, prev, day, channel, returns)"
    f" SELECT g.grain, g.prev, g.day, c.channel, sum(c.n) FROM changes c CROSS JOIN LATERAL {_CELLS}"
    " GROUP BY 1, 2, 3, 4 HAVING sum(c.n) <> 0 ORDER BY 1, 2, 3, 4"
    " ON CONFLICT (grain, prev, day, channel)"
    " DO UPDATE SET returns = channel_returns.returns + EXCLUDED.returns"
)


def returns_ctes(table: str) -> str:
    """CTEs that follow a CTE `fresh (day, channel, member_id)` of rows active for the first time
    in `table` (read as the statement found it), ending in `changes (channel, prev, day, n)`."""
    nearest = (
        "(SELECT {agg}(o.day) FROM {table} o WHERE o.member_id = f.member_id AND o.channel = f.channel"
        f" AND o.day {{op}} f.day AND {_OLD_ACTIVE})"
    )
    before = nearest.format(agg="max", table=table, op="<")
    after = nearest.format(agg="min", table=table, op=">")
    return (
        # Each new day's active neighbours among the rows already there (an index probe each).
        f" around AS (SELECT f.channel, f.member_id, f.day, {before} AS before, {after} AS after"
        " FROM fresh f),"
        # The new days and those neighbours: successive ones here are successive in the member's
        # days through the channel whenever one of the two is new.
        " points AS (SELECT channel, member_id, day, true AS new FROM fresh"
        " UNION SELECT channel, member_id, before, false FROM around WHERE before IS NOT NULL"
        " UNION SELECT channel, member_id, after, false FROM around WHERE after IS NOT NULL),"
        " steps AS (SELECT channel, day, new, lag(day) OVER w AS prev, lag(new) OVER w AS prev_new"
        " FROM points WINDOW w AS (PARTITION BY channel, member_id ORDER BY day)),"
        " changes AS (SELECT channel, prev, day, 1 AS n FROM steps"
        " WHERE prev IS NOT NULL AND (new OR prev_new)"
        " UNION ALL SELECT channel, before, after, -1 FROM"
        " (SELECT DISTINCT channel, member_id, before, after FROM around"
        " WHERE before IS NOT NULL AND after IS NOT NULL) AS split)"
    )


def recompute(table: str) -> list[str]:
    """Statements that count every return of `table` afresh (a rebuilt table, at its swap)."""
    return [
        "DELETE FROM channel_returns",
        "INSERT INTO channel_returns (grain, prev, day, channel, returns)"
        " WITH steps AS (SELECT channel, day,"
        f" lag(day) OVER (PARTITION BY member_id, channel ORDER BY day) AS prev FROM {table} WHERE {ACTIVE}),"
        " c AS (SELECT channel, prev, day, count(*) AS n FROM steps WHERE prev IS NOT NULL GROUP BY 1, 2, 3)"
        f" SELECT g.grain, g.prev, g.day, c.channel, sum(c.n) FROM c CROSS JOIN LATERAL {_CELLS}"
        " GROUP BY 1, 2, 3, 4",
    ]


# -- reading ----------------------------------------------------------------------------------


def _month(day: date) -> date:
    return day.replace(day=1)


def _next_month(month: date) -> date:
    return (month.replace(day=28) + timedelta(days=4)).replace(day=1)


def _days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


@dataclass(frozen=True, slots=True)
class Window:
    """A range of days as its head days, whole months (first days) and tail days, in order."""

    head: list[date]
    months: list[date]
    tail: list[date]


def window(first: date, last: date) -> Window:
    """Cut the days `first`..`last` (both included) into head days, whole months and tail days."""
    if first > last:
        raise ValueError("first after last")
    end = _next_month(_month(last)) - timedelta(days=1)  # the last day of `last`'s month
    whole_head, whole_tail = first.day == 1, last == end
    if _month(first) == _month(last) and not (whole_head and whole_tail):
        return Window(_days(first, last), [], [])
    head = [] if whole_head else _days(first, _next_month(_month(first)) - timedelta(days=1))
    tail = [] if whole_tail else _days(_month(last), last)
    months = []
    month = _month(first) if whole_head else _next_month(_month(first))
    stop = _next_month(_month(last)) if whole_tail else _month(last)
    while month < stop:
        months.append(month)
        month = _next_month(month)
    return Window(head, months, tail)


# The five boxes of cells whose returns lie within a window (H head days, M months, T tail days):
# H x H and (H + T) x T at day x day, H x M at day x month, M x T at month x day, M x M. Each
# box is read by one index descent per `prev` (= ANY) bounded on `day`; empty ones read nothing.
_WITHIN = (
    "SELECT channel, sum(returns)::bigint AS returns FROM ("
    "SELECT channel, returns FROM channel_returns WHERE grain = 'dd' AND prev = ANY($1::date[]) AND day <= $2"
    " UNION ALL SELECT channel, returns FROM channel_returns"
    " WHERE grain = 'dd' AND prev = ANY($3::date[]) AND day >= $4 AND day <= $5"
    " UNION ALL SELECT channel, returns FROM channel_returns"
    " WHERE grain = 'dm' AND prev = ANY($1::date[]) AND day >= $6 AND day <= $7"
    " UNION ALL SELECT channel, returns FROM channel_returns"
    " WHERE grain = 'md' AND prev = ANY($8::date[]) AND day >= $4 AND day <= $5"
    " UNION ALL SELECT channel, returns FROM channel_returns"
    " WHERE grain = 'mm' AND prev = ANY($8::date[]) AND day <= $7"
    ") AS cells GROUP BY channel"
)


async def returns_within(conn: Any, first: date, last: date) -> dict[str, int]:
    """Per channel, the returns (successive active days of a member) with both days in `first`..`last`."""
    w = window(first, last)
    head, months, tail = w.head, w.months, w.tail
    rows = await conn.fetch(
        _WITHIN,
        head,
        head[-1] if head else None,
        head + tail,
        tail[0] if tail else None,
        tail[-1] if tail else None,
        months[0] if months else None,
        months[-1] if months else None,
        months,
    )
    found: dict[str, int] = defaultdict(int)
    for r in rows:
        found[r["channel"]] += int(r["returns"])
    return dict(found)
