"""A member's own data: everything held about them (export), and forgetting them (crypto-shredding).

Forgetting destroys the member's data key (and those of the duplicates merged into them, the
same person), so every sealed copy of their personal data — events, snapshots, idempotency
records, backups taken from then on — becomes unreadable at once, while the stored event bytes,
amounts and positions stay exactly as they were. See docs/decisions/0015-forgetting-a-member.md.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from domain.member import Member
from service.services import Services

from .commands import Forget
from .context import CommandContext
from .errors import UnknownMember
from .members import member_state
from .results import ExportedEvent, MemberExport, MemberState, Outcome
from .unit_of_work import UnitOfWork, execute

# Set by the event-sourcing library on every event: the export's own columns say the same.
_BOOKKEEPING = frozenset({"originator_id", "originator_version", "timestamp", "originator_topic"})


async def forget(services: Services, ctx: CommandContext, cmd: Forget) -> Outcome[MemberState]:
    """Forget a member: open holds released, `member_forgotten` recorded, identities freed and
    the data keys shredded, in one atomic append; every instance drops its cached copies."""
    forgotten: list[UUID] = []

    async def decide(uow: UnitOfWork) -> MemberState:
        member = await uow.member(cmd.member_id)
        program = await uow.program()
        identities = list(member.identities)
        member.forget(at=ctx.now, channel=ctx.channel)
        for identity in identities:
            uow.release_identity(identity, member.id)
        forgotten[:] = [member.id, *await _merged_sources(uow.member, member)]
        uow.shred_keys(forgotten)
        return member_state(member, now=ctx.now, rules=program.rules, reveal=False)

    outcome = await execute(services, ctx, [cmd.member_id], decide, MemberState)
    # This instance at once (the others on the commit's notification).
    services.store.drop_keys(forgotten)
    return outcome


async def export(services: Services, member_id: UUID, *, now: datetime) -> MemberExport:
    """Everything held about a member, decrypted: the member as it is now (identities, profile,
    balance) and every event of its stream and of the members merged into it. A forgotten
    member's export holds the same amounts and no personal data."""
    repository = services.repository
    member = await repository.current_member(member_id)
    if member is None:
        raise UnknownMember(member_id)
    program = await repository.program()
    streams = [member_id, *await _merged_sources(repository.current_member, member)]
    events: list[ExportedEvent] = []
    for stream_id in streams:
        for e in await services.store.whole_stream(stream_id):
            data: dict[str, Any] = {k: v for k, v in vars(e.event).items() if k not in _BOOKKEEPING}
            events.append(
                ExportedEvent(
                    member_id=stream_id,
                    position=e.position,
                    event_id=e.event_id,
                    stream_version=e.stream_version,
                    type=e.event_type,
                    channel=e.channel,
                    occurred_at=e.occurred_at,
                    recorded_at=e.recorded_at,
                    data=data,
                )
            )
    events.sort(key=lambda e: e.position)
    state = member_state(member, now=now, rules=program.rules, reveal=True)
    return MemberExport(
        member_id=member_id,
        status=state.status,
        merged_into=state.merged_into,
        merged_from=streams[1:],
        tier=state.tier,
        identities=state.identities,
        profile=member.profile,
        balance=state.balance,
        channels=state.channels,
        enrolled_at=member.enrolled_at,
        first_activity_at=state.first_activity_at,
        last_activity_at=state.last_activity_at,
        exported_at=now,
        events=events,
    )


async def _merged_sources(load: Any, member: Member) -> list[UUID]:
    """The members merged into this one, and into those, and so on (the same person)."""
    found: list[UUID] = []
    pending = list(member.merged_from)
    while pending:
        source_id = pending.pop()
        if source_id in found or source_id == member.id:
            continue
        found.append(source_id)
        source = await load(source_id)
        if source is not None:
            pending.extend(source.merged_from)
    return found
