"""The hash chains of the log: each stream's, and the global one along positions (ADR 14).

Every stored event carries two SHA-256 hashes:

- `hash`, its stream's chain: `sha256(hash of the stream's previous event || content)`, the
  first event of a stream chained to 32 zero bytes;
- `global_hash`, the log's chain: `sha256(global_hash at the previous position || position as
  8 bytes || hash)`, position 1 chained to 32 zero bytes.

`content` is the event's row as stored, every column but the two hashes and the position (the
global chain binds the position), in this order and framing (integers big-endian, signed):

    event_id (16 bytes) · stream_id (16) · stream_version (4) · event_type · topic · data ·
    channel · api_key_id · correlation_id · causation_id · occurred_at (8) · recorded_at (8)

where a text or `data` is its length (4 bytes) then its bytes (text as UTF-8), a missing
(NULL) text is the length -1 alone, and a time is microseconds since 2000-01-01 UTC (what
PostgreSQL's `timestamptz_send` writes). `data` is the stored bytes, personal fields sealed:
forgetting a member destroys a key and changes no byte, so no hash changes.

Migration 0010 computes the same hashes in SQL for the events stored before it (a test proves
both agree); the appender computes them in Python as it assigns positions.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from hashlib import sha256
from typing import Any
from uuid import UUID

GENESIS = bytes(32)  # the "previous hash" of a stream's first event and of position 1

_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_NULL = (-1).to_bytes(4, "big", signed=True)


def _text(value: str | None) -> bytes:
    if value is None:
        return _NULL
    raw = value.encode()
    return len(raw).to_bytes(4, "big") + raw


def _time(at: datetime) -> bytes:
    if at.tzinfo is None:  # as asyncpg stores a naive datetime in a timestamptz: UTC
        at = at.replace(tzinfo=UTC)
    return ((at - _EPOCH) // _MICROSECOND).to_bytes(8, "big", signed=True)


def content(
    event_id: UUID,
    stream_id: UUID,
    stream_version: int,
    event_type: str,
    topic: str,
    data: bytes,
    channel: str | None,
    api_key_id: str | None,
    correlation_id: str | None,
    causation_id: str | None,
    occurred_at: datetime,
    recorded_at: datetime,
) -> bytes:
    """The bytes of a stored event that its stream hash covers (see the module docstring)."""
    return b"".join(
        (
            event_id.bytes,
            stream_id.bytes,
            stream_version.to_bytes(4, "big", signed=True),
            _text(event_type),
            _text(topic),
            len(data).to_bytes(4, "big"),
            data,
            _text(channel),
            _text(api_key_id),
            _text(correlation_id),
            _text(causation_id),
            _time(occurred_at),
            _time(recorded_at),
        )
    )


def row_content(row: Any) -> bytes:
    """`content` of a row (a record or mapping with the events table's column names)."""
    return content(
        row["event_id"],
        row["stream_id"],
        row["stream_version"],
        row["event_type"],
        row["topic"],
        row["data"],
        row["channel"],
        row["api_key_id"],
        row["correlation_id"],
        row["causation_id"],
        row["occurred_at"],
        row["recorded_at"],
    )


def _text_sql(column: str) -> str:
    utf8 = f"convert_to({column}, 'UTF8')"
    return f"int4send(octet_length({utf8})) || {utf8}"


def _optional_sql(column: str) -> str:
    return f"coalesce({_text_sql(column)}, int4send(-1))"


# `content` computed by PostgreSQL from a row of `events` (one expression; a test proves it equal
# to `content`): the verifier reads it instead of the columns, which halves what it costs.
CONTENT_SQL = " || ".join(
    (
        "uuid_send(event_id)",
        "uuid_send(stream_id)",
        "int4send(stream_version)",
        _text_sql("event_type"),
        _text_sql("topic"),
        "int4send(octet_length(data)) || data",
        _optional_sql("channel"),
        _optional_sql("api_key_id"),
        _optional_sql("correlation_id"),
        _optional_sql("causation_id"),
        "timestamptz_send(occurred_at)",
        "timestamptz_send(recorded_at)",
    )
)


def stream_hash(previous: bytes, event_content: bytes) -> bytes:
    """The stream chain's hash of an event, after `previous` (GENESIS for a stream's first)."""
    return sha256(previous + event_content).digest()


def global_hash(previous: bytes, position: int, event_hash: bytes) -> bytes:
    """The global chain's hash at `position`, after `previous` (GENESIS before position 1)."""
    return sha256(previous + position.to_bytes(8, "big", signed=True) + event_hash).digest()


def checkpoint_message(position: int, global_hash_at: bytes, signed_at: datetime) -> bytes:
    """The bytes a checkpoint's Ed25519 signature covers: one line of ASCII,
    `loyalty-audit-checkpoint/v1 <position> <global hash, hex> <signed_at, µs since the Unix epoch>`."""
    micros = (signed_at - _UNIX_EPOCH) // _MICROSECOND
    return f"loyalty-audit-checkpoint/v1 {position} {global_hash_at.hex()} {micros}".encode()


_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


__all__ = [
    "CONTENT_SQL",
    "GENESIS",
    "checkpoint_message",
    "content",
    "global_hash",
    "row_content",
    "stream_hash",
]
