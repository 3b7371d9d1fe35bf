"""What all ledger events share: record time from the edge, personal fields, type names."""

from __future__ import annotations

import re
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.domain import Aggregate, CanMutateAggregate

_WORD_START = re.compile(r"(?<!^)(?=[A-Z])")


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
