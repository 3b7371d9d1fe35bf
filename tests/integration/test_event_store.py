"""The event store seen from the handlers: two instances, snapshots, sealed personal data."""

from __future__ import annotations

import asyncio
import base64
import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import pytest_asyncio

from domain.identities import Identity
from domain.member import Member
from service.config import Settings
from service.handlers import ledger, members
from service.handlers.commands import EarnPurchase, Enrol, LinkIdentity, Redeem
from service.handlers.context import CommandContext
from service.handlers.program import ensure_program
from service.services import Services, open_services
from service.store.repository import SNAPSHOT_AFTER

MASTER_KEY = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
SCOPES = frozenset({"read", "earn", "redeem", "members", "award"})


def ctx(channel: str = "pos") -> CommandContext:
    return CommandContext(
        channel=channel,
        api_key_id="test",
        now=datetime.now(UTC),
        request_id=uuid.uuid4().hex,
        scopes=SCOPES,
        idempotency_key=uuid.uuid4().hex,
        request_hash=secrets.token_bytes(8),
    )


@pytest_asyncio.fixture
async def two_instances(database_url: str) -> AsyncIterator[list[Services]]:
    """Two service instances (each with its own pool, cache and appender) on one database."""
    settings = Settings(database_url=database_url, nats_url=None, master_key=MASTER_KEY, db_pool_size=4)
    async with open_services(settings) as first, open_services(settings) as second:
        await ensure_program(first)
        yield [first, second]


async def enrol(services: Services, value: str) -> uuid.UUID:
    outcome = await members.enrol(services, ctx(), Enrol(identities=[Identity(kind="phone", value=value)]))
    assert outcome.status == 201
    return outcome.result.member_id


async def test_commands_racing_on_two_instances_are_retried_not_refused(
    two_instances: list[Services],
) -> None:
    first, second = two_instances
    member_id = await enrol(first, "+8613812345678")
    # Both instances hold the member in their caches: each will be stale after the other writes.
    await second.repository.member(member_id)

    replies = await asyncio.gather(
        *(
            ledger.earn(
                two_instances[i % 2],
                ctx(),
                EarnPurchase(member_id=member_id, order_ref=f"X-{i}", amount=Decimal("10"), currency="CNY"),
            )
            for i in range(40)
        )
    )

    assert [r.status for r in replies] == [201] * 40
    for services in two_instances:
        services.repository.forget(member_id)
    member = await first.repository.member(member_id)
    assert member is not None
    assert len(member.orders) == 40
    assert member.version == 1 + 40  # enrolment and 40 earns (400 points: no tier change)
    assert member.lifetime_earned == 400


async def test_redemptions_on_two_instances_never_overspend(two_instances: list[Services]) -> None:
    first, second = two_instances
    member_id = await enrol(first, "+8613812345679")
    await ledger.earn(
        first,
        ctx(),
        EarnPurchase(member_id=member_id, order_ref="SEED", amount=Decimal("500"), currency="CNY"),
    )
    await second.repository.member(member_id)

    results = await asyncio.gather(
        *(
            ledger.redeem(two_instances[i % 2], ctx(), Redeem(member_id=member_id, points=40))
            for i in range(30)
        ),
        return_exceptions=True,
    )

    succeeded = [r for r in results if not isinstance(r, BaseException)]
    assert len(succeeded) == 500 // 40
    assert all(type(r).__name__ == "InsufficientPoints" for r in results if isinstance(r, BaseException))


async def test_a_long_stream_is_loaded_from_a_snapshot_equal_to_its_replay(
    two_instances: list[Services],
) -> None:
    services = two_instances[0]
    member_id = await enrol(services, "+8613812345670")
    for i in range(SNAPSHOT_AFTER + 5):
        await ledger.earn(
            services,
            ctx(),
            EarnPurchase(member_id=member_id, order_ref=f"S-{i}", amount=Decimal("1"), currency="CNY"),
        )
    services.repository.forget(member_id)

    from_events = await services.repository.member(member_id)  # replays everything, then snapshots
    async with services.pool.acquire() as conn:
        snapshot_version = await conn.fetchval(
            "SELECT stream_version FROM snapshots WHERE stream_id = $1", member_id
        )
    services.repository.forget(member_id)
    from_snapshot = await services.repository.member(member_id)

    assert snapshot_version == from_events.version  # type: ignore[union-attr]
    assert from_snapshot == from_events
    assert isinstance(from_snapshot, Member)
    assert from_snapshot.identities[0].value == "+8613812345670"


async def test_personal_data_is_never_stored_in_the_clear(two_instances: list[Services]) -> None:
    services = two_instances[0]
    phone = "+8613987654321"
    member_id = await enrol(services, phone)
    await members.link_identity(
        services,
        ctx(),
        LinkIdentity(member_id=member_id, identity=Identity(kind="email", value="secret.person@x.cn")),
    )
    for i in range(SNAPSHOT_AFTER):
        await ledger.earn(
            services,
            ctx(),
            EarnPurchase(member_id=member_id, order_ref=f"P-{i}", amount=Decimal("1"), currency="CNY"),
        )
    services.repository.forget(member_id)
    await services.repository.member(member_id)  # takes a snapshot

    async with services.pool.acquire() as conn:
        dump = b"".join(
            [
                *[r["data"] for r in await conn.fetch("SELECT data FROM events")],
                *[r["data"] for r in await conn.fetch("SELECT data FROM snapshots")],
                *[bytes(r["value_hash"]) for r in await conn.fetch("SELECT value_hash FROM identities")],
            ]
        )
        assert await conn.fetchval("SELECT count(*) FROM snapshots") == 1
    for secret in (phone, phone[1:], "secret.person", "13987654321"):
        assert secret.encode() not in dump
    # ...and yet the member reads back whole.
    member = await services.repository.member(member_id)
    assert member is not None
    assert [i.value for i in member.identities] == [phone, "secret.person@x.cn"]


async def test_a_member_without_its_key_replays_with_personal_data_unreadable(
    two_instances: list[Services], database_url: str
) -> None:
    services = two_instances[0]
    member_id = await enrol(services, "+8613811112222")
    await ledger.earn(
        services,
        ctx(),
        EarnPurchase(member_id=member_id, order_ref="K-1", amount=Decimal("50"), currency="CNY"),
    )
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "UPDATE member_keys SET wrapped_key = NULL, shredded_at = now() WHERE member_id = $1", member_id
        )
    finally:
        await conn.close()
    fresh = Settings(database_url=database_url, nats_url=None, master_key=MASTER_KEY, db_pool_size=2)
    async with open_services(fresh) as restarted:
        member = await restarted.repository.member(member_id)

    assert member is not None
    assert member.identities == []
    assert member.lifetime_earned == 50


async def test_idempotency_records_past_24_hours_are_pruned(two_instances: list[Services]) -> None:
    services = two_instances[0]
    member_id = await enrol(services, "+8613811113333")
    async with services.pool.acquire() as conn:
        await conn.execute("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
        await ledger.earn(
            services,
            ctx(),
            EarnPurchase(member_id=member_id, order_ref="FRESH", amount=Decimal("1"), currency="CNY"),
        )

        pruned = await services.idempotency.prune()

        assert pruned == 1  # the enrolment's record, not the fresh earn's
        assert await conn.fetchval("SELECT count(*) FROM idempotency_keys") == 1


async def test_a_refusal_is_never_decided_on_a_stale_cached_copy(two_instances: list[Services]) -> None:
    first, second = two_instances
    member_id = await enrol(first, "+8613812345600")
    await second.repository.member(member_id)  # cached there with no points
    await ledger.earn(
        first,
        ctx(),
        EarnPurchase(member_id=member_id, order_ref="FRESH-1", amount=Decimal("100"), currency="CNY"),
    )

    # The second instance's copy says 0 points; the store says 100: the redemption goes through.
    outcome = await ledger.redeem(second, ctx(), Redeem(member_id=member_id, points=60))

    assert outcome.result.balance.available == 40
