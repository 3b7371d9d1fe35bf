"""Segments move with time: the clock re-decides them with no event, and each change reaches
NATS once (projections/segments.py, service/bus/segments.py, ADR 16)."""

from __future__ import annotations

import contextlib
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from uuid import UUID

import nats
import pytest
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from domain.identities import Identity
from projections.segments import member_segments
from service.bus import segments
from service.handlers import members
from service.handlers.commands import Enrol
from service.handlers.context import CommandContext
from service.services import Services
from tests.integration.test_clock import _settings, instance, leader, passes_after
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


async def recorded(services: Services, member_id: UUID) -> list[tuple[str, bool]]:
    """The member's transitions in the outbox, in order: (segment, entered)."""
    async with services.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT segment, entered FROM segment_transitions WHERE member_id = $1 ORDER BY sequence",
            member_id,
        )
    return [(r["segment"], r["entered"]) for r in rows]


async def test_with_two_instances_one_leader_decides_and_a_takeover_or_restart_repeats_nothing(
    database_url: str, nats_url: str
) -> None:
    settings = _settings(database_url, nats_url)
    prefix = segments.subject_prefix(settings.subject_prefix)
    running: dict[str, tuple[contextlib.AsyncExitStack, Services]] = {}

    async def start(name: str) -> Services:
        stack = contextlib.AsyncExitStack()
        running[name] = (stack, await stack.enter_async_context(instance(settings)))
        return running[name][1]

    async def stop(name: str) -> None:
        stack, _ = running.pop(name)
        await stack.aclose()

    def leading() -> str | None:
        found = leader(*(services for _, services in running.values()))
        return next(
            (name for name, (_, s) in running.items() if found is not None and s.clock is found), None
        )

    # Entering active at enrolment; leaving it for at_risk with time, once.
    expected = [("active", True), ("active", False), ("at_risk", True)]
    # Every publish as sent (a plain subscriber): the stream's count alone would not show one
    # published again within JetStream's de-duplication window.
    heard: list[Msg] = []
    listener = await nats.connect(nats_url)

    async def hear(msg: Msg) -> None:
        heard.append(msg)

    await listener.subscribe(f"{prefix}.>", cb=hear)

    async def told_once(services: Services, member_id: UUID) -> None:
        """Each transition recorded once and on NATS once, after more passes of the leading clock."""
        name = await until(leading, what="a leading clock")
        clock = running[name][1].clock
        assert clock is not None
        await passes_after(clock, 3)
        await until(lambda: relayed_everything(services), what="the segments relay catching up")
        assert await recorded(services, member_id) == expected
        assert await published(services, f"{prefix}.at_risk.{member_id}") == 1
        assert await published(services, f"{prefix}.active.{member_id}") == 2
        await listener.flush()
        subjects = [m.subject for m in heard if m.subject.endswith(f".{member_id}")]
        assert sorted(subjects) == sorted(f"{prefix}.{segment}.{member_id}" for segment, _ in expected)

    try:
        first, second = await start("first"), await start("second")
        # Enrolled (last active) 60 days less two seconds ago: at risk two seconds from now with
        # no event, while both instances run.
        now = datetime.now(UTC)
        member_id = await enrol_at(first, now - timedelta(days=60, seconds=-2))
        head = await first.store.last_position()
        await until(lambda: _in(second, member_id, "at_risk"), what="the member entering at_risk", within=15)
        assert await first.store.last_position() == head  # time alone moved it
        await until(lambda: published(first, f"{prefix}.at_risk.{member_id}"), what="the NATS message")
        await told_once(second, member_id)

        # The leader stops; the other instance takes over the clock (and the relay): a lead
        # starts from nothing in memory (its cursor, the thresholds it applied), which must
        # decide and announce nothing again.
        was = await until(leading, what="a leading clock")
        await stop(was)
        survivor = running[next(iter(running))][1]
        assert survivor.clock is not None
        await until(lambda: survivor.clock.status().active, what="the other instance's clock leading")  # type: ignore[union-attr]
        await told_once(survivor, member_id)

        # A restart: a new instance, then the last of the old ones stops.
        third = await start("third")
        await stop(next(name for name in running if name != "third"))
        assert third.clock is not None
        await until(lambda: third.clock.status().active, what="the restarted instance's clock leading")  # type: ignore[union-attr]
        await told_once(third, member_id)
        assert await member_segments(third.pool, member_id) == ["at_risk"]
    finally:
        await listener.close()
        for name in list(running):
            await stop(name)
