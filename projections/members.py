"""The `members` read model: the member view (status, masked identities, tier, balance,
channels used, first and last activity). No clear personal value is ever stored here."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec

from domain.identities import Identity, mask_identity
from domain.member_values import Balance, Expiring

from .projection import (
    BALANCE_COLUMNS,
    BALANCE_FIELDS,
    EXPIRING_COLUMNS,
    MemberProjection,
    Touched,
    balance_values,
)

_encode = msgspec.json.encode
_decode = msgspec.json.decode


class MembersProjection(MemberProjection):
    """One row per member, shaped like the API's member view."""

    kind = "members"
    personal_data = True  # identities, masked before they are written
    columns = (
        ("member_id", "uuid"),
        ("status", "text"),
        ("merged_into", "uuid"),
        ("identities", "jsonb"),
        ("channels", "jsonb"),
        ("first_activity_at", "timestamptz"),
        ("last_activity_at", "timestamptz"),
        *BALANCE_COLUMNS,
        ("tier", "text"),
        ("balance_at", "timestamptz"),
        ("next_change_at", "timestamptz"),
        *EXPIRING_COLUMNS,
        ("version", "integer"),
        ("position", "bigint"),
        ("updated_at", "timestamptz"),
    )

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        # Per member: its identities when last written, masked (masking a phone number parses it,
        # ~30 us; a member's identities rarely change between its rows).
        self._masked: dict[UUID, tuple[tuple[Identity | None, ...], str]] = {}

    def row(self, t: Touched) -> tuple[Any, ...]:
        m = t.member
        return (
            m.id,
            str(m.status),
            m.merged_into,
            self._masked_identities(m.id, tuple(m.identities)),
            _encode(list(m.channels)).decode(),
            m.first_activity_at,
            m.last_activity_at,
            *balance_values(t),
            m.version,
            t.position,
            t.recorded_at,
        )

    def _masked_identities(self, member_id: UUID, identities: tuple[Identity | None, ...]) -> str:
        cached = self._masked.get(member_id)
        if cached is not None and cached[0] == identities:
            return cached[1]
        # Masked here, once: the clear value never reaches the table. An identity reads as None
        # once the member's key is shredded, and is then left out.
        masked = _encode([{"kind": i.kind, "value": mask_identity(i)} for i in identities if i is not None])
        if len(self._masked) >= self.cache_size:
            self._masked.clear()
        self._masked[member_id] = (identities, masked.decode())
        return self._masked[member_id][1]

    def reset(self) -> None:
        super().reset()
        self._masked.clear()


class MemberView(msgspec.Struct, frozen=True, kw_only=True):
    """A member's row of the `members` projection: the member view at the member's last event
    (`position`), its balance exact until `balance_valid_until` (None: for ever)."""

    member_id: UUID
    status: str
    merged_into: UUID | None
    tier: str
    identities: list[Identity]  # values masked
    balance: Balance
    channels: list[str]
    first_activity_at: datetime | None
    last_activity_at: datetime | None
    position: int
    balance_valid_until: datetime | None


async def member_view(conn: Any, member_id: UUID) -> MemberView | None:
    """The member's row of the `members` projection (connection or pool), or None."""
    row = await conn.fetchrow(
        "SELECT member_id, status, merged_into, tier, identities, channels, first_activity_at,"
        f" last_activity_at, {', '.join(BALANCE_FIELDS)}, next_change_at, expiring_points, expiring_at,"
        " position"
        " FROM members WHERE member_id = $1",
        member_id,
    )
    if row is None:
        return None
    return MemberView(
        member_id=row["member_id"],
        status=row["status"],
        merged_into=row["merged_into"],
        tier=row["tier"],
        identities=_decode(row["identities"], type=list[Identity]),
        balance=Balance(
            **{f: row[f] for f in BALANCE_FIELDS},
            tier=row["tier"],
            expiring=None
            if row["expiring_at"] is None
            else Expiring(points=row["expiring_points"], at=row["expiring_at"]),
        ),
        channels=_decode(row["channels"], type=list[str]),
        first_activity_at=row["first_activity_at"],
        last_activity_at=row["last_activity_at"],
        position=row["position"],
        balance_valid_until=row["next_change_at"],
    )
