"""/v1/channels and /v1/api-keys (scope admin).

Channels and keys live beside the log, not in it; their creation honours Idempotency-Key like
every other state-changing POST (a retried key creation answers with the same key, never mints
a second one). The answer to a key creation holds the secret, so its record is kept encrypted.
"""

from __future__ import annotations

from uuid import UUID

import asyncpg
import msgspec
from litestar import Controller, Response, delete, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody

from service.handlers.context import CommandContext
from service.handlers.errors import ChannelExists, IdempotencyKeyReused, InvalidInput, NotFound
from service.services import Services
from service.store import access as store
from service.store.access import Channel, Once, UnknownChannel

from .auth import command_context, requires
from .responses import encoded
from .schemas import ApiKeyIn, ApiKeyOut, ChannelIn, ChannelOut

_encode = msgspec.json.Encoder().encode


def _once(ctx: CommandContext) -> Once:
    assert ctx.idempotency_key is not None  # command_context requires it on every POST
    return Once(ctx.channel, ctx.idempotency_key, ctx.request_hash)


class AccessController(Controller):
    path = "/v1"
    tags = ["access"]
    guards = [requires("admin")]
    dependencies = {"ctx": Provide(command_context)}

    @post("/channels", status_code=201, summary="Register a sales channel")
    async def create_channel(
        self,
        data: JSONBody[ChannelIn],
        services: NamedDependency[Services],
        ctx: NamedDependency[CommandContext],
    ) -> Response[ChannelOut]:
        async def act(conn: asyncpg.Connection) -> bytes:
            try:
                await services.access.create_channel(Channel(data.id, data.name, data.kind), conn)
            except store.ChannelExists:
                raise ChannelExists(data.id) from None
            return _encode(ChannelOut(id=data.id, name=data.name, kind=data.kind))

        try:
            answer = await services.access.once(_once(ctx), 201, act)
        except store.IdempotencyKeyReused:
            raise IdempotencyKeyReused() from None
        return encoded(answer.status, answer.body, replayed=answer.replayed)

    @get("/channels", summary="All channels")
    async def list_channels(self, services: NamedDependency[Services]) -> list[ChannelOut]:
        return [ChannelOut(id=c.id, name=c.name, kind=c.kind) for c in await services.access.channels()]

    @post("/api-keys", status_code=201, summary="Create an API key (shown only in this response)")
    async def create_key(
        self,
        data: JSONBody[ApiKeyIn],
        services: NamedDependency[Services],
        ctx: NamedDependency[CommandContext],
    ) -> Response[ApiKeyOut]:
        async def act(conn: asyncpg.Connection) -> bytes:
            try:
                key_id, key = await services.access.create_key(
                    channel=data.channel, scopes=list(data.scopes), name=data.name, conn=conn
                )
            except UnknownChannel:
                raise InvalidInput([("channel", f"no channel {data.channel!r}; create it first")]) from None
            return _encode(
                ApiKeyOut(
                    key_id=key_id,
                    key=key,
                    channel=data.channel,
                    scopes=sorted(set(data.scopes)),
                    name=data.name,
                )
            )

        keyring = services.keyring
        try:
            answer = await services.access.once(
                _once(ctx), 201, act, seal=keyring.seal_record, unseal=keyring.open_record
            )
        except store.IdempotencyKeyReused:
            raise IdempotencyKeyReused() from None
        return encoded(answer.status, answer.body, replayed=answer.replayed)

    @delete("/api-keys/{key_id:uuid}", status_code=204, summary="Revoke an API key")
    async def revoke_key(self, key_id: FromPath[UUID], services: NamedDependency[Services]) -> None:
        if not await services.access.revoke_key(key_id):
            raise NotFound(f"no active API key {key_id}")
