"""Fixtures for end-to-end API tests: the real app on a fresh database, named after states."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest_asyncio
import uvicorn
from litestar import Litestar

from service.app import create_app
from service.config import Settings

ADMIN_KEY = "test-admin-" + secrets.token_hex(8)


@dataclass
class Api:
    """The app under test, with helpers that speak its API."""

    client: httpx.AsyncClient
    app: Litestar

    @property
    def services(self) -> Any:
        return self.app.state.services

    async def post(self, path: str, body: Any, *, key: str, idem: str | None = None, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": idem or uuid.uuid4().hex}
        return await self.client.post(path, json=body, headers=headers, **kw)

    async def get(self, path: str, *, key: str, headers: dict[str, str] | None = None, **kw: Any) -> Any:
        return await self.client.get(
            path, headers={"Authorization": f"Bearer {key}", **(headers or {})}, **kw
        )

    async def channel_key(self, channel: str, scopes: list[str], kind: str = "pos") -> str:
        """Register a channel (if new) and return a fresh API key for it."""
        await self.post("/v1/channels", {"id": channel, "name": channel, "kind": kind}, key=ADMIN_KEY)
        response = await self.post("/v1/api-keys", {"channel": channel, "scopes": scopes}, key=ADMIN_KEY)
        assert response.status_code == 201, response.text
        return str(response.json()["key"])

    async def last_position(self) -> int:
        return int(await self.services.store.last_position())

    async def enrol(self, key: str, phone: str | None = None) -> str:
        phone = phone or f"+8613{secrets.randbelow(10**9):09d}"
        response = await self.post(
            "/v1/members", {"identities": [{"kind": "phone", "value": phone}]}, key=key
        )
        assert response.status_code == 201, response.text
        return str(response.json()["member_id"])


def settings_for(database_url: str, nats_url: str) -> Settings:
    # A stream of its own per test: JetStream refuses two streams with overlapping subjects.
    stream = uuid.uuid4().hex[:12]
    return Settings(
        stream_name=f"LOYALTY_{stream}",
        subject_prefix=f"test.{stream}.events",
        audit_subject=f"test.{stream}.audit.checkpoint",
        database_url=database_url,
        nats_url=nats_url,
        admin_key=ADMIN_KEY,
        master_key=base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        db_pool_size=8,
        read_wait_seconds=0.5,
        followers="inline",  # the in-process app leads the relay and projections itself
    )


@contextlib.asynccontextmanager
async def serving(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    """Serve the app with uvicorn on a free loopback port, on this event loop (so the app's pool
    and the test share a loop), and yield an HTTP client for it."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="on", log_config=None, access_log=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # start-up failed: raise its error
            raise RuntimeError("server stopped during start-up")
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        server.should_exit = True
        await task


@pytest_asyncio.fixture
async def api(database_url: str, nats_url: str) -> AsyncIterator[Api]:
    """A freshly started service on an empty database, over real HTTP."""
    app = create_app(settings_for(database_url, nats_url), log_requests=False)
    async with serving(app) as client:
        yield Api(client, app)


@dataclass
class Pos:
    """A store POS channel with a key for the everyday scopes."""

    api: Api
    key: str


@pytest_asyncio.fixture
async def pos(api: Api) -> Pos:
    key = await api.channel_key("pos-sh-01", ["read", "earn", "redeem", "members"])
    return Pos(api, key)


@dataclass
class MemberWithPoints:
    """A member who earned 1,000 points (one purchase of 1000.00 CNY) at the POS."""

    api: Api
    key: str
    member_id: str


@pytest_asyncio.fixture
async def member_with_points(pos: Pos) -> MemberWithPoints:
    member_id = await pos.api.enrol(pos.key)
    response = await pos.api.post(
        f"/v1/members/{member_id}/earn",
        {"order_ref": f"seed-{member_id}", "amount": "1000.00", "currency": "CNY"},
        key=pos.key,
    )
    assert response.status_code == 201, response.text
    assert response.json()["balance"]["available"] == 1000
    return MemberWithPoints(pos.api, pos.key, member_id)
