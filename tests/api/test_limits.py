"""Limits that keep one caller from taking the service away from the others: 429 + Retry-After."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time

import asyncpg

from service.api.auth import Gate
from service.app import create_app
from tests.api.conftest import ADMIN_KEY, Api, serving, settings_for
from tests.waiting import until


async def test_a_key_over_its_rate_limit_gets_429_with_retry_after(database_url: str, nats_url: str) -> None:
    settings = dataclasses.replace(settings_for(database_url, nats_url), rate_limit_per_key=5)
    app = create_app(settings, log_requests=False)
    async with serving(app) as client:
        api = Api(client, app)
        reader = await api.channel_key("dashboard", ["read"], kind="internal")

        answers = [await api.get("/v1/program", key=reader) for _ in range(30)]

        statuses = [a.status_code for a in answers]
        # A burst of two seconds' worth (10) passes, then the bucket refills at 5 a second.
        assert statuses.count(200) >= 10
        limited = [a for a in answers if a.status_code == 429]
        assert limited, statuses
        assert int(limited[0].headers["Retry-After"]) >= 1
        assert limited[0].headers["content-type"].startswith("application/problem+json")
        # Another key is not held back by the first one's limit.
        assert (await api.get("/v1/program", key=ADMIN_KEY)).status_code == 200


async def test_a_flood_of_made_up_keys_is_braked_without_a_lookup_each(api: Api) -> None:
    known = await api.channel_key("dashboard", ["read"], kind="internal")
    assert (await api.get("/v1/program", key=known)).status_code == 200  # now cached

    started = time.monotonic()
    guesses = await asyncio.gather(*(api.get("/v1/program", key=secrets.token_hex(16)) for _ in range(120)))
    took = time.monotonic() - started

    statuses = [g.status_code for g in guesses]
    assert set(statuses) == {401, 429}, statuses
    # The burst of failures an address is allowed, and what its bucket refilled meanwhile (a
    # loaded machine takes seconds over the 120 requests).
    allowed = Gate.FAILURE_BURST + Gate.FAILURES_PER_SECOND * took
    assert statuses.count(401) <= allowed, (statuses.count(401), took)
    assert all(int(g.headers["Retry-After"]) >= 1 for g in guesses if g.status_code == 429)
    # The keys this address is known to hold keep working meanwhile.
    assert (await api.get("/v1/program", key=known)).status_code == 200


async def test_the_rate_limit_can_be_switched_off(database_url: str, nats_url: str) -> None:
    settings = dataclasses.replace(settings_for(database_url, nats_url), rate_limit_per_key=0)
    app = create_app(settings, log_requests=False)
    async with serving(app) as client:
        api = Api(client, app)
        answers = await asyncio.gather(*(api.get("/v1/program", key=ADMIN_KEY) for _ in range(50)))
        assert {a.status_code for a in answers} == {200}


async def test_many_requests_with_one_key_not_cached_share_one_lookup(api: Api, database_url: str) -> None:
    # 64 tills start at once with a key the service has not cached (at start-up, or each time
    # the cache entry lapses): one lookup serves them all, and none is taken for a guesser.
    till = await api.channel_key("pos-eu", ["read"], kind="pos")
    locker = await asyncpg.connect(database_url)
    try:
        async with locker.transaction():
            await locker.execute("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE")  # lookups wait
            requests = [asyncio.create_task(api.get("/v1/program", key=till)) for _ in range(64)]
            await until(lambda: _lookups_waiting(locker), what="a key lookup waiting on the lock")
            # Every request is in the service (uvicorn runs each in a task of this loop) and has
            # taken its first step, to the gate, before the lookup may finish.
            await until(
                lambda: _requests_in_service() + sum(r.done() for r in requests) == 64,
                what="all 64 requests in the service or answered",
            )
            for _ in range(3):
                await asyncio.sleep(0)
        answers = await asyncio.gather(*requests)
        assert [a.status_code for a in answers] == [200] * 64, [
            a.text for a in answers if a.status_code != 200
        ]
    finally:
        await locker.close()


def _requests_in_service() -> int:
    return sum(1 for task in asyncio.all_tasks() if "run_asgi" in repr(task.get_coro()))


async def _lookups_waiting(conn: asyncpg.Connection) -> bool:
    waiting = await conn.fetchval(
        "SELECT count(*) FROM pg_locks WHERE relation = 'api_keys'::regclass AND NOT granted"
    )
    return bool(waiting)
