"""The eventsourcing library's recorder conformance suites, run against our store.

Each test gets a fresh, migrated database (see conftest.py); recorders write through our
`Appender`. Our schema numbers stream versions from 1 (`CHECK (stream_version >= 1)`, and
`EventStore.load` reads versions above a snapshot's, 0 without one), while a few library tests
write version 0:
- `test_insert_and_select` (aggregate) ends by writing version 0: we run it unchanged and
  require that it fails exactly there, on that check;
- the concurrency and performance tests number their events 0..n-1 only to have distinct
  versions: they run against `_VersionsFromOne` (a test-only subclass that adds 1 on the way in
  and takes it off on the way out); everything else is the production path;
- `NonInterleavingNotificationIDsBaseCase.create_stack` is a hook: ours numbers from 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from eventsourcing.persistence import IntegrityError, Notification, StoredEvent
from eventsourcing.tests.persistence import (
    AggregateRecorderTestCase,
    ApplicationRecorderTestCase,
    NonInterleavingNotificationIDsBaseCase,
    ProcessRecorderTestCase,
    TrackingRecorderTestCase,
)

from service.store.recorder import (
    AsyncpgAggregateRecorder,
    AsyncpgApplicationRecorder,
    AsyncpgProcessRecorder,
    AsyncpgRecorder,
    AsyncpgTrackingRecorder,
)


def _shift(events: Sequence[StoredEvent], by: int) -> list[StoredEvent]:
    return [StoredEvent(e.originator_id, e.originator_version + by, e.topic, e.state) for e in events]


class _VersionsFromOne:
    """Test-only: stores the library's version v as v + 1 (see the module docstring)."""

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        return super().insert_events(_shift(stored_events, 1), **kwargs)  # type: ignore[misc]

    def select_events(self, originator_id: UUID | str, **kwargs: Any) -> Sequence[StoredEvent]:
        return _shift(super().select_events(originator_id, **kwargs), -1)  # type: ignore[misc]

    def select_notifications(self, *args: Any, **kwargs: Any) -> Sequence[Notification]:
        return [
            Notification(n.originator_id, n.originator_version - 1, n.topic, n.state, n.id)
            for n in super().select_notifications(*args, **kwargs)  # type: ignore[misc]
        ]


class _ShiftedApplicationRecorder(_VersionsFromOne, AsyncpgApplicationRecorder):
    pass


class _ShiftedProcessRecorder(_VersionsFromOne, AsyncpgProcessRecorder):
    pass


class _OurDatabase:
    """Recorders on the test's database (set by the autouse fixture), closed after the test."""

    database_url: str

    def _open(self, cls: type[AsyncpgRecorder]) -> Any:
        recorder = cls(self.database_url)
        self.addCleanup(recorder.close)  # type: ignore[attr-defined]
        return recorder


class TestAggregateRecorder(_OurDatabase, AggregateRecorderTestCase):
    def create_recorder(self) -> AsyncpgAggregateRecorder:
        recorder: AsyncpgAggregateRecorder = self._open(AsyncpgAggregateRecorder)
        return recorder

    def test_insert_and_select(self) -> None:
        # Everything up to its last step passes; that step writes version 0, refused by our schema.
        with pytest.raises(IntegrityError) as raised:
            super().test_insert_and_select()
        cause = raised.value.__cause__
        assert isinstance(cause, asyncpg.CheckViolationError)
        assert cause.constraint_name == "events_stream_version_check"


class TestApplicationRecorder(_OurDatabase, ApplicationRecorderTestCase[AsyncpgApplicationRecorder]):
    recorder_class: type[AsyncpgApplicationRecorder] = AsyncpgApplicationRecorder

    def create_recorder(self) -> AsyncpgApplicationRecorder:
        recorder: AsyncpgApplicationRecorder = self._open(self.recorder_class)
        return recorder

    def test_insert_subscribe(self) -> None:
        super().optional_test_insert_subscribe()

    def test_concurrent_no_conflicts(self) -> None:  # type: ignore[override]
        self.recorder_class = _ShiftedApplicationRecorder
        super().test_concurrent_no_conflicts()

    def test_concurrent_throughput(self) -> None:
        self.recorder_class = _ShiftedApplicationRecorder
        super().test_concurrent_throughput()


class TestNonInterleavingNotificationIDs(_OurDatabase, NonInterleavingNotificationIDsBaseCase):
    def create_recorder(self) -> AsyncpgApplicationRecorder:
        recorder: AsyncpgApplicationRecorder = self._open(AsyncpgApplicationRecorder)
        return recorder

    def create_stack(self, originator_id: UUID | str) -> Sequence[StoredEvent]:
        return _shift(super().create_stack(originator_id), 1)


class TestTrackingRecorder(_OurDatabase, TrackingRecorderTestCase):
    def create_recorder(self) -> AsyncpgTrackingRecorder:
        recorder: AsyncpgTrackingRecorder = self._open(AsyncpgTrackingRecorder)
        return recorder


class TestProcessRecorder(_OurDatabase, ProcessRecorderTestCase):
    recorder_class: type[AsyncpgProcessRecorder] = AsyncpgProcessRecorder

    def create_recorder(self) -> AsyncpgProcessRecorder:
        recorder: AsyncpgProcessRecorder = self._open(self.recorder_class)
        return recorder

    def test_performance(self) -> None:
        self.recorder_class = _ShiftedProcessRecorder
        super().test_performance()


# The imported suites are abstract: keep pytest from collecting them.
del AggregateRecorderTestCase, ApplicationRecorderTestCase, NonInterleavingNotificationIDsBaseCase
del ProcessRecorderTestCase, TrackingRecorderTestCase
