"""Campaigns: start (with a window that may open later), end, list, one, a member's offers, and
per-variant results from the `campaign_members` projection."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from domain.campaigns import CampaignRecord
from domain.program import PROGRAM_ID
from projections.campaigns import campaign_results
from service.services import Services

from .commands import EndCampaign, StartCampaign
from .context import CommandContext
from .errors import InvalidInput, NotCaughtUp, UnknownMember
from .results import CampaignResults, CampaignState, MemberOffers, Outcome
from .unit_of_work import UnitOfWork, execute


def campaign_state(record: CampaignRecord, now: datetime) -> CampaignState:
    return CampaignState(
        campaign_id=record.campaign_id,
        campaign=record.campaign,
        status=record.status(now),
        started_at=record.started_at,
        ended_at=record.ended_at,
    )


async def start_campaign(
    services: Services, ctx: CommandContext, cmd: StartCampaign
) -> Outcome[CampaignState]:
    """Validate the campaign against the rules and channels in force, and record it."""
    channels = {c.id for c in await services.access.channels()}

    async def decide(uow: UnitOfWork) -> CampaignState:
        program = await uow.program_for_change()
        record = program.start_campaign(
            campaign_id=uow.event_id(0),
            campaign=cmd.campaign,
            channels=channels,
            at=ctx.now,
            channel=ctx.channel,
        )
        return campaign_state(record, ctx.now)

    return await execute(services, ctx, [PROGRAM_ID], decide, CampaignState)


async def end_campaign(services: Services, ctx: CommandContext, cmd: EndCampaign) -> Outcome[CampaignState]:
    """End a campaign now: no earn committed after this applies it."""

    async def decide(uow: UnitOfWork) -> CampaignState:
        program = await uow.program_for_change()
        record = program.end_campaign(campaign_id=cmd.campaign_id, at=ctx.now, channel=ctx.channel)
        return campaign_state(record, ctx.now)

    return await execute(services, ctx, [PROGRAM_ID], decide, CampaignState, status=200)


async def list_campaigns(
    services: Services, *, now: datetime, active_at: datetime | None, channel: str | None
) -> list[CampaignState]:
    """Every campaign in start order; `active_at`: only those live then; `channel`: only those
    that apply to it (an empty channel list applies to every channel)."""
    if active_at is not None and active_at.tzinfo is None:
        raise InvalidInput([("active_at", "must include a time zone offset")])
    program = await services.repository.program()
    records = list(program.campaigns.values())
    if active_at is not None:
        records = [r for r in records if r.live_at(active_at)]
    if channel is not None:
        records = [r for r in records if not r.campaign.channels or channel in r.campaign.channels]
    return [campaign_state(r, now) for r in records]


async def get_campaign(services: Services, campaign_id: UUID, *, now: datetime) -> CampaignState:
    """One campaign; 404 campaign_not_found."""
    program = await services.repository.program()
    return campaign_state(program.campaign(campaign_id), now)


async def member_offers(services: Services, member_id: UUID, *, now: datetime) -> MemberOffers:
    """The campaigns the member is eligible for now, each with the member's variant: what every
    channel shows is what every channel's earn will apply."""
    member = await services.repository.member(member_id)
    if member is None:
        raise UnknownMember(member_id)
    program = await services.repository.program()
    return MemberOffers(
        member_id=member_id, at=now, offers=member.campaign_offers(offers=program.offers(), now=now)
    )


async def results(services: Services, campaign_id: UUID, *, min_position: int | None) -> CampaignResults:
    """Per variant: members reached, earns, bonus points and revenue (from the projection)."""
    if min_position is not None and not await services.projections.wait_for(
        "campaign_members", min_position, timeout=services.settings.read_wait_seconds
    ):
        raise NotCaughtUp("campaign_members", min_position)
    program = await services.repository.program()
    record = program.campaign(campaign_id)
    rows = await campaign_results(services.pool, campaign_id)
    return CampaignResults(campaign_id=campaign_id, name=record.campaign.name, variants=rows)
