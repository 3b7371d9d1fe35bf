"""Channels and API keys: who may call, for which channel, with which scopes."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from uuid import UUID, uuid4

import asyncpg

from .appender import IdempotencyKeyReused

SCOPES = (
    "read",
    "earn",
    "award",
    "redeem",
    "adjust",
    "transfer",
    "members",
    "privacy",
    "rules",
    "analytics",
    "audit",
    "admin",
)
CHANNEL_KINDS = (
    "pos",
    "app",
    "web",
    "mini_program",
    "marketplace",
    "delivery",
    "social",
    "partner",
    "internal",
)
ADMIN_CHANNEL = "admin"
_CACHE_SECONDS = 5.0  # how long a revoked key may still be accepted by an instance
_UNKNOWN_CACHE_SECONDS = 30.0  # how long an unknown key is answered 401 without a lookup
_LOOKUPS = 4  # uncached key lookups at once: the rest of the pool stays with the commands


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller behind an API key."""

    key_id: UUID
    channel: str
    scopes: frozenset[str]


@dataclass(frozen=True, slots=True)
class Channel:
    id: str
    name: str
    kind: str


class LookupRefused(Exception):
    """The key is not cached and looking it up was not allowed."""


class UnknownChannel(LookupError):
    pass


class ChannelExists(Exception):
    pass


def _hash(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def new_key_secret() -> str:
    return "lk_" + secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class Once:
    """A request's Idempotency-Key (per calling channel) and the fingerprint of its body."""

    channel: str
    key: str
    request_hash: bytes


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    replayed: bool


_ONCE_LOCK = 0x4C4B4559  # "LKEY": advisory-lock namespace (int4) of admin idempotency keys


class Access:
    """Channel and key records, with a short-lived cache of authenticated keys."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._cache: dict[bytes, tuple[float, Principal | None]] = {}
        self._lookups = asyncio.Semaphore(_LOOKUPS)
        self._lookups_under_way: dict[bytes, asyncio.Future[Principal | None]] = {}

    async def authenticate(self, key: str, *, look_up: bool = True) -> Principal | None:
        """The principal of a valid, unrevoked key; None otherwise. Without `look_up`, only the
        cache and a lookup of the same key already under way answer, and otherwise LookupRefused.

        Concurrent callers with one key share one lookup: when a key's cache entry lapses under
        load, the tills using it would otherwise each query, and each count against their
        address's brake on guessed keys (64 connections of one till server got 429s).
        """
        digest = _hash(key)
        hit = self._cache.get(digest)
        if hit is not None:
            trusted_for = _CACHE_SECONDS if hit[1] else _UNKNOWN_CACHE_SECONDS
            if time.monotonic() - hit[0] < trusted_for:
                return hit[1]
        lookup = self._lookups_under_way.get(digest)
        if lookup is None:
            if not look_up:
                raise LookupRefused()
            lookup = asyncio.ensure_future(self._look_up(digest))
            self._lookups_under_way[digest] = lookup
            lookup.add_done_callback(lambda done: self._lookup_done(digest, done))
        # Shielded: a caller that goes away (its client hung up) does not cancel the others' lookup.
        return await asyncio.shield(lookup)

    def _lookup_done(self, digest: bytes, lookup: asyncio.Future[Principal | None]) -> None:
        self._lookups_under_way.pop(digest, None)
        if not lookup.cancelled():
            lookup.exception()  # retrieved: when every caller went away, no "never retrieved" warning

    async def _look_up(self, digest: bytes) -> Principal | None:
        started = time.monotonic()  # a revoked key is trusted at most _CACHE_SECONDS after its lookup began
        async with self._lookups, self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT key_id, channel, scopes FROM api_keys WHERE secret_hash = $1 AND revoked_at IS NULL",
                digest,
            )
        principal = (
            None if row is None else Principal(row["key_id"], row["channel"], frozenset(row["scopes"]))
        )
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (started, principal)
        return principal

    async def once(
        self,
        once: Once,
        status: int,
        act: Callable[[asyncpg.Connection], Awaitable[bytes]],
        *,
        seal: Callable[[bytes], bytes] = bytes,
        unseal: Callable[[bytes], bytes] = bytes,
    ) -> Answer:
        """Run `act` (a change of channels or keys) once per Idempotency-Key: its answer is kept
        (through `seal`) in the same transaction, and a retry within 24 h gets it again.

        These records are not events: channels and keys live beside the log, not in it.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            # Two retries racing: the second waits here and then finds the first one's record.
            await conn.execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2 || ':' || $3))",  # no channel id has a colon
                _ONCE_LOCK,
                once.channel,
                once.key,
            )
            row = await conn.fetchrow(
                "SELECT request_hash, status, response FROM idempotency_keys WHERE channel = $1"
                " AND key = $2 AND created_at > now() - interval '24 hours'",
                once.channel,
                once.key,
            )
            if row is not None:
                if row["request_hash"] != once.request_hash:
                    raise IdempotencyKeyReused(once.key)
                return Answer(row["status"], unseal(row["response"]), replayed=True)
            body = await act(conn)
            await conn.execute(
                "INSERT INTO idempotency_keys (channel, key, request_hash, status, response, position)"
                " VALUES ($1, $2, $3, $4, $5, 0) ON CONFLICT (channel, key) DO UPDATE SET"
                " request_hash = EXCLUDED.request_hash, status = EXCLUDED.status,"
                " response = EXCLUDED.response, position = 0, created_at = now()",
                once.channel,
                once.key,
                once.request_hash,
                status,
                seal(body),
            )
        return Answer(status, body, replayed=False)

    async def create_channel(self, channel: Channel, conn: asyncpg.Connection | None = None) -> None:
        """Register a channel; ChannelExists if its id is taken (on `conn` when given)."""
        async with contextlib.AsyncExitStack() as stack:
            if conn is None:
                conn = await stack.enter_async_context(self._pool.acquire())
            done = await conn.execute(
                "INSERT INTO channels (id, name, kind) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                channel.id,
                channel.name,
                channel.kind,
            )
        if done.endswith(" 0"):
            raise ChannelExists(channel.id)

    async def channels(self) -> list[Channel]:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch("SELECT id, name, kind FROM channels ORDER BY id")
        return [Channel(r["id"], r["name"], r["kind"]) for r in rows]

    async def create_key(
        self,
        *,
        channel: str,
        scopes: list[str],
        name: str | None,
        secret: str | None = None,
        conn: asyncpg.Connection | None = None,
    ) -> tuple[UUID, str]:
        """A new key for a channel: (key id, the key itself — shown only this once)."""
        key_id, secret = uuid4(), secret or new_key_secret()
        async with contextlib.AsyncExitStack() as stack:
            if conn is None:
                conn = await stack.enter_async_context(self._pool.acquire())
            try:
                await conn.execute(
                    "INSERT INTO api_keys (key_id, channel, scopes, name, secret_hash)"
                    " VALUES ($1, $2, $3, $4, $5)",
                    key_id,
                    channel,
                    sorted(set(scopes)),
                    name,
                    _hash(secret),
                )
            except asyncpg.ForeignKeyViolationError:
                raise UnknownChannel(channel) from None
        return key_id, secret

    async def revoke_key(self, key_id: UUID) -> bool:
        async with self._pool.acquire() as conn:
            done = await conn.execute(
                "UPDATE api_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL", key_id
            )
        self._cache.clear()
        return not done.endswith(" 0")

    async def ensure_admin_key(self, secret: str) -> bool:
        """Create the admin channel and an all-scopes key with this value, unless it exists."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO channels (id, name, kind) VALUES ($1, 'Administration', 'internal')"
                " ON CONFLICT DO NOTHING",
                ADMIN_CHANNEL,
            )
            exists = await conn.fetchval("SELECT 1 FROM api_keys WHERE secret_hash = $1", _hash(secret))
            if exists:
                return False
            await conn.execute(
                "INSERT INTO api_keys (key_id, channel, scopes, name, secret_hash)"
                " VALUES ($1, $2, $3, 'admin (LOYALTY_ADMIN_KEY)', $4)",
                uuid4(),
                ADMIN_CHANNEL,
                list(SCOPES),
                _hash(secret),
            )
        return True
