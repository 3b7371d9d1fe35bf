"""Domain state -> response bodies (shared by the command and query handlers)."""

from __future__ import annotations

from datetime import datetime

from domain.identities import mask_identity
from domain.member import Balance, Member
from domain.rules import BreakdownPart, Rules
from service.api.schemas import BalanceOut, BreakdownOut, IdentityOut, MemberOut


def balance_out(balance: Balance) -> BalanceOut:
    return BalanceOut(
        available=balance.available,
        pending=balance.pending,
        held=balance.held,
        lifetime_earned=balance.lifetime_earned,
        lifetime_redeemed=balance.lifetime_redeemed,
        expired=balance.expired,
        qualifying=balance.qualifying,
        tier=balance.tier,
    )


def breakdown_out(parts: list[BreakdownPart]) -> list[BreakdownOut]:
    return [BreakdownOut(rule=p.rule, points=p.points) for p in parts]


def member_out(
    member: Member, *, now: datetime, rules: Rules, reveal: bool, position: int | None = None
) -> MemberOut:
    """The member view; identity values are masked unless the caller may see personal data."""
    return MemberOut(
        member_id=member.id,
        status=str(member.status),
        merged_into=member.merged_into,
        tier=member.tier,
        identities=[
            IdentityOut(kind=i.kind, value=i.value if reveal else mask_identity(i)) for i in member.identities
        ],
        balance=balance_out(member.balance(now=now, rules=rules)),
        channels=list(member.channels),
        first_activity_at=member.first_activity_at,
        last_activity_at=member.last_activity_at,
        position=position,
    )
