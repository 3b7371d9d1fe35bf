"""Events as CloudEvents 1.0 (structured JSON) for NATS, and the schemas of their `data`.

One source of truth: each event type's `data` Struct is generated from the domain event class's
own annotations (the attributes the store records), minus the library's bookkeeping, with the
class's `personal_fields` rewritten to their redacted form. The relay encodes with these Structs
and the AsyncAPI document takes its schemas from the same Structs, so a field added to a domain
event appears on the wire and in the document at once, and cannot drift between them.

Personal data is never broadcast in the clear: a NATS stream cannot be crypto-shredded when a
member is forgotten. A personal field holding identities keeps only their kinds (`{"kind":
"phone"}`); any other personal field (e.g. the profile) is left out of `data` altogether.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from datetime import datetime
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar, Union
from uuid import UUID

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from domain.events import LedgerAggregate, event_type
from domain.identities import Identity
from domain.program import PROGRAM_ID

SPECVERSION: Literal["1.0"] = "1.0"
DEFAULT_SOURCE = "urn:loyalty-ledger"
DEFAULT_SUBJECT_PREFIX = "loyalty.events"
DATACONTENTTYPE: Literal["application/json"] = "application/json"
PROGRAM_SUBJECT = "program"

# Set by eventsourcing on every event; the envelope carries them (subject, streamversion, time).
BOOKKEEPING = frozenset({"originator_id", "originator_version", "timestamp", "originator_topic"})

D = TypeVar("D")
AwareDatetime = Annotated[datetime, Meta(tz=True)]


class CloudEvent(Struct, Generic[D], kw_only=True, omit_defaults=True):
    """A CloudEvents 1.0 event (structured JSON); `position`, `streamversion`, `channel`,
    `hash` and `globalhash` are extension attributes."""

    # No defaults on the constants, on purpose: `omit_defaults` (so that an absent channel is
    # left out, not sent as null, which CloudEvents forbids) would drop them from every message.
    specversion: Literal["1.0"]
    id: UUID
    source: str
    type: str
    subject: str
    time: AwareDatetime
    datacontenttype: Literal["application/json"]
    data: D
    # Global log position: strictly increasing in commit order, the subscriber's checkpoint.
    position: int
    # The member's (or program's) stream version: per-subject order, no gaps.
    streamversion: int
    channel: str | UnsetType = UNSET
    # The event's stream hash and the log's global hash at `position` (hex; ADR 14): a subscriber
    # checks the global chain, globalhash = sha256(previous globalhash || position || hash), and
    # compares it with the signed checkpoints.
    hash: str | UnsetType = UNSET
    globalhash: str | UnsetType = UNSET
    # W3C trace context of the event's cause (CloudEvents distributed-tracing extension): a
    # subscriber continues that trace. Absent when its cause was not traced.
    traceparent: str | UnsetType = UNSET


class RedactedIdentity(Struct, frozen=True, kw_only=True):
    """An identity with its value removed: only its kind is broadcast."""

    kind: str


def ce_type(name: str) -> str:
    """CloudEvents `type` of an event type: `loyalty.points_earned.v1`."""
    return f"loyalty.{name}.v1"


def subject_token(stream_id: UUID) -> str:
    """The last subject token (and CloudEvents `subject`): the member id, or `program`."""
    return PROGRAM_SUBJECT if stream_id == PROGRAM_ID else str(stream_id)


def nats_subject(name: str, stream_id: UUID, prefix: str = DEFAULT_SUBJECT_PREFIX) -> str:
    """`loyalty.events.<event_type>.<member_id>` (or `.program`)."""
    return f"{prefix}.{name}.{subject_token(stream_id)}"


# -- data Structs generated from the domain event classes --------------------------------------


class DataType(typing.NamedTuple):
    """How one event class's attributes become its `data`."""

    struct: type[Struct]
    # (attribute, redactor or None): the attributes that go into `data`, in order.
    fields: tuple[tuple[str, typing.Callable[[Any], Any] | None], ...]


def _contains(tp: Any, target: type) -> bool:
    if tp is target:
        return True
    return any(_contains(arg, target) for arg in typing.get_args(tp))


def _wire_type(tp: Any) -> Any:
    """The annotation as sent: Identity redacted; datetimes documented as RFC 3339 with offset
    (the domain's are always aware; plain `datetime` has no `format` in msgspec's schema)."""
    if tp is Identity:
        return RedactedIdentity
    if tp is datetime:
        return AwareDatetime
    origin = typing.get_origin(tp)
    if origin is None:
        return tp
    args = tuple(_wire_type(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return functools.reduce(lambda a, b: a | b, args)
    return origin[args]


def _redact_value(value: Any) -> Any:
    if isinstance(value, Identity):
        return RedactedIdentity(kind=value.kind)
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    return value


def event_doc(cls: type) -> str:
    """The event class's docstring (eventsourcing's generated subclasses carry a dataclass
    signature instead: skip those)."""
    for klass in cls.__mro__:
        doc = klass.__dict__.get("__doc__")
        if doc and not doc.startswith(f"{klass.__name__}("):
            return inspect.cleandoc(doc)
    return cls.__name__


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


_data_types: dict[str, DataType] = {}


def data_type(cls: type) -> DataType:
    """The `data` Struct (and how to fill it) of a domain event class; one per event type."""
    name = event_type(cls)
    # Keyed by name: eventsourcing makes several classes per event (one per aggregate
    # binding), all with the same annotations; they share one Struct (one schema name).
    found = _data_types.get(name)
    if found is None:
        found = _data_types[name] = _build_data_type(name, cls)
    return found


def _build_data_type(name: str, cls: type) -> DataType:
    hints = typing.get_type_hints(cls)
    personal = set(getattr(cls, "personal_fields", ()))
    fields: list[tuple[str, Any]] = []
    plan: list[tuple[str, Any]] = []
    for attr, tp in hints.items():
        if attr in BOOKKEEPING or typing.get_origin(tp) is ClassVar or tp is ClassVar:
            continue
        if attr in personal:
            if not _contains(tp, Identity):
                continue  # personal data we cannot usefully redact: leave it out entirely
            # None as well: a forgotten member's personal fields read as None (key shredded).
            fields.append((attr, _wire_type(tp) | None))
            plan.append((attr, _redact_value))
        else:
            if _contains(tp, Identity):
                # A class forgot to list a field in personal_fields: refuse to broadcast it.
                raise TypeError(f"{cls.__qualname__}.{attr} holds identities but is not personal")
            fields.append((attr, _wire_type(tp)))
            plan.append((attr, None))
    struct = msgspec.defstruct(f"{_camel(name)}Data", fields, kw_only=True, frozen=True, module=__name__)
    struct.__doc__ = event_doc(cls)
    return DataType(struct, tuple(plan))


def event_data(event: Any) -> Struct:
    """A domain event's `data`: its attributes, personal ones redacted."""
    dt = data_type(type(event))
    values = {}
    for attr, redact in dt.fields:
        value = getattr(event, attr, None)
        values[attr] = value if redact is None or value is None else redact(value)
    return dt.struct(**values)


# -- the envelope -----------------------------------------------------------------------------


class Envelope(typing.Protocol):
    """What the envelope needs of a recorded event (service.store.event_store.RecordedEvent)."""

    @property
    def position(self) -> int: ...
    @property
    def event_id(self) -> UUID: ...
    @property
    def stream_id(self) -> UUID: ...
    @property
    def stream_version(self) -> int: ...
    @property
    def event_type(self) -> str: ...
    @property
    def channel(self) -> str | None: ...
    @property
    def recorded_at(self) -> datetime: ...
    @property
    def event(self) -> Any: ...
    @property
    def hash(self) -> bytes | None: ...
    @property
    def global_hash(self) -> bytes | None: ...
    def traceparent(self) -> str | None: ...


def to_cloudevent(recorded: Envelope, *, source: str = DEFAULT_SOURCE) -> CloudEvent[Any]:
    """The CloudEvent of one recorded event."""
    return CloudEvent(
        specversion=SPECVERSION,
        id=recorded.event_id,
        source=source,
        type=ce_type(recorded.event_type),
        subject=subject_token(recorded.stream_id),
        time=recorded.recorded_at,
        datacontenttype=DATACONTENTTYPE,
        data=event_data(recorded.event),
        position=recorded.position,
        streamversion=recorded.stream_version,
        channel=recorded.channel if recorded.channel is not None else UNSET,
        hash=recorded.hash.hex() if recorded.hash is not None else UNSET,
        globalhash=recorded.global_hash.hex() if recorded.global_hash is not None else UNSET,
        traceparent=recorded.traceparent or UNSET,
    )


_encoder = msgspec.json.Encoder()


def encode(recorded: Envelope, *, source: str = DEFAULT_SOURCE) -> bytes:
    """The message body: the CloudEvent as JSON."""
    return _encoder.encode(to_cloudevent(recorded, source=source))


def decode(body: bytes) -> CloudEvent[dict[str, Any]]:
    """Parse a message body (data left as a dict); for subscribers and tests."""
    return msgspec.json.decode(body, type=CloudEvent[dict[str, Any]])


# -- the catalogue of event types --------------------------------------------------------------

_IGNORED_NAMES = {"Event", "Created"}  # the aggregates' own base classes, never recorded


def event_classes() -> dict[str, tuple[type, str]]:
    """Every recorded event type: name -> (class, subject kind `member` or `program`)."""
    from domain.member import Member
    from domain.program import Program

    found: dict[str, tuple[type, str]] = {}
    for aggregate, kind in ((Member, "member"), (Program, "program")):
        for attr, value in vars(aggregate).items():
            if (
                isinstance(value, type)
                and issubclass(value, LedgerAggregate.Event)
                and attr not in _IGNORED_NAMES
            ):
                found.setdefault(event_type(value), (value, kind))
    return dict(sorted(found.items()))
