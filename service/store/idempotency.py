"""Idempotency records: the first successful answer to (channel, Idempotency-Key), for 24 h.

They are written by the appender with the command's events; this module reads them before a
command decides (so a retried redemption is answered from the record, not decided again) and
prunes expired ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from .appender import IdempotencyKeyReused

RETENTION = "24 hours"


@dataclass(frozen=True, slots=True)
class StoredReply:
    status: int
    response: bytes
    position: int


class IdempotencyRecords:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def lookup(self, channel: str, key: str, request_hash: bytes) -> StoredReply | None:
        """The first answer to this key, or None; IdempotencyKeyReused if the request differs."""
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT request_hash, status, response, position FROM idempotency_keys"
                f" WHERE channel = $1 AND key = $2 AND created_at > now() - interval '{RETENTION}'",
                channel,
                key,
            )
        if row is None:
            return None
        if row["request_hash"] != request_hash:
            raise IdempotencyKeyReused(key)
        return StoredReply(row["status"], row["response"], row["position"])

    async def prune(self) -> int:
        """Delete records past their retention; returns how many."""
        async with self._pool.acquire() as conn:
            result = await conn.execute(
                f"DELETE FROM idempotency_keys WHERE created_at < now() - interval '{RETENTION}'"
            )
        return int(result.split()[-1])
