"""Domain events <-> stored bytes, through the eventsourcing library's Mapper.

The library's `Mapper` + `JSONTranscoder` do the mapping (and upcasting, via each event
class's `class_version`/`upcast_vN_vN+1`). Decoding first tries a msgspec decoder made for
the event's class (`TypedStateDecoder`), which reads the same stored JSON straight into typed
values; whatever it does not accept takes the library's path. On top of it, the attributes
an event class names in `personal_fields` (and an aggregate class in `personal_fields` for its
snapshots) are sealed with the member's own data key before they reach the transcoder, so no
personal value is ever stored in the clear. An unreadable value (the member's key was
shredded) decodes as None.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import operator
import types
import typing
from collections.abc import Callable, Hashable
from datetime import date, datetime
from decimal import Decimal
from typing import Any, cast
from uuid import UUID

import msgspec
from eventsourcing.domain import Snapshot
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    Mapper,
    StoredEvent,
    Transcoding,
    TranscodingNotRegisteredError,
    UUIDAsHex,
    find_id_convertor,
)
from eventsourcing.utils import resolve_topic

from domain import PERSISTED_STRUCTS

from .keys import Keyring

_SEALED = "sealed:v1:"


class _DateAsISO(Transcoding):
    type = date
    name = "date_iso"

    def encode(self, obj: date) -> str:
        return obj.isoformat()

    def decode(self, data: str) -> date:
        return date.fromisoformat(data)


class _StructAsDict(Transcoding):
    """A msgspec Struct as its builtins; types are restored from the Struct's annotations."""

    def __init__(self, cls: type[msgspec.Struct]) -> None:
        self.type = cls
        self.name = cls.__name__

    def encode(self, obj: msgspec.Struct) -> Any:
        return msgspec.to_builtins(obj)

    def decode(self, data: Any) -> msgspec.Struct:
        return msgspec.convert(data, self.type)


def make_transcoder() -> FastJSONTranscoder:
    """The one transcoder used for every stored event and snapshot."""
    transcoder = FastJSONTranscoder()
    for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO(), _DateAsISO()):
        transcoder.register(transcoding)
    for struct in PERSISTED_STRUCTS:
        transcoder.register(_StructAsDict(struct))
    return transcoder


class FastJSONTranscoder(JSONTranscoder):
    """The library's JSONTranscoder, decoding with msgspec: same format, same result, ~2x faster.

    json's object_hook calls Python for every JSON object; here msgspec parses in C and only
    the `{"_type_", "_data_"}` objects are turned into their types, inner ones first (as the
    hook does). The library's own datetime, Decimal and UUID transcodings are called as the
    functions they wrap. Encoding writes the library's bytes with msgspec (`encode`).
    """

    _parse = staticmethod(msgspec.json.Decoder().decode)
    _write = staticmethod(msgspec.json.Encoder().encode)

    def __init__(self) -> None:
        super().__init__()
        self._revivers: dict[str, Callable[[Any], Any]] = {}
        self._wrappers: dict[type, Callable[[Any], Any]] = {}
        self._instants: dict[tuple[datetime, Any], str] = {}
        self._iso = False  # datetimes are written by the library's DatetimeAsISO

    def register(self, transcoding: Transcoding) -> None:
        super().register(transcoding)
        self._revivers[transcoding.name] = _SHORTCUTS.get(type(transcoding), transcoding.decode)
        self._wrappers[transcoding.type] = transcoding.encode
        if transcoding.type is datetime:
            self._iso = type(transcoding) is DatetimeAsISO

    def encode(self, obj: Any) -> bytes:
        """The library's bytes, written by msgspec: each value of a registered type becomes its
        `{"_type_", "_data_"}` object first (as the library's `default` hook makes it), then
        msgspec writes JSON as `json` does here (no whitespace, non-ASCII as UTF-8, the same
        escapes). A value whose JSON could differ (a float, a subclass, a key that is not a
        string) or that it does not know takes the library's path."""
        try:
            return self._write(self._plain(obj))
        except (_NotPlain, RecursionError):
            return super().encode(obj)

    def _plain(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is dict:
            plain = {}
            for key, value in obj.items():
                if type(key) is not str:
                    raise _NotPlain
                kind = type(value)
                plain[key] = value if kind in _SCALARS else self._plain(value)
            return plain
        if kind in _SCALARS:
            return obj
        if kind is list or kind is tuple:
            return [value if type(value) in _SCALARS else self._plain(value) for value in obj]
        if kind is datetime and self._iso:
            # The same few instants recur (an event's `at`, `timestamp`, its business times;
            # a batch's items share the request's time), and isoformat() is slow (printf).
            # Keyed with the zone too: equal instants in two zones are written differently.
            instant = (obj, obj.tzinfo)
            text = self._instants.get(instant)
            if text is None:
                if len(self._instants) >= 4096:
                    self._instants.clear()
                text = self._instants[instant] = obj.isoformat()
            return {"_type_": "datetime_iso", "_data_": text}
        wrap = self._wrappers.get(kind)
        if wrap is None:
            raise _NotPlain
        return {"_type_": self.types[kind].name, "_data_": self._plain(wrap(obj))}

    def decode(self, data: bytes) -> Any:
        return self.revive(self._parse(data))

    def revive(self, obj: Any) -> Any:
        """A parsed JSON value with its `{"_type_", "_data_"}` objects turned into their types."""
        kind = type(obj)
        if kind is dict:
            return self._revive_dict(obj)
        return self._revive_list(obj) if kind is list else obj

    def _revive_dict(self, obj: dict[str, Any]) -> Any:
        if len(obj) == 2 and "_type_" in obj and "_data_" in obj:
            name, data = obj["_type_"], obj["_data_"]
            kind = type(data)
            if kind is dict:
                data = self._revive_dict(data)
            elif kind is list:
                data = self._revive_list(data)
            reviver = self._revivers.get(name)
            if reviver is None:
                raise TranscodingNotRegisteredError(
                    f"Data serialized with name {name!r} is not deserializable"
                )
            return reviver(data)
        for key, value in obj.items():
            kind = type(value)
            if kind is dict:
                obj[key] = self._revive_dict(value)
            elif kind is list:
                obj[key] = self._revive_list(value)
        return obj

    def _revive_list(self, obj: list[Any]) -> list[Any]:
        out = []
        for value in obj:
            kind = type(value)
            if kind is dict:
                value = self._revive_dict(value)
            elif kind is list:
                value = self._revive_list(value)
            out.append(value)
        return out


# Values JSON writes the same from json and msgspec, as they are (not floats: their text differs).
_SCALARS = frozenset((str, int, bool, type(None)))


class _NotPlain(Exception):
    """A value the msgspec path of FastJSONTranscoder.encode leaves to the library."""


# The library's transcodings that only wrap a constructor (same result, no method call).
_SHORTCUTS: dict[type, Callable[[Any], Any]] = {
    DatetimeAsISO: datetime.fromisoformat,
    DecimalAsStr: Decimal,
    UUIDAsHex: UUID,
}


# Registered transcodings whose reviver msgspec reproduces when decoding into the type itself
# (from the strings they write). Struct transcodings (msgspec.convert) are added per struct.
_TYPED_TRANSCODINGS: tuple[type[Transcoding], ...] = (DatetimeAsISO, DecimalAsStr, UUIDAsHex, _DateAsISO)


class TypedStateDecoder:
    """Decodes the stored state of one event class with msgspec, into the types its fields name.

    Same format, same result as the transcoder (the library's path), about three times faster:
    a field of a transcoded type (datetime, Decimal, UUID, date, a persisted Struct) is read as
    its `{"_type_": name, "_data_": ...}` wrapper and unwrapped; a field of a type it does not
    know, and every personal field, is read as JSON and revived by the transcoder. The state
    must have exactly the class's fields: anything else (an older schema, a `class_version`
    for upcasting, an unexpected shape) raises, and the caller then takes the library's path.
    The unwrapping is one generated expression per class (one dict display, no call per field).
    """

    def __init__(self, cls: type, transcoder: FastJSONTranscoder) -> None:
        self._transcoder = transcoder
        hints = typing.get_type_hints(cls)
        personal = set(getattr(cls, "personal_fields", ()))
        spec: list[tuple[str, Any]] = []
        items: list[str] = []
        for f in dataclasses.fields(cls):
            if f.name in ("originator_id", "originator_version"):
                continue  # not stored in the state: the Mapper takes them from the row
            typed, unwrap = (Any, _revived) if f.name in personal else self._typed(hints[f.name])
            spec.append((f.name, typed))
            items.append(f"{f.name!r}: {unwrap(f's.{f.name}', 0)}")
        struct = msgspec.defstruct(f"{cls.__name__}State", spec, forbid_unknown_fields=True)
        self._decode = msgspec.json.Decoder(struct).decode
        namespace: dict[str, Any] = {"revive": transcoder.revive, "value": operator.attrgetter("value")}
        exec(f"def unwrap(s):\n    return {{{', '.join(items)}}}", namespace)  # noqa: S102 -- our own source
        self._unwrap: Callable[[Any], dict[str, Any]] = namespace["unwrap"]

    def __call__(self, data: bytes) -> dict[str, Any]:
        """The event's state (fields in the class's order, as they are encoded)."""
        return self._unwrap(self._decode(data))

    def _typed(self, hint: Any) -> tuple[Any, Unwrap]:
        # (the type msgspec decodes, the expression of the value from that of msgspec's result)
        if hint in (str, int, bool):
            return hint, _same
        wrapper = self._wrapper(hint)
        if wrapper is not None:
            return wrapper, _wrapped
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if origin in (typing.Union, types.UnionType) and len(args) == 2 and type(None) in args:
            inner, unwrap = self._typed(args[0] if args[1] is type(None) else args[1])
            if unwrap is _same:
                return inner | None, _same
            return inner | None, lambda x, d: f"(None if {x} is None else {unwrap(x, d)})"
        if origin is list and len(args) == 1:
            inner, unwrap = self._typed(args[0])
            if unwrap is _same:
                return list[inner], _same  # type: ignore[valid-type]
            if unwrap is _wrapped:  # the common case, without a comprehension's frame
                return list[inner], lambda x, _: f"list(map(value, {x}))"  # type: ignore[valid-type]
            return list[inner], lambda x, d: f"[{unwrap(f'v{d}', d + 1)} for v{d} in {x}]"  # type: ignore[valid-type]
        if origin is dict and len(args) == 2 and args[0] is str:
            inner, unwrap = self._typed(args[1])
            if unwrap is _same:
                return dict[str, inner], _same  # type: ignore[valid-type]
            return (
                dict[str, inner],  # type: ignore[valid-type]
                lambda x, d: f"{{k{d}: {unwrap(f'v{d}', d + 1)} for k{d}, v{d} in {x}.items()}}",
            )
        return Any, _revived

    def _wrapper(self, hint: Any) -> type[msgspec.Struct] | None:
        transcoding = self._transcoder.types.get(hint) if isinstance(hint, type) else None
        if transcoding is None or not isinstance(transcoding, (*_TYPED_TRANSCODINGS, _StructAsDict)):
            return None
        return msgspec.defstruct(
            f"{transcoding.name}Wrapped",
            [("value", hint)],
            tag_field="_type_",
            tag=transcoding.name,
            rename={"value": "_data_"},
            forbid_unknown_fields=True,
        )


# The Python expression of a field's value, from the expression of what msgspec decoded and the
# nesting depth (which names the comprehension variables).
Unwrap = Callable[[str, int], str]


def _same(x: str, _: int) -> str:
    return x


def _revived(x: str, _: int) -> str:
    return f"revive({x})"


def _wrapped(x: str, _: int) -> str:
    return f"{x}.value"


def _personal_fields(event: object) -> tuple[str, ...]:
    cls = event if isinstance(event, type) else type(event)
    return tuple(getattr(cls, "personal_fields", ()))


class EventCodec:
    """Encodes and decodes domain events (and snapshots) for the store."""

    def __init__(self, keyring: Keyring) -> None:
        self._keyring = keyring
        self._transcoder = make_transcoder()
        self._mapper: Mapper[UUID] = Mapper(transcoder=self._transcoder)
        # Per topic: its class, its typed decoder (None: the Mapper's path), its personal fields.
        self._typed: dict[str, tuple[type, TypedStateDecoder | None, tuple[str, ...]]] = {}

    def encode(self, event: Any, member_key: bytes | None) -> StoredEvent:
        """Map a domain event to a StoredEvent, sealing its personal fields."""
        if isinstance(event, Snapshot):
            aggregate_cls = resolve_topic(event.topic)
            names = tuple(getattr(aggregate_cls, "personal_fields", ()))
            if names:
                state = dict(event.state)
                for name in names:
                    # Nothing personal in an empty value: kept as it is, so that a snapshot of a
                    # forgotten member (whose key may be gone, or about to be) reads back as empty.
                    if name in state and state[name] not in (None, []):
                        state[name] = self._seal(event.originator_id, member_key, state[name])
                event = _with(event, state=state)
        else:
            names = _personal_fields(event)
            if names:
                event = _with(
                    event,
                    **{n: self._seal(event.originator_id, member_key, getattr(event, n)) for n in names},
                )
        return self._mapper.to_stored_event(event)

    def decode(self, stored: StoredEvent, member_key: bytes | None) -> Any:
        """Map a StoredEvent back to its domain event, opening sealed fields when the key allows."""
        return self.decode_parts(
            cast(UUID, stored.originator_id),
            stored.originator_version,
            stored.topic,
            stored.state,
            member_key,
        )

    def decode_parts(
        self, stream_id: UUID, version: int, topic: str, data: bytes, member_key: bytes | None
    ) -> Any:
        """`decode` of a stored event given as its columns (no StoredEvent is built when typed)."""
        if type(stream_id) is not UUID:
            # asyncpg's own UUID class (a stream id read from a row): it would become the
            # aggregate's id, which later events carry, and only uuid.UUID is transcoded.
            stream_id = UUID(int=stream_id.int)
        try:
            cls, typed, personal = self._typed[topic]
        except KeyError:
            cls, typed, personal = self._typed[topic] = self._plan(topic)
        state = None
        if typed is not None:
            try:
                state = typed(data)
            except Exception:  # not its shape: the library decodes it (or says why not)
                state = None
        if state is None:
            return self._open_all(
                self._mapper.to_domain_event(StoredEvent(stream_id, version, topic, data)), member_key
            )
        # What Mapper.to_domain_event does after decoding (no upcasting: class_version is 1).
        originator_id = cast(UUID, find_id_convertor(cls, cast(Hashable, type(stream_id)))(stream_id))
        for name in personal:
            state[name] = self._open(originator_id, member_key, state[name])
        state["originator_id"] = originator_id
        state["originator_version"] = version
        event: Any = object.__new__(cls)
        object.__setattr__(event, "__dict__", state)
        return event

    def _open_all(self, event: Any, member_key: bytes | None) -> Any:
        if isinstance(event, Snapshot):
            aggregate_cls = resolve_topic(event.topic)
            state = event.state
            # Unreadable (the key was shredded): what the aggregate declares its field holds then
            # (its identities an empty list, not None: the aggregate goes on using them).
            shredded = getattr(aggregate_cls, "shredded_values", {})
            for name in getattr(aggregate_cls, "personal_fields", ()):
                if name in state:
                    value = self._open(event.originator_id, member_key, state[name])
                    state[name] = copy.deepcopy(shredded.get(name)) if value is None else value
        else:
            for name in _personal_fields(event):
                value = self._open(event.originator_id, member_key, getattr(event, name))
                object.__setattr__(event, name, value)
        return event

    def _plan(self, topic: str) -> tuple[type, TypedStateDecoder | None, tuple[str, ...]]:
        cls: type = resolve_topic(topic)
        typed: TypedStateDecoder | None = None
        # Upcasting (class_version > 1), snapshots and anything not a dataclass stay with the library.
        plain = getattr(cls, "class_version", 1) == 1 and not issubclass(cls, Snapshot)
        if plain and dataclasses.is_dataclass(cls):
            try:
                typed = TypedStateDecoder(cls, self._transcoder)
            except (TypeError, NameError, KeyError):  # hints it cannot resolve or type
                typed = None
        return cls, typed, _personal_fields(cls)

    def _seal(self, member_id: UUID, key: bytes | None, value: Any) -> str:
        if key is None:
            raise ValueError(f"no data key for member {member_id}: cannot store personal data")
        plain = self._transcoder.encode(value)
        return _SEALED + base64.b64encode(Keyring.encrypt(key, member_id, plain)).decode()

    def _open(self, member_id: UUID, key: bytes | None, value: Any) -> Any:
        if not (isinstance(value, str) and value.startswith(_SEALED)):
            return value
        if key is None:
            return None
        cipher = base64.b64decode(value[len(_SEALED) :])
        return self._transcoder.decode(Keyring.decrypt(key, member_id, cipher))


def _with(event: Any, **changes: Any) -> Any:
    """A copy of a frozen event with some attributes replaced (as the Mapper builds them)."""
    clone = object.__new__(type(event))
    object.__setattr__(clone, "__dict__", {**vars(event), **changes})
    return clone
