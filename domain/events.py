"""What all ledger events share: record time from the edge, personal fields, type names."""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable
from typing import Any, ClassVar, Concatenate, ParamSpec, TypeVar
from uuid import UUID

from eventsourcing.domain import (
    Aggregate,
    CanMutateAggregate,
    DecoratedFuncCaller,
    decorated_func_callers,
    decorated_funcs,
)

_WORD_START = re.compile(r"(?<!^)(?=[A-Z])")

P = ParamSpec("P")
A = TypeVar("A", bound="LedgerAggregate")


def event_type(cls: type) -> str:
    """Public event type: snake_case of the class name (PointsEarned -> points_earned)."""
    return event_type_named(cls.__name__)


def event_type_named(class_name: str) -> str:
    """`event_type` of a class known only by its name (e.g. from a stored topic)."""
    return _WORD_START.sub("_", class_name).lower()


class LedgerAggregate(Aggregate):
    """Base of the ledger's aggregates: events are stamped with their `at`, not the clock."""

    class Event(Aggregate.Event):
        """An event of a ledger aggregate."""

        # Attributes holding personal data; the store encrypts exactly these.
        personal_fields: ClassVar[tuple[str, ...]] = ()

    class Created(Event, Aggregate.Created):
        """The first event of a ledger aggregate."""

    def trigger_event(
        self,
        event_class: type[CanMutateAggregate[UUID]],
        **kwargs: Any,
    ) -> None:
        """Record an event whose timestamp is its `at` (time enters at the edge)."""
        if kwargs.get("timestamp") is None:
            kwargs["timestamp"] = kwargs["at"]
        super().trigger_event(event_class, **kwargs)

    def _record(
        self, event_class: type[Any], body: Callable[..., None] | None, fields: dict[str, Any]
    ) -> None:
        """Record an event of `event_class` from all its `fields`: built once, applied by `body`
        (the `@event` method's own body, which replay calls too), as `trigger_event` would."""
        if body is None:  # an event class that applies itself some other way: the library's path
            self.trigger_event(event_class, **fields)
            return
        version = self.version + 1
        recorded = event_class(
            originator_id=self.id, originator_version=version, timestamp=fields["at"], **fields
        )
        body(self, **fields)
        self.version = version
        self.modified_on = recorded.timestamp
        self.pending_events.append(recorded)


def recorded_directly(method: Callable[Concatenate[A, P], None]) -> Callable[Concatenate[A, P], None]:
    """The `@event` method `method`, recording its event without the library's per-call work
    (binding the method, coercing and filtering its arguments, reading them back from the event
    to apply it): the same event class, the same fields, applied by the same body, so the same
    stored event. Keyword arguments only; a field left out takes its default, which the event
    class and the body must share (checked once, on the first call)."""
    resolved: list[tuple[type[Any], Callable[..., None] | None]] = []
    name = getattr(getattr(method, "decorated_func", method), "__name__", "record")

    def record(aggregate: A, /, *args: P.args, **fields: P.kwargs) -> None:
        if args:
            raise TypeError(f"{name}() takes keyword arguments only")
        if not resolved:
            resolved.append(_resolve(method))
        event_class, body = resolved[0]
        aggregate._record(event_class, body, fields)

    record.__name__ = record.__qualname__ = f"record{name}"
    return record


def _resolve(method: Callable[..., None]) -> tuple[type[Any], Callable[..., None] | None]:
    """The event class of an `@event` method and the body that applies it (None when the event
    class applies itself other than by calling the body, as the library would)."""
    event_class: type[Any] = decorated_func_callers[method]  # type: ignore[index]
    body = decorated_funcs[event_class]
    own = {f.name: f.default for f in dataclasses.fields(event_class) if f.init}
    for name in ("originator_id", "originator_version", "timestamp"):
        own.pop(name)
    params = {n: p.default for n, p in inspect.signature(body).parameters.items() if n != "self"}
    if set(own) != set(params) or any(
        p is not inspect.Parameter.empty and own[n] != p for n, p in params.items()
    ):
        raise TypeError(f"{body.__qualname__} and {event_class.__qualname__} differ in their fields")
    plain = (
        event_class.mutate is CanMutateAggregate.mutate
        and event_class.apply is DecoratedFuncCaller.apply
        and next(
            c
            for c in event_class.__mro__[event_class.__mro__.index(DecoratedFuncCaller) + 1 :]
            if "apply" in vars(c)
        )
        is CanMutateAggregate
    )
    return event_class, body if plain else None
