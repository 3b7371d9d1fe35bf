"""Segments move with time: the clock re-decides them with no event, and each change reaches
NATS once (projections/segments.py, service/bus/segments.py, ADR 16)."""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest
from nats.js.errors import NotFoundError

from domain.identities import Identity
from projections.segments import member_segments
from service.bus import segments
from service.handlers import members
from service.handlers.commands import Enrol
from service.handlers.context import CommandContext
from service.services import Services
from tests.integration.test_clock import _settings, instance
from tests.waiting import until

pytestmark = pytest.mark.asyncio


async def enrol_at(services: Services, at: datetime) -> UUID:
    """A member enrolled (its last activity) at `at`: time enters at the edge, as a command's."""
    ctx = CommandContext(channel="pos-sh-01", api_key_id="test", now=at, request_id=uuid.uuid4().hex)
    phone = f"+8613{secrets.randbelow(10**9):09d}"
    outcome = await members.enrol(services, ctx, Enrol(identities=[Identity(kind="phone", value=phone)]))
    return outcome.result.member_id


async def published(services: Services, subject: str) -> int:
    """Messages the segments stream holds on `subject`."""
    assert services.nats is not None
    assert services.nats.client is not None
    stream = segments.stream_name(services.settings)
    try:
        info = await services.nats.client.jetstream().stream_info(stream, subjects_filter=subject)
    except NotFoundError:
        return 0
    return int((info.state.subjects or {}).get(subject, 0))


async def relayed_everything(services: Services) -> bool:
    """The segments relay has published every recorded transition."""
    async with services.pool.acquire() as conn:
        head = await conn.fetchval("SELECT coalesce(max(sequence), 0) FROM segment_transitions")
        done = await conn.fetchval("SELECT position FROM checkpoints WHERE name = $1", segments.FEED_NAME)
    return done is not None and done >= head


async def test_a_member_crossing_at_risk_days_enters_at_risk_with_no_event_and_nats_hears_it_once(
    database_url: str, nats_url: str
) -> None:
    settings = _settings(database_url, nats_url)
    async with instance(settings) as services:
        # Last active (enrolled) 60 days less two seconds ago: active now, at risk (60 days of
        # the default rules) two seconds from now, with nothing recorded for it after this.
        member_id = await enrol_at(services, datetime.now(UTC) - timedelta(days=60, seconds=-2))
        head = await services.store.last_position()
        assert await services.projections.wait_for("segments", head)
        assert await member_segments(services.pool, member_id) == ["active"]

        found = await until(
            lambda: _in(services, member_id, "at_risk"), what="the member entering at_risk", within=15
        )
        assert found == ["at_risk"]
        assert await services.store.last_position() == head  # no event: time alone moved it

        prefix = segments.subject_prefix(settings.subject_prefix)
        await until(lambda: published(services, f"{prefix}.at_risk.{member_id}"), what="the NATS message")
        await until(lambda: relayed_everything(services), what="the segments relay catching up")
        assert services.clock is not None
        passes = services.clock.passes
        await until(lambda: services.clock.passes >= passes + 3, what="three more passes of the clock")
        await until(lambda: relayed_everything(services), what="the segments relay catching up")
        # Once each: entering active (at enrolment), leaving it and entering at_risk (time).
        assert await published(services, f"{prefix}.at_risk.{member_id}") == 1
        assert await published(services, f"{prefix}.active.{member_id}") == 2
        js = services.nats.client.jetstream()  # type: ignore[union-attr]
        last = await js.get_last_msg(segments.stream_name(settings), f"{prefix}.at_risk.{member_id}")
        event = segments.decode(last.data or b"")
        assert (event.type, event.subject, event.data.segment) == (
            segments.ENTERED,
            str(member_id),
            "at_risk",
        )
        assert event.data.log_position == head
        assert last.headers is not None
        assert last.headers["Nats-Msg-Id"] == str(event.id)


async def _in(services: Services, member_id: UUID, segment: str) -> list[str] | None:
    found = await member_segments(services.pool, member_id)
    return found if found is not None and segment in found else None
