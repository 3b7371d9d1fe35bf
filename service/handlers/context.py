"""What every command carries from the edge: who, when, and its idempotency key."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandContext:
    """The caller and the clock, supplied by the HTTP edge so the domain stays deterministic."""

    channel: str
    api_key_id: str
    now: datetime
    request_id: str
    scopes: frozenset[str] = frozenset()
    idempotency_key: str | None = None
    request_hash: bytes = b""
