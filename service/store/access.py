"""Channels and API keys: who may call, for which channel, with which scopes."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from uuid import UUID, uuid4

import asyncpg

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


class UnknownChannel(LookupError):
    pass


class ChannelExists(Exception):
    pass


def _hash(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def new_key_secret() -> str:
    return "lk_" + secrets.token_urlsafe(32)


class Access:
    """Channel and key records, with a short-lived cache of authenticated keys."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._cache: dict[bytes, tuple[float, Principal | None]] = {}

    async def authenticate(self, key: str) -> Principal | None:
        """The principal of a valid, unrevoked key; None otherwise."""
        digest = _hash(key)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and now - hit[0] < _CACHE_SECONDS:
            return hit[1]
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT key_id, channel, scopes FROM api_keys WHERE secret_hash = $1 AND revoked_at IS NULL",
                digest,
            )
        principal = (
            None if row is None else Principal(row["key_id"], row["channel"], frozenset(row["scopes"]))
        )
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (now, principal)
        return principal

    async def create_channel(self, channel: Channel) -> None:
        async with self._pool.acquire() as conn:
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
        self, *, channel: str, scopes: list[str], name: str | None, secret: str | None = None
    ) -> tuple[UUID, str]:
        """A new key for a channel: (key id, the key itself — shown only this once)."""
        key_id, secret = uuid4(), secret or new_key_secret()
        async with self._pool.acquire() as conn:
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
