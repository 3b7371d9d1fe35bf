"""The clock: what time alone makes due, settled by the service itself (ADR 12).

One leader across instances (a `Leadership` on CLOCK_LOCK, contended for where the followers
lead) finds members whose `balances.next_change_at` has passed and runs the use case
`ledger.settle` for each, through `execute()` like any command (channel and key `system`): it
records points_expired, hold_released (expired) and tier_changed (downgrade), is broadcast and
projected as usual, and a settle racing a command of the same member is resolved by the
stream's expected version (one wins; the other decides again on the new state).

Why a cursor. `next_change_at` is the first instant after the member's last event at which its
balance changes; many such instants record nothing (a lot unlocking, an earn leaving the tier
window with no downgrade due). Such a settle leaves the row as it was, so "next_change_at <=
now" would pick it again at every pass, forever. The leader therefore keeps a cursor over the
rows instead, and settles each row version once:

- P, a position: every row with `position <= P` has been seen. A row's position is its
  member's last event's position; the projection writes rows in log order, each batch with its
  checkpoint, so a row written later (new or a new version) has a position above the checkpoint
  read before, never below P. (`updated_at`, the record time of that event, would not do: a
  row projected late carries an updated_at older than the pass that missed it.)
- T, an instant (with a member id to break ties): among rows with `position <= P`, every one
  with `next_change_at <= T` has been settled.

Each pass (at `now`, after reading the projection's checkpoint H) settles rows with
`position <= P` and `next_change_at` in (T, now], ordered by it (then T := now), and rows with
`position` in (P, H] and `next_change_at <= now`, ordered by position (then P := H). The two
sets are disjoint, and T moves to `now` only once both older rows are done, so a row version is
settled once; a pass stops at `batch` members and the next starts at once where it stopped.
When idle, a pass is one read of the checkpoint: the earliest `next_change_at` beyond T among
seen rows is kept (`wake`), and nothing is read until the checkpoint moves or `wake` passes.

Why a deferred heap. After a settle that recorded nothing, the member's row still shows the
instant just passed, and its real next change (a lot expiring, a hold expiring, a downgrade)
is known only to the aggregate. The leader asks it (`Member.next_balance_change`, the cached
aggregate the settle just loaded) and keeps (instant, row position) in memory; when the instant
comes, the member is settled again, unless its row has moved meanwhile (the cursor then covers
the new version). Memory: one entry per member waiting on such an instant.

Segments. Each pass also re-decides the members' segments whose time has come (`new` ending,
`active` turning `at_risk` or `dormant`: the `segments` rows' `next_change_at`), and every row
once when the rules' segment thresholds differ from those this lead last applied (always at
the start of a lead). `projections.segments.reevaluate` does it in one transaction holding the
projection's checkpoint, recording the transitions for the segments relay; like the settles it
is derived from state (a row re-decided twice changes nothing the second time).

Restart-safe because everything is derived from state: a new leader waits for the projection
to reach the end of the log as it found it, starts with P = 0 and so visits every row whose
next_change_at has passed once (for most a settle that records nothing,
paced by `batch`), and a settle of a member already settled records nothing. Two leaders
overlapping for a moment (one losing its lock) at worst both settle a member: the expected
version lets one append and the other find nothing due.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

import asyncpg

from projections.balances import BalancesProjection
from projections.segments import reevaluate as reevaluate_segments
from projections.segments import thresholds_key
from service.handlers import ledger
from service.handlers.commands import Settle
from service.handlers.context import CommandContext
from service.services import Services
from service.store.follower import Leadership, Session, sleep_unless, stop_gently

log = logging.getLogger(__name__)

CLOCK_LOCK = 0x4C45444745520003  # "LEDGER" + 3: one clock per database (the relay is + 2)
SYSTEM = "system"  # channel and api_key_id of the commands the service gives itself
BATCH = 500  # members settled per pass, at most
CONCURRENCY = 8  # settles in flight at once (the appender commits them in groups)
RETRY_SECONDS = 5.0  # a settle that failed is tried again this much later
_LAST_ID = UUID(int=(1 << 128) - 1)  # (at, _LAST_ID): after every member at `at`
_CHECKPOINT = BalancesProjection.kind  # the balances projection's checkpoint name


@dataclass(slots=True)
class ClockStatus:
    """What the clock has done since this process started (for /metrics)."""

    active: bool
    settles: int  # settle commands run
    members_settled: int  # of those, settles that recorded something
    events: int  # events they recorded
    failures: int
    deferred: int  # members waiting on an instant only their aggregate knows


class Clock:
    """Settles members whose balance changed with time; see the module docstring."""

    def __init__(
        self,
        services: Services,
        *,
        interval: float = 1.0,
        batch: int = BATCH,
        concurrency: int = CONCURRENCY,
        standby_interval: float = 1.0,
    ) -> None:
        if services.settings.database_url is None:
            raise ValueError("database_url is not set")
        self._services = services
        self.interval = interval
        self.batch = batch
        self._concurrency = concurrency
        self._stopping = asyncio.Event()
        self._leadership = Leadership(
            services.settings.database_url,
            CLOCK_LOCK,
            name="clock",
            standby_interval=standby_interval,
            stopping=self._stopping,
        )
        self._task: asyncio.Task[None] | None = None
        self._reset()
        self.settles = self.members_settled = self.events = self.failures = 0
        self.segment_rows = 0  # segments rows re-decided
        self.passes = 0  # passes made (tests wait on it: each reads the state anew)

    def _reset(self) -> None:
        """The cursor of a new lead: nothing seen yet (restart-safe, see the module)."""
        self._seen = 0  # P
        self._start_at = 0  # the log's end when this lead began
        self._until: tuple[datetime, UUID] | None = None  # (T, its member id); None: the start
        self._wake: datetime | None = None  # earliest next_change_at beyond T among seen rows
        self._wake_known = False
        self._deferred: dict[UUID, tuple[datetime, int]] = {}  # member -> (instant, row position)
        self._heap: list[tuple[datetime, UUID]] = []
        self._segment_thresholds: str | None = None  # the thresholds every segments row was decided with

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.create_task(self._leadership.run(self._lead), name="clock")

    async def stop(self) -> None:
        """Stop after the settles in flight (they are commands: let them finish)."""
        task, self._task = self._task, None
        await stop_gently(task, self._stopping)

    def status(self) -> ClockStatus:
        return ClockStatus(
            active=self._leadership.leading,
            settles=self.settles,
            members_settled=self.members_settled,
            events=self.events,
            failures=self.failures,
            deferred=len(self._deferred),
        )

    # -- the lead -------------------------------------------------------------------------

    async def _lead(self, session: Session) -> None:
        self._reset()
        async with session.lock:
            # The log's end now: rows are read once the projection has reached it, so a new
            # leader does not settle members on rows older than their last events.
            self._start_at = await session.conn.fetchval("SELECT coalesce(max(position), 0) FROM events")
        while not self._stopping.is_set():
            session.check()
            more = await self.tick(session.conn, lock=session.lock)
            more = await self.segments_tick() or more
            self.passes += 1
            if not more:
                await sleep_unless(self._stopping, self.interval)

    async def tick(self, conn: asyncpg.Connection, *, lock: asyncio.Lock | None = None) -> bool:
        """One pass (see the module); True when it stopped at `batch` and more is due."""
        guard = lock if lock is not None else asyncio.Lock()
        now = datetime.now(UTC)
        async with guard:
            head = await conn.fetchval("SELECT position FROM checkpoints WHERE name = $1", _CHECKPOINT) or 0
        if head < self._start_at:
            return False  # the projection is catching up (see _lead)
        deferred_due = bool(self._heap) and self._heap[0][0] <= now
        quiet = self._wake_known and (self._wake is None or now < self._wake)
        if quiet and head <= self._seen and not deferred_due:
            return False
        if not quiet:
            # Seen rows that came due since T, in time order.
            after, after_id = (
                self._until if self._until is not None else (datetime.min.replace(tzinfo=UTC), UUID(int=0))
            )
            async with guard:
                rows = await conn.fetch(
                    "SELECT member_id, next_change_at, position, version FROM balances"
                    " WHERE position <= $1 AND (next_change_at, member_id) > ($2, $3)"
                    " AND next_change_at <= $4 ORDER BY next_change_at, member_id LIMIT $5",
                    self._seen, after, after_id, now, self.batch,
                )  # fmt: skip
            await self._settle_rows([(r["member_id"], r["position"], r["version"]) for r in rows])
            if len(rows) == self.batch:
                self._until = (rows[-1]["next_change_at"], rows[-1]["member_id"])
                self._wake_known = False
                return True
        # Every seen row due by `now` is settled (or nothing was due: `quiet`).
        self._until = (now, _LAST_ID)
        if head > self._seen:
            # Rows written since (new members, new versions), due already, in log order.
            async with guard:
                rows = await conn.fetch(
                    "SELECT member_id, position, version FROM balances WHERE position > $1 AND position <= $2"
                    " AND next_change_at <= $3 ORDER BY position LIMIT $4",
                    self._seen, head, now, self.batch,
                )  # fmt: skip
            await self._settle_rows([(r["member_id"], r["position"], r["version"]) for r in rows])
            if len(rows) == self.batch:
                self._seen = rows[-1]["position"]
                self._wake_known = False
                return True
            self._seen = head
        more = await self._settle_deferred(conn, guard, now)
        async with guard:
            self._wake = await conn.fetchval(
                "SELECT min(next_change_at) FROM balances WHERE position <= $1 AND next_change_at > $2",
                self._seen, now,
            )  # fmt: skip
        self._wake_known = True
        return more

    async def segments_tick(self) -> bool:
        """Re-decide the segments whose time has come (see the module); True if more are due."""
        try:
            try:
                rules = (await self._services.repository.program()).rules.segments
            except LookupError:
                return False  # the program is created at start-up: not yet
            key = thresholds_key(rules)
            async with self._services.pool.acquire() as conn:
                decided = await reevaluate_segments(
                    conn,
                    now=datetime.now(UTC),
                    rules=rules,
                    limit=self.batch,
                    all_thresholds=key != self._segment_thresholds,
                )
        except asyncio.CancelledError:
            raise
        except Exception:  # the settles go on; the next pass tries again
            self.failures += 1
            log.warning("segments re-evaluation failed; will retry", exc_info=True)
            return False
        self.segment_rows += decided
        if decided < self.batch:
            self._segment_thresholds = key
        return decided >= self.batch

    async def _settle_deferred(self, conn: asyncpg.Connection, guard: asyncio.Lock, now: datetime) -> bool:
        """Settle members whose aggregate-known instant has come; True if more are due."""
        due: list[UUID] = []
        while self._heap and self._heap[0][0] <= now and len(due) < self.batch:
            at, member_id = heapq.heappop(self._heap)
            entry = self._deferred.get(member_id)
            if entry is not None and entry[0] == at:  # else superseded (lazy deletion)
                due.append(member_id)
        if not due:
            return False
        async with guard:
            rows = await conn.fetch(
                "SELECT member_id, position, version FROM balances WHERE member_id = ANY($1)", due
            )
        current = {r["member_id"]: (r["position"], r["version"]) for r in rows}
        todo: list[tuple[UUID, int, int]] = []
        for member_id in due:
            _, position = self._deferred.pop(member_id)
            row = current.get(member_id)
            if row is not None and row[0] == position:
                todo.append((member_id, *row))
            # else: the row has a new version, which the cursor covers
        await self._settle_rows(todo)
        return bool(self._heap) and self._heap[0][0] <= now

    async def _settle_rows(self, rows: list[tuple[UUID, int, int]]) -> None:
        """Settle these (member, row position, row version), a few at a time."""
        limit = asyncio.Semaphore(self._concurrency)

        async def one(member_id: UUID, position: int, version: int) -> None:
            async with limit:
                await self._settle(member_id, position, version)

        async with asyncio.TaskGroup() as group:
            for member_id, position, version in rows:
                group.create_task(one(member_id, position, version))

    async def _settle(self, member_id: UUID, position: int, version: int) -> None:
        services = self._services
        cached = await services.repository.member(member_id)
        if cached is not None and cached.version < version:
            # Changed by another instance: a settle that finds nothing due appends nothing, so
            # the expected-version check would never tell it that its copy is stale.
            services.repository.forget(member_id)
        now = datetime.now(UTC)
        ctx = CommandContext(
            channel=SYSTEM, api_key_id=SYSTEM, now=now, request_id=f"clock-{uuid.uuid4().hex}"
        )
        self._deferred.pop(member_id, None)
        try:
            outcome = await ledger.settle(services, ctx, Settle(member_id=member_id))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one member's failure must not stop the others
            self.failures += 1
            log.warning(
                "settle failed; will retry",
                extra={"member_id": str(member_id), "error": type(exc).__name__},
                exc_info=True,
            )
            self._defer(member_id, datetime.fromtimestamp(time.time() + RETRY_SECONDS, UTC), position)
            return
        self.settles += 1
        recorded = outcome.result.events
        if recorded:
            self.members_settled += 1
            self.events += recorded
            return  # its row gets a new version: the cursor covers it
        # Nothing was due to record: the row keeps showing this instant; ask the aggregate
        # for the next one (see the module docstring).
        member = await services.repository.member(member_id)
        if member is None:
            return
        rules = (await services.repository.program()).rules
        upcoming = member.next_balance_change(after=now, rules=rules)
        if upcoming is not None:
            self._defer(member_id, upcoming, position)

    def _defer(self, member_id: UUID, at: datetime, position: int) -> None:
        self._deferred[member_id] = (at, position)
        heapq.heappush(self._heap, (at, member_id))


__all__ = ["CLOCK_LOCK", "SYSTEM", "Clock", "ClockStatus"]
