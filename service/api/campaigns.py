"""/v1/campaigns (scope rules to change, read to see), a member's campaigns, and per-variant
campaign results (scope analytics)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated
from uuid import UUID

from litestar import Controller, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from domain.campaigns import Campaign
from service.handlers import campaigns
from service.handlers.commands import EndCampaign, StartCampaign
from service.handlers.context import CommandContext
from service.services import Services

from .auth import command_context, requires
from .responses import reply
from .schemas import CampaignListOut, CampaignOut, CampaignResultsOut, MemberCampaignsOut
from .views import campaign_out, campaign_results_out, member_campaigns_out


class CampaignsController(Controller):
    path = "/v1"
    tags = ["campaigns"]
    dependencies = {"ctx": Provide(command_context)}

    @post("/campaigns", guards=[requires("rules")], status_code=201, summary="Start a campaign")
    async def start(
        self,
        data: JSONBody[Campaign],
        services: NamedDependency[Services],
        ctx: NamedDependency[CommandContext],
    ) -> Response[CampaignOut]:
        """Recorded at once (`campaign_started`); it applies to purchases whose time falls in
        its window, which may open later. `channels`/`tiers` must exist; give `multiplier` or
        `bonus_points` (on the campaign, or on each variant); variant weights are positive."""
        return reply(
            await campaigns.start_campaign(services, ctx, StartCampaign(campaign=data)), campaign_out
        )

    @get("/campaigns", guards=[requires("read")], summary="The program's campaigns")
    async def list(
        self,
        services: NamedDependency[Services],
        active_at: FromQuery[datetime | None] = None,
        channel: Annotated[str | None, QueryParameter(min_length=1, max_length=64)] = None,
    ) -> CampaignListOut:
        """Every campaign, in start order; `active_at`: only those live at that instant;
        `channel`: only those that apply to it."""
        found = await campaigns.list_campaigns(
            services, now=datetime.now(UTC), active_at=active_at, channel=channel
        )
        return CampaignListOut(campaigns=[campaign_out(c) for c in found])

    @get("/campaigns/{campaign_id:uuid}", guards=[requires("read")], summary="One campaign")
    async def one(self, campaign_id: FromPath[UUID], services: NamedDependency[Services]) -> CampaignOut:
        return campaign_out(await campaigns.get_campaign(services, campaign_id, now=datetime.now(UTC)))

    @post(
        "/campaigns/{campaign_id:uuid}/end",
        guards=[requires("rules")],
        status_code=200,
        summary="End a campaign now",
    )
    async def end(
        self,
        campaign_id: FromPath[UUID],
        services: NamedDependency[Services],
        ctx: NamedDependency[CommandContext],
    ) -> Response[CampaignOut]:
        """Recorded as `campaign_ended`: no earn committed after it applies the campaign.
        Ending it again is 409 `campaign_ended`."""
        return reply(
            await campaigns.end_campaign(services, ctx, EndCampaign(campaign_id=campaign_id)), campaign_out
        )

    @get(
        "/members/{member_id:uuid}/campaigns",
        guards=[requires("read")],
        summary="The campaigns a member is eligible for now, with their variant",
    )
    async def member(
        self, member_id: FromPath[UUID], services: NamedDependency[Services]
    ) -> MemberCampaignsOut:
        """What every channel shows is what every channel's earn applies: the member's variant
        of each campaign and its reward. A merged or forgotten member has none."""
        return member_campaigns_out(await campaigns.member_offers(services, member_id, now=datetime.now(UTC)))

    @get(
        "/analytics/campaigns/{campaign_id:uuid}",
        guards=[requires("analytics")],
        summary="A campaign's results per variant",
    )
    async def results(
        self,
        campaign_id: FromPath[UUID],
        services: NamedDependency[Services],
        min_position: Annotated[int | None, QueryParameter(ge=0, le=2**63 - 1)] = None,
    ) -> CampaignResultsOut:
        """Per variant: members reached (members with an earn it applied to), earns, bonus
        points and revenue of those purchases (both net of refunds), from a projection of the
        log; `min_position` waits for it (up to 5 s, then 503)."""
        return campaign_results_out(await campaigns.results(services, campaign_id, min_position=min_position))
