"""Analytics reads: segments, channels, liability and journeys, each from its projection.

Every read takes `min_position`: it waits (up to the read wait, then NotCaughtUp) until the
projections it reads have applied that position.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from uuid import UUID

from projections.channels import ChannelFigures, channel_figures
from projections.liability import LiabilityTotals, liability_totals
from projections.segments import SEGMENTS, Journeys, journeys, segment_counts, segment_members
from service.services import Services

from .errors import InvalidInput, NotCaughtUp, NotFound


async def caught_up(services: Services, names: tuple[str, ...], min_position: int | None) -> None:
    """Wait until each named projection has applied `min_position` (None: do not wait)."""
    if min_position is None:
        return
    for name in names:
        if not await services.projections.wait_for(
            name, min_position, timeout=services.settings.read_wait_seconds
        ):
            raise NotCaughtUp(name, min_position)


async def segments(services: Services, *, min_position: int | None = None) -> dict[str, int]:
    """Members in each segment."""
    await caught_up(services, ("segments",), min_position)
    return await segment_counts(services.pool)


@dataclass(frozen=True, slots=True)
class SegmentPage:
    segment: str
    members: list[UUID]
    next_after: UUID | None  # pass as `after` for the next page (None: this was the last)


async def members_of(
    services: Services, segment: str, *, after: UUID | None, limit: int, min_position: int | None = None
) -> SegmentPage:
    """A page of the members of a segment, by member id."""
    if segment not in SEGMENTS:
        raise NotFound(f"no segment {segment!r}; the segments are {', '.join(SEGMENTS)}", segment=segment)
    await caught_up(services, ("segments",), min_position)
    found = await segment_members(services.pool, segment, after=after, limit=limit)
    return SegmentPage(segment, found, found[-1] if len(found) == limit else None)


@dataclass(frozen=True, slots=True)
class ChannelReport:
    since: date | None
    until: date | None
    currency: str
    point_value: Decimal
    channels: list[ChannelFigures]


async def channels(
    services: Services, *, since: date | None, until: date | None, min_position: int | None = None
) -> ChannelReport:
    """Per channel, over the days from `since` to `until` (both included)."""
    if since is not None and until is not None and since > until:
        raise InvalidInput([("from", "must not be after `to`")])
    await caught_up(services, ("channel_days",), min_position)
    rules = (await services.repository.program()).rules
    async with services.pool.acquire() as conn:
        figures = await channel_figures(conn, since, until)
    return ChannelReport(since, until, rules.currency, rules.redemption.point_value, figures)


@dataclass(frozen=True, slots=True)
class LiabilityReport:
    currency: str
    point_value: Decimal
    totals: LiabilityTotals


async def liability(services: Services, *, min_position: int | None = None) -> LiabilityReport:
    """Outstanding points now, and their value at the rules' point value."""
    await caught_up(services, ("liability",), min_position)
    rules = (await services.repository.program()).rules
    async with services.pool.acquire() as conn:
        totals = await liability_totals(conn, datetime.now(UTC))
    return LiabilityReport(rules.currency, rules.redemption.point_value, totals)


async def member_journeys(services: Services, *, min_position: int | None = None) -> Journeys:
    """Members by number of channels used, and first channel -> next channel."""
    await caught_up(services, ("segments",), min_position)
    return await journeys(services.pool)
