"""The `balances` read model: every balance field of a member (SPEC §3) and its tier."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from .projection import (
    BALANCE_COLUMNS,
    BALANCE_FIELDS,
    EXPIRING_COLUMNS,
    MemberProjection,
    Touched,
    balance_values,
)

_SELECT = (
    f"SELECT {', '.join(BALANCE_FIELDS)}, tier, balance_at, next_change_at,"
    " expiring_points, expiring_at, version, position FROM balances"
)


class BalancesProjection(MemberProjection):
    """One row per member: its balance at its last event, and when that balance next changes."""

    kind = "balances"
    columns = (
        ("member_id", "uuid"),
        *BALANCE_COLUMNS,
        ("tier", "text"),
        ("balance_at", "timestamptz"),
        ("next_change_at", "timestamptz"),
        *EXPIRING_COLUMNS,
        ("version", "integer"),
        ("position", "bigint"),
        ("updated_at", "timestamptz"),
    )

    def row(self, t: Touched) -> tuple[Any, ...]:
        return (t.member.id, *balance_values(t), t.member.version, t.position, t.recorded_at)


async def balance_row(conn: Any, member_id: UUID) -> dict[str, Any] | None:
    """A member's row of `balances` (connection or pool), or None when it has none."""
    row = await conn.fetchrow(f"{_SELECT} WHERE member_id = $1", member_id)
    return None if row is None else dict(row)
