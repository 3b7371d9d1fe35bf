"""Segment changes on NATS: the `segment_transitions` outbox as CloudEvents, for marketing automation.

The `segments` projection records each change of a member's segments in `segment_transitions`,
in the transaction that changes the member's row (projections/segments.py): a change that was
not committed is never there, and each committed one is there once. `SegmentFeed` is that table
as a relay's feed: a second `Relay` (its own advisory lock and checkpoint, `segments_relay`)
publishes it in `sequence` order, once, to a stream of its own (SPEC §5: `LOYALTY_SEGMENTS`,
subjects `loyalty.segments.<segment>.<member_id>`), with the relay's de-duplication and
alignment. The message's `position` is the transition's sequence (the subscriber's checkpoint);
`data.log_position` is the ledger position the change was decided at.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

import asyncpg
import msgspec
from msgspec import Struct

from projections.segments import NOTIFY_CHANNEL, SEGMENTS
from service.config import Settings

from . import cloudevents
from .relay import Outgoing

FEED_NAME = "segments_relay"  # the relay's checkpoint and follower name
SEGMENTS_RELAY_LOCK = 0x5345474D454E5453  # "SEGMENTS": one active segments relay per database
ENTERED = cloudevents.ce_type("segment_entered")
LEFT = cloudevents.ce_type("segment_left")


def stream_name(settings: Settings) -> str:
    """`<LOYALTY_STREAM_NAME>_SEGMENTS` (LOYALTY_SEGMENTS by default)."""
    return f"{settings.stream_name}_SEGMENTS"


def subject_prefix(events_prefix: str) -> str:
    """The segments' subjects beside the events' (`loyalty.events` -> `loyalty.segments`), never
    under them: two streams may not share subjects."""
    head, _, last = events_prefix.rpartition(".")
    return f"{head}.segments" if head and last == "events" else f"{events_prefix}_segments"


class SegmentChange(Struct, frozen=True, kw_only=True):
    """A member entered or left a segment."""

    member_id: UUID
    segment: str
    # When the change took effect (the event that caused it, or the instant time moved it).
    at: cloudevents.AwareDatetime
    # The ledger's log position it was decided at: a read with min_position=log_position sees it.
    log_position: int


class SegmentEvent(Struct, kw_only=True):
    """A CloudEvents 1.0 event (structured JSON) of a segment change; `position` (extension) is
    its place in the segments stream, gapless and increasing: the subscriber's checkpoint."""

    specversion: Literal["1.0"]
    id: UUID
    source: str
    type: str
    subject: str
    time: cloudevents.AwareDatetime
    datacontenttype: Literal["application/json"]
    data: SegmentChange
    position: int


_encoder = msgspec.json.Encoder()
_COLUMNS = "sequence, transition_id, member_id, segment, entered, at, position, recorded_at"


class SegmentFeed:
    """`segment_transitions` as a relay's feed (service/bus/relay.py, `Feed`)."""

    name = FEED_NAME
    lock = SEGMENTS_RELAY_LOCK
    notify_channel = NOTIFY_CHANNEL
    description = "Loyalty ledger segment changes (CloudEvents 1.0), one per change, in order."

    def __init__(self, subject_prefix: str, source: str = cloudevents.DEFAULT_SOURCE) -> None:
        self._prefix = subject_prefix
        self._source = source

    async def read(self, conn: asyncpg.Connection, *, after: int, limit: int) -> list[Outgoing]:
        rows = await conn.fetch(
            f"SELECT {_COLUMNS} FROM segment_transitions WHERE sequence > $1 ORDER BY sequence LIMIT $2",
            after,
            limit,
        )
        return [self._outgoing(r) for r in rows]

    def _outgoing(self, r: asyncpg.Record) -> Outgoing:
        event = SegmentEvent(
            specversion=cloudevents.SPECVERSION,
            id=r["transition_id"],
            source=self._source,
            type=ENTERED if r["entered"] else LEFT,
            subject=str(r["member_id"]),
            time=r["at"],
            datacontenttype=cloudevents.DATACONTENTTYPE,
            data=SegmentChange(
                member_id=r["member_id"], segment=r["segment"], at=r["at"], log_position=r["position"]
            ),
            position=r["sequence"],
        )
        subject = f"{self._prefix}.{r['segment']}.{r['member_id']}"
        return Outgoing(
            r["sequence"], str(r["transition_id"]), subject, _encoder.encode(event), r["recorded_at"]
        )

    async def head(self, conn: asyncpg.Connection) -> int:
        return int(await conn.fetchval("SELECT coalesce(max(sequence), 0) FROM segment_transitions"))

    async def recorded_at(self, conn: asyncpg.Connection, position: int) -> datetime | None:
        at: datetime | None = await conn.fetchval(
            "SELECT recorded_at FROM segment_transitions WHERE sequence = $1", position
        )
        return at

    async def message_id(self, conn: asyncpg.Connection, position: int) -> str | None:
        found = await conn.fetchval(
            "SELECT transition_id FROM segment_transitions WHERE sequence = $1", position
        )
        return None if found is None else str(found)


def decode(body: bytes) -> SegmentEvent:
    """Parse a message body (for subscribers and tests)."""
    return msgspec.json.decode(body, type=SegmentEvent)


__all__ = [
    "ENTERED",
    "FEED_NAME",
    "LEFT",
    "SEGMENTS",
    "SegmentChange",
    "SegmentEvent",
    "SegmentFeed",
    "decode",
    "stream_name",
    "subject_prefix",
]
