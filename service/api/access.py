"""/v1/channels and /v1/api-keys (scope admin)."""

from __future__ import annotations

from uuid import UUID

from litestar import Controller, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from service.handlers.errors import InvalidInput, NotFound
from service.services import Services
from service.store.access import Channel, ChannelExists, UnknownChannel

from .auth import requires
from .errors import problem
from .schemas import ApiKeyIn, ApiKeyOut, ChannelIn, ChannelOut


class AccessController(Controller):
    path = "/v1"
    tags = ["access"]
    guards = [requires("admin")]

    @post("/channels", status_code=201, summary="Register a sales channel")
    async def create_channel(
        self, data: JSONBody[ChannelIn], services: NamedDependency[Services]
    ) -> Response[ChannelOut] | ChannelOut:
        try:
            await services.access.create_channel(Channel(data.id, data.name, data.kind))
        except ChannelExists:
            return problem(409, "channel_exists", "Channel exists", f"channel {data.id!r} already exists")
        return ChannelOut(id=data.id, name=data.name, kind=data.kind)

    @get("/channels", summary="All channels")
    async def list_channels(self, services: NamedDependency[Services]) -> list[ChannelOut]:
        return [ChannelOut(id=c.id, name=c.name, kind=c.kind) for c in await services.access.channels()]

    @post("/api-keys", status_code=201, summary="Create an API key (shown only in this response)")
    async def create_key(self, data: JSONBody[ApiKeyIn], services: NamedDependency[Services]) -> ApiKeyOut:
        try:
            key_id, key = await services.access.create_key(
                channel=data.channel, scopes=list(data.scopes), name=data.name
            )
        except UnknownChannel:
            raise InvalidInput([("channel", f"no channel {data.channel!r}; create it first")]) from None
        return ApiKeyOut(
            key_id=key_id, key=key, channel=data.channel, scopes=sorted(set(data.scopes)), name=data.name
        )

    @delete("/api-keys/{key_id:uuid}", status_code=204, summary="Revoke an API key")
    async def revoke_key(self, key_id: FromPath[UUID], services: NamedDependency[Services]) -> None:
        if not await services.access.revoke_key(key_id):
            raise NotFound(f"no active API key {key_id}")
