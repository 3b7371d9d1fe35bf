"""/v1/analytics and /v1/segments (scope `analytics`): segments, channels, liability, journeys.

The response Structs and the shaping of each are here with their routes: they are read only
by these endpoints. Money is a decimal string in the program's currency, rounded to its minor
unit half to even; rates are decimal strings with four places, rounded half to even (null when
there is nothing to divide by).
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Annotated
from uuid import UUID

import msgspec
from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter

from domain.money import CURRENCY_MINOR_UNITS
from projections.liability import HORIZONS
from projections.segments import SEGMENTS
from service.handlers import analytics
from service.services import Services

from .auth import requires
from .schemas import Out

MinPosition = Annotated[int | None, QueryParameter(ge=0, le=2**63 - 1)]
_RATE = Decimal("0.0001")


class SegmentCountOut(Out, kw_only=True):
    segment: str
    members: int


class SegmentsOut(Out, kw_only=True):
    """Members in each segment (`new`, `active`, `high_value`, `at_risk`, `dormant`,
    `multi_channel`), in that order."""

    segments: list[SegmentCountOut]


class SegmentMemberOut(Out, kw_only=True):
    member_id: UUID


class SegmentMembersOut(Out, kw_only=True):
    """A page of a segment's members, by member id; `next_after` is the next page's `after`."""

    segment: str
    members: list[SegmentMemberOut]
    next_after: UUID | None


class ChannelFiguresOut(Out, kw_only=True):
    """One channel's figures: `active_members` made a purchase or a redemption through it;
    `points_cost` is points_earned at the point value; `cost_ratio` = points_cost / revenue;
    `redemption_rate` = points_redeemed / points_earned."""

    channel: str
    active_members: int
    enrolments: int
    purchases: int
    revenue: str
    refunded: str
    redemptions: int
    points_earned: int
    points_redeemed: int
    points_expired: int
    points_reversed: int
    redemption_rate: str | None
    points_cost: str
    cost_ratio: str | None


class ChannelsOut(Out, kw_only=True):
    """Per channel over the days `from`..`to` (UTC, both included; null: unbounded). Money is
    rounded to the currency's minor unit and rates to four places, both half to even."""

    from_: date | None = msgspec.field(default=None, name="from")  # a Python keyword
    to: date | None = None
    currency: str
    point_value: str
    channels: list[ChannelFiguresOut]


class PointsValueOut(Out, kw_only=True):
    points: int
    value: str


class ExpiringPointsOut(Out, kw_only=True):
    days: int
    points: int
    value: str


class BreakageOut(Out, kw_only=True):
    """Points expired so far (never redeemed), their value, and their share of points earned."""

    points: int
    value: str
    rate: str | None


class LiabilityOut(Out, kw_only=True):
    """Outstanding points now (available + pending + held) and their value at the point value
    (rounded to the currency's minor unit, half to even)."""

    at: datetime
    currency: str
    point_value: str
    outstanding: PointsValueOut
    available: PointsValueOut
    pending: PointsValueOut
    held: PointsValueOut
    expiring: list[ExpiringPointsOut]
    breakage: BreakageOut


class ChannelCountOut(Out, kw_only=True):
    channels: int
    members: int


class FirstNextOut(Out, kw_only=True):
    first: str
    next: str | None
    members: int


class JourneysOut(Out, kw_only=True):
    """Active members by number of channels used, and by first channel -> next channel used
    (`next` null: only one channel so far)."""

    by_channel_count: list[ChannelCountOut]
    first_to_next: list[FirstNextOut]


def _money(amount: Decimal, currency: str) -> str:
    places = CURRENCY_MINOR_UNITS.get(currency, 2)
    return str(amount.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN))


def _rate(part: Decimal | int, whole: Decimal | int) -> str | None:
    if not whole:
        return None
    return str((Decimal(part) / Decimal(whole)).quantize(_RATE, rounding=ROUND_HALF_EVEN))


def channels_out(report: analytics.ChannelReport) -> ChannelsOut:
    cur, value = report.currency, report.point_value
    return ChannelsOut(
        from_=report.since,
        to=report.until,
        currency=cur,
        point_value=str(value),
        channels=[
            ChannelFiguresOut(
                channel=c.channel,
                active_members=c.active_members,
                enrolments=c.enrolments,
                purchases=c.purchases,
                revenue=_money(c.revenue, cur),
                refunded=_money(c.refunded, cur),
                redemptions=c.redemptions,
                points_earned=c.points_earned,
                points_redeemed=c.points_redeemed,
                points_expired=c.points_expired,
                points_reversed=c.points_reversed,
                redemption_rate=_rate(c.points_redeemed, c.points_earned),
                points_cost=_money(c.points_earned * value, cur),
                cost_ratio=_rate(c.points_earned * value, c.revenue),
            )
            for c in report.channels
        ],
    )


def liability_out(report: analytics.LiabilityReport) -> LiabilityOut:
    cur, value, t = report.currency, report.point_value, report.totals

    def pv(points: int) -> PointsValueOut:
        return PointsValueOut(points=points, value=_money(points * value, cur))

    return LiabilityOut(
        at=t.at,
        currency=cur,
        point_value=str(value),
        outstanding=pv(t.available + t.pending + t.held),
        available=pv(t.available),
        pending=pv(t.pending),
        held=pv(t.held),
        expiring=[
            ExpiringPointsOut(days=d, points=t.expiring[d], value=_money(t.expiring[d] * value, cur))
            for d in HORIZONS
        ],
        breakage=BreakageOut(
            points=t.expired, value=_money(t.expired * value, cur), rate=_rate(t.expired, t.earned)
        ),
    )


class AnalyticsController(Controller):
    path = "/v1"
    tags = ["analytics"]
    guards = [requires("analytics")]

    @get("/analytics/segments", summary="Members in each segment")
    async def segments(
        self, services: NamedDependency[Services], min_position: MinPosition = None
    ) -> SegmentsOut:
        counts = await analytics.segments(services, min_position=min_position)
        return SegmentsOut(segments=[SegmentCountOut(segment=s, members=counts[s]) for s in SEGMENTS])

    @get("/segments/{name:str}/members", summary="The members of a segment, a page at a time")
    async def segment_members(
        self,
        services: NamedDependency[Services],
        name: FromPath[str],
        after: Annotated[UUID | None, QueryParameter()] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
        min_position: MinPosition = None,
    ) -> SegmentMembersOut:
        page = await analytics.members_of(services, name, after=after, limit=limit, min_position=min_position)
        return SegmentMembersOut(
            segment=page.segment,
            members=[SegmentMemberOut(member_id=m) for m in page.members],
            next_after=page.next_after,
        )

    @get("/analytics/channels", summary="Per channel: members, purchases, revenue, points and their cost")
    async def channels(
        self,
        services: NamedDependency[Services],
        since: Annotated[date | None, QueryParameter(name="from")] = None,
        until: Annotated[date | None, QueryParameter(name="to")] = None,
        min_position: MinPosition = None,
    ) -> ChannelsOut:
        """Days are UTC dates (`from` and `to` included, either may be left out); a purchase
        counts on its business day."""
        report = await analytics.channels(services, since=since, until=until, min_position=min_position)
        return channels_out(report)

    @get("/analytics/liability", summary="Outstanding points, their value, what expires soon, breakage")
    async def liability(
        self, services: NamedDependency[Services], min_position: MinPosition = None
    ) -> LiabilityOut:
        return liability_out(await analytics.liability(services, min_position=min_position))

    @get("/analytics/journeys", summary="Members by channels used, and first channel -> next channel")
    async def journeys(
        self, services: NamedDependency[Services], min_position: MinPosition = None
    ) -> JourneysOut:
        found = await analytics.member_journeys(services, min_position=min_position)
        return JourneysOut(
            by_channel_count=[
                ChannelCountOut(channels=n, members=m) for n, m in found.by_channel_count.items()
            ],
            first_to_next=[
                FirstNextOut(first=first, next=nxt, members=m)
                for (first, nxt), m in found.first_to_next.items()
            ],
        )
