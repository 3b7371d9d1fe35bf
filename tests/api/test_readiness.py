"""/health/ready: says ready only when it is, and comes back by itself when its checks recover.

A leader (followers inline: it runs the relay and the projections) and a watcher (followers
elsewhere, like the request process of `loyalty serve`) share a database and a stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import nats
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import NotFoundError

from service.app import create_app
from service.config import Settings
from tests.api.conftest import Api, serving, settings_for
from tests.waiting import until


def failing(body: dict[str, Any]) -> list[str]:
    return sorted(name for name, check in body["checks"].items() if not check["ok"])


async def readiness(client: httpx.AsyncClient) -> httpx.Response:
    return await client.get("/health/ready")


async def is_ready(client: httpx.AsyncClient) -> bool:
    return (await readiness(client)).status_code == 200


@contextlib.asynccontextmanager
async def leader_and_watcher(settings: Settings) -> AsyncIterator[tuple[Api, Api]]:
    leader_app = create_app(settings, log_requests=False)
    watcher_app = create_app(dataclasses.replace(settings, followers="off"), log_requests=False)
    async with serving(leader_app) as leader, serving(watcher_app) as watcher:
        yield Api(leader, leader_app), Api(watcher, watcher_app)


async def test_ready_only_once_the_stream_exists(database_url: str, nats_url: str) -> None:
    settings = settings_for(database_url, nats_url)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    # Another stream on the same subjects: JetStream refuses to create the service's stream.
    blocker = f"BLOCK_{settings.stream_name}"
    await js.add_stream(
        StreamConfig(name=blocker, subjects=[f"{settings.subject_prefix}.>"], storage=StorageType.MEMORY)
    )
    try:
        async with leader_and_watcher(settings) as (leader_api, watcher_api):
            leader, watcher = leader_api.client, watcher_api.client
            for client in (leader, watcher):
                response = await readiness(client)
                body = response.json()
                assert response.status_code == 503, body
                assert failing(body) == ["stream"], body
                assert body["checks"]["stream"]["exists"] is False
                assert body["checks"]["nats"]["connected"] is True

            await js.delete_stream(blocker)

            # The relay creates the stream now; once the leader says ready, a subscriber finds it.
            await until(lambda: is_ready(leader), within=10, what="the leader ready")
            info = await js.stream_info(settings.stream_name)
            assert info.config.subjects == [f"{settings.subject_prefix}.>"]
            await until(lambda: is_ready(watcher), within=10, what="the watcher ready")
            body = (await readiness(watcher)).json()
            assert body["status"] == "ok"
            assert body["checks"]["stream"] == {"ok": True, "name": settings.stream_name, "exists": True}
            assert body["checks"]["relay"]["max_lag_seconds"] == settings.ready_max_relay_lag_seconds
    finally:
        for name in (blocker, settings.stream_name):
            with contextlib.suppress(NotFoundError):
                await js.delete_stream(name)
        await nc.close()


async def test_a_watcher_is_ready_again_once_the_projections_can_be_read(
    database_url: str, nats_url: str
) -> None:
    async with leader_and_watcher(settings_for(database_url, nats_url)) as (leader, watcher):
        await until(lambda: is_ready(watcher.client), within=10, what="the watcher ready")
        conn = await asyncpg.connect(database_url)
        try:
            # The checkpoints become unreadable: every read of them fails.
            await conn.execute("ALTER TABLE checkpoints RENAME TO checkpoints_away")
            response = await readiness(watcher.client)
            body = response.json()
            assert response.status_code == 503, response.text
            assert "projection:balances" in failing(body)
            assert body["checks"]["database"]["ok"] is True
            # Wait for the watcher's runner to have failed to follow the leader (no public
            # view of it while the table is away: its status is read from that table).
            slot = watcher.services.projections._slots["balances"]
            await until(lambda: slot.error is not None, within=10, what="the watcher to fail")
        finally:
            await conn.execute("ALTER TABLE checkpoints_away RENAME TO checkpoints")
            await conn.close()

        # Back to 200 by itself: the failure is over for the watcher too, not only the leader.
        await until(lambda: is_ready(leader.client), within=10, what="the leader ready again")
        await until(lambda: is_ready(watcher.client), within=10, what="the watcher ready again")
        assert "error" not in (await readiness(watcher.client)).json()["checks"]["projection:balances"]


async def test_readiness_answers_in_time_when_the_pool_is_exhausted(api: Api) -> None:
    pool = api.services.pool
    held = [await pool.acquire() for _ in range(api.services.settings.db_pool_size)]
    try:
        # Bounded: a probe that hangs is as bad as a wrong answer to a load balancer.
        response = await asyncio.wait_for(readiness(api.client), timeout=5)
        body = response.json()
        assert response.status_code == 503, response.text
        assert body["status"] == "unavailable"
        assert body["checks"]["database"] == {"ok": False, "error": "TimeoutError"}
        assert "projection:balances" in failing(body)
    finally:
        for conn in held:
            await pool.release(conn)
    await until(lambda: is_ready(api.client), within=10, what="ready again")


async def test_not_ready_while_no_relay_publishes_and_ready_once_one_catches_up(
    database_url: str, nats_url: str
) -> None:
    settings = dataclasses.replace(settings_for(database_url, nats_url), ready_max_relay_lag_seconds=1.0)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    try:
        # Only a watcher at first: nobody publishes what its start-up committed.
        watcher_app = create_app(dataclasses.replace(settings, followers="off"), log_requests=False)
        async with serving(watcher_app) as watcher:
            await js.add_stream(watcher_app.state.services.relay.stream_config())
            response = await until(
                lambda: _not_ready(watcher), within=10, what="the relay's lag past its limit"
            )
            body = response.json()
            assert failing(body) == ["relay"], body
            assert body["checks"]["relay"]["lag_events"] > 0
            # Not ready past 1.0 s; the figure shown is rounded to the millisecond (1.0004 -> 1.0).
            assert body["checks"]["relay"]["lag_seconds"] >= 1.0

            # A relay takes the lead and publishes the backlog: ready again by itself.
            async with serving(create_app(settings, log_requests=False)):
                await until(lambda: is_ready(watcher), within=10, what="the watcher ready")
                assert (await readiness(watcher)).json()["checks"]["relay"]["lag_events"] == 0
    finally:
        with contextlib.suppress(NotFoundError):
            await js.delete_stream(settings.stream_name)
        await nc.close()


async def _not_ready(client: httpx.AsyncClient) -> httpx.Response | None:
    response = await readiness(client)
    return response if response.status_code == 503 else None
