"""Runs a command: load → decide → append, atomically, retried on a concurrent change.

`execute()` is the one path every state-changing use case takes. Its `decide` callback loads
aggregates through a UnitOfWork, calls their methods, names the unique claims the change
makes, and returns the command's result. Everything the aggregates recorded is then appended
in one transaction with the idempotency record (the result, encoded before the append: the
appender only adds the position under its lock); a concurrent change of the same stream
(another instance) makes it run `decide` again on fresh state, so the caller never sees the
conflict.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar
from uuid import UUID, uuid4

from eventsourcing.persistence import StoredEvent

from domain.errors import DomainError
from domain.events import event_type
from domain.identities import Identity
from domain.member import Member
from domain.program import PROGRAM_ID, Program
from service import tracing
from service.services import Services
from service.store import appender as store
from service.store.appender import (
    AppendRejected,
    AppendRequest,
    Committed,
    HoldClaim,
    IdempotencyRecord,
    IdentityClaim,
    Metadata,
    NewEvent,
    Replayed,
    StreamConflict,
)

from .context import CommandContext
from .errors import Busy, IdempotencyKeyReused, IdentityTaken, OrderTaken, UnknownMember
from .results import Outcome, Result, keep, kept, kept_member

MAX_ATTEMPTS = 8
# Program changes (a guard's stream moving on) an attempt may meet besides; each one is a new
# version of the rules or campaigns, so this bounds nothing a real program does in a second.
MAX_GUARD_CHANGES = 64

R = TypeVar("R", bound=Result)


class UnitOfWork:
    """The aggregates one attempt of a command loaded and changed, and the claims it makes."""

    def __init__(self, services: Services, ctx: CommandContext) -> None:
        self._services = services
        self.ctx = ctx
        self._loaded: dict[UUID, tuple[Any, int]] = {}
        self.order_claims: list[tuple[str, UUID]] = []
        self.identity_claims: list[IdentityClaim] = []
        self.identity_releases: list[IdentityClaim] = []
        self.hold_claims: list[HoldClaim] = []
        self.member_keys: list[tuple[UUID, bytes]] = []
        self.forgotten: list[UUID] = []
        self._new_keys: dict[UUID, bytes] = {}
        self.event_ids: list[UUID] = []  # of the events recorded, in order (grown by event_id)
        self.cached: list[UUID] = []  # members taken from this process's cache (maybe stale)
        self.guards: set[UUID] = set()  # streams read, not written, whose version must hold

    async def member(self, member_id: UUID) -> Member:
        """The member, at its latest version; UnknownMember if there is none."""
        if self._services.repository.is_cached(member_id):
            self.cached.append(member_id)
        member = await self._services.repository.member(member_id)
        if member is None:
            raise UnknownMember(member_id)
        self._loaded.setdefault(member_id, (member, member.version))
        return member

    async def program(self) -> Program:
        return await self._services.repository.program()

    async def program_in_force(self) -> Program:
        """The program (rules and campaigns) this command decides with, as a guard: the append
        checks that the program stream is still at this version, so what the command used is
        exactly what was in force at its commit (else it decides again on the new version)."""
        program = await self.program()
        self._loaded.setdefault(program.id, (program, program.version))
        self.guards.add(program.id)
        return program

    async def program_for_change(self) -> Program:
        """The program, to be changed by this command (so its version is checked): a copy of its
        own, read from the store, never the cached one that other commands read while this one
        is in flight (they would decide on changes not committed, with a version that the
        append of another instance's change could match). Committed, it replaces the cached one."""
        program = await self._services.repository.load(Program, PROGRAM_ID)
        if program is None:
            raise LookupError("the program has not been created (start-up does that)")
        self._loaded.setdefault(program.id, (program, program.version))
        return program

    def new_member(self, member: Member) -> None:
        """A member this command enrols: it gets its own data key."""
        key, wrapped = self._services.keyring.new_member_key(member.id)
        self._services.store.remember_key(member.id, key)
        self._new_keys[member.id] = key
        self.member_keys.append((member.id, wrapped))
        self.new_aggregate(member)

    def new_aggregate(self, aggregate: Any) -> None:
        """An aggregate this command creates: its stream must not exist yet."""
        self._loaded[aggregate.id] = (aggregate, 0)

    def shred_keys(self, member_ids: list[UUID]) -> None:
        """Destroy these members' data keys with the command's events (a forget)."""
        self.forgotten.extend(member_ids)

    def claim_order(self, order_ref: str, member_id: UUID) -> None:
        self.order_claims.append((order_ref, member_id))

    def claim_hold(self, hold_id: UUID, member_id: UUID, expires_at: datetime) -> None:
        """Index a hold this command places, so that it is found by its id alone."""
        self.hold_claims.append(HoldClaim(hold_id, member_id, expires_at))

    def claim_identity(self, identity: Identity, member_id: UUID) -> None:
        self.identity_claims.append(self._claim(identity, member_id))

    def release_identity(self, identity: Identity, member_id: UUID) -> None:
        self.identity_releases.append(self._claim(identity, member_id))

    def _claim(self, identity: Identity, member_id: UUID) -> IdentityClaim:
        value_hash = self._services.keyring.identity_hash(identity.kind, identity.value)
        return IdentityClaim(identity.kind, value_hash, member_id)

    def aggregates(self) -> list[Any]:
        return [aggregate for aggregate, _ in self._loaded.values()]

    def loaded(self, stream_ids: list[UUID]) -> dict[UUID, tuple[Any, int]]:
        """The aggregates of these streams this attempt loaded, with the version each had then."""
        return {s: self._loaded[s] for s in stream_ids if s in self._loaded}

    def event_id(self, index: int = 0) -> UUID:
        """The id the `index`-th event this command records will have (ids enter at the edge)."""
        while len(self.event_ids) <= index:
            self.event_ids.append(uuid4())
        return self.event_ids[index]

    async def request(self, result: Result, status: int) -> AppendRequest:
        """Everything the attempt recorded, as one append request."""
        codec = self._services.store.codec
        events: list[NewEvent] = []
        expected: dict[UUID, int] = {}
        for stream_id, (aggregate, version) in self._loaded.items():
            pending = aggregate.collect_events()
            if not pending:
                if stream_id in self.guards:
                    expected[stream_id] = version
                continue
            expected[stream_id] = version
            key = self._new_keys.get(stream_id) or await self._services.store.key_for(stream_id)
            for domain_event in pending:
                stored: StoredEvent = codec.encode(domain_event, key)
                event_id = self.event_id(len(events))
                events.append(
                    NewEvent(
                        stream_id=stream_id,
                        stream_version=stored.originator_version,
                        event_type=event_type(type(domain_event)),
                        topic=stored.topic,
                        data=stored.state,
                        occurred_at=getattr(domain_event, "occurred_at", None) or self.ctx.now,
                        event_id=event_id,
                    )
                )
        ctx = self.ctx
        idempotency = None
        if ctx.idempotency_key is not None:
            # A result with personal fields keeps them sealed with its member's key.
            owner = getattr(result, "member_id", None) if getattr(result, "personal_fields", ()) else None
            key = None
            if owner is not None:
                key = self._new_keys.get(owner) or await self._services.store.key_for(owner)
            idempotency = IdempotencyRecord(
                channel=ctx.channel,
                key=ctx.idempotency_key,
                request_hash=ctx.request_hash,
                status=status,
                response=keep(result, key),
            )
        return AppendRequest(
            events=events,
            expected=expected,
            metadata=Metadata(
                channel=ctx.channel,
                api_key_id=ctx.api_key_id,
                correlation_id=ctx.request_id,
                traceparent=tracing.current_traceparent(),
            ),
            idempotency=idempotency,
            order_claims=self.order_claims,
            identity_claims=self.identity_claims,
            identity_releases=self.identity_releases,
            member_keys=self.member_keys,
            hold_claims=self.hold_claims,
            forgotten=self.forgotten,
        )


async def execute(
    services: Services,
    ctx: CommandContext,
    streams: list[UUID],
    decide: Callable[[UnitOfWork], Awaitable[R]],
    result_type: type[R],
    *,
    status: int = 201,
) -> Outcome[R]:
    """Run a command to completion: decide and append it, or replay its first answer.

    The idempotency key is looked up only when the decision is refused (a retried redemption
    may no longer fit the balance; a retried earn finds its order taken): on the happy path the
    appender checks it under the append lock, which costs no extra round trip.
    """
    with tracing.span(result_type.__name__):  # the use case, by what it answers (Earned)
        return await _execute(services, ctx, streams, decide, result_type, status)


async def _execute(
    services: Services,
    ctx: CommandContext,
    streams: list[UUID],
    decide: Callable[[UnitOfWork], Awaitable[R]],
    result_type: type[R],
    status: int,
) -> Outcome[R]:
    repository = services.repository
    attempt = program_changes = 0
    while attempt < MAX_ATTEMPTS:
        attempt += 1
        async with repository.locked(streams):
            uow = UnitOfWork(services, ctx)
            try:
                result = await decide(uow)
                with tracing.span("append"):  # its events carry this span's traceparent
                    outcome = await services.appender.append(await uow.request(result, status))
            except StreamConflict as changed:
                _forget(repository, uow, changed_only=False)
                conflict = True
                if changed.stream_id in uow.guards and program_changes < MAX_GUARD_CHANGES:
                    # The program changed under the command (new rules, a campaign started or
                    # ended): that is progress, not contention; decide again on the new version.
                    program_changes += 1
                    attempt -= 1
                    continue
            except AppendRejected as rejected:
                # The appender checked the idempotency key before the claims: no replay here.
                _forget(repository, uow, changed_only=False)
                raise _refusal(rejected, ctx) from None
            except DomainError:
                _forget(repository, uow, changed_only=True)
                if await _stale(services, uow):
                    # Refused on a cached copy that another instance has moved past (an append
                    # would have been refused for it): decide again on the store's state.
                    _forget(repository, uow, changed_only=False)
                    conflict = True
                    continue
                replay: Outcome[R] | None = await _first_answer(services, ctx, result_type)
                if replay is not None:
                    return replay
                raise
            except BaseException:
                _forget(repository, uow, changed_only=False)
                raise
            else:
                conflict = False
                if isinstance(outcome, Replayed):
                    _forget(repository, uow, changed_only=False)
                    first = await _kept(services, outcome.response, result_type)
                    return Outcome(outcome.status, first, outcome.position, replayed=True)  # type: ignore[arg-type]
                for aggregate in uow.aggregates():
                    # A guard was only read: caching it again could put back a copy that a
                    # change committed meanwhile has made stale.
                    if aggregate.id not in uow.guards:
                        repository.keep(aggregate)
                return Outcome(status, result, outcome.last_position)
        if conflict:
            # Another instance changed the stream: back off a little, with jitter, and retry.
            await asyncio.sleep(random.uniform(0, 0.002 * 2 ** (attempt - 1)))  # noqa: S311
    raise Busy("the member is being changed by many commands at once; retry")


@dataclass(frozen=True, slots=True)
class Command(Generic[R]):
    """One command of `execute_many`: what `execute()` takes."""

    ctx: CommandContext
    streams: list[UUID]
    decide: Callable[[UnitOfWork], Awaitable[R]]
    result_type: type[R]
    status: int = 201


async def execute_many(
    services: Services, commands: Sequence[Command[Any]]
) -> list[Outcome[Any] | BaseException]:
    """`execute()` of many commands at once (a batch): each one's outcome, or the error that
    refused it, in order.

    In rounds: the commands whose streams are free are decided one after the other with no
    wait, their members read in one pass, and appended together, so a hundred of them share a
    group commit or two; those whose streams another request holds wait for the next round
    (after that request's commit). A command that does not simply succeed (refused, or its
    stream moved) runs through `execute()` afterwards, which gives it every answer a command
    alone would get (the first answer of a retried key, a decision on fresh state), and so do
    the commands of a stream still busy after the last round. The commands of one stream keep
    their order throughout.
    """
    outcomes: list[Outcome[Any] | BaseException | None] = [None] * len(commands)
    alone = _Alone()
    pending = list(range(len(commands)))
    for _ in range(ROUNDS):
        pending = await _round(services, commands, pending, outcomes, alone)
        if not pending:
            break
        # Wait for the request holding the first busy stream to let it go (its commit).
        async with services.repository.locked(commands[pending[0]].streams):
            pass
    for i in pending:
        alone.add(i, commands[i])
    if alone.indexes:
        done = await asyncio.gather(
            *(
                execute(services, c.ctx, c.streams, c.decide, c.result_type, status=c.status)
                for c in (commands[i] for i in sorted(alone.indexes))
            ),
            return_exceptions=True,
        )
        for i, outcome in zip(sorted(alone.indexes), done, strict=True):
            outcomes[i] = outcome
    return [o if o is not None else RuntimeError("not run") for o in outcomes]


ROUNDS = 4  # of execute_many, before the commands of streams still busy run one by one


@dataclass(slots=True)
class _Alone:
    """The commands execute_many leaves to execute(), and their streams: a later command of one
    of those streams follows them there, so that each stream's commands keep their order."""

    indexes: list[int] = field(default_factory=list)
    streams: set[UUID] = field(default_factory=set)

    def add(self, index: int, command: Command[Any]) -> None:
        self.indexes.append(index)
        self.streams.update(command.streams)


async def _round(
    services: Services,
    commands: Sequence[Command[Any]],
    pending: list[int],
    outcomes: list[Outcome[Any] | BaseException | None],
    alone: _Alone,
) -> list[int]:
    """One round of execute_many over `pending`: decides and appends the commands it can, and
    returns those whose streams were busy."""
    repository = services.repository
    busy: list[int] = []
    async with repository.locked_now(s for i in pending for s in commands[i].streams) as free:
        await repository.preload(Member, (s for i in pending for s in commands[i].streams if s in free))
        taken: set[UUID] = set()  # streams of this round's commands (decided, or waiting)
        attempts: list[tuple[int, UnitOfWork, Any, AppendRequest]] = []
        try:
            for i in pending:
                command = commands[i]
                if alone.streams.intersection(command.streams):
                    alone.add(i, command)
                    continue
                if not free.issuperset(command.streams) or taken.intersection(command.streams):
                    busy.append(i)
                    taken.update(command.streams)
                    continue
                taken.update(command.streams)
                uow = UnitOfWork(services, command.ctx)
                try:
                    result = await command.decide(uow)
                    request = await uow.request(result, command.status)
                except DomainError:
                    _forget(repository, uow, changed_only=True)
                    alone.add(i, command)  # execute() says why, or answers a retry with its first answer
                    continue
                except BaseException:
                    _forget(repository, uow, changed_only=False)
                    raise
                attempts.append((i, uow, result, request))
            appended = await services.appender.append_many([request for *_, request in attempts])
        except BaseException:
            for _, uow, _, _ in attempts:
                _forget(repository, uow, changed_only=False)
            raise
        for (i, uow, result, _), outcome in zip(attempts, appended, strict=True):
            command = commands[i]
            if isinstance(outcome, Committed):
                for aggregate in uow.aggregates():
                    if aggregate.id not in uow.guards:  # only read (see _execute)
                        repository.keep(aggregate)
                outcomes[i] = Outcome(command.status, result, outcome.last_position)
                continue
            _forget(repository, uow, changed_only=False)
            if isinstance(outcome, Replayed):
                first = await _kept(services, outcome.response, command.result_type)
                outcomes[i] = Outcome(outcome.status, first, outcome.position, replayed=True)
            elif isinstance(outcome, StreamConflict):
                alone.add(i, command)
            elif isinstance(outcome, AppendRejected):
                outcomes[i] = _refusal(outcome, command.ctx)
            else:
                outcomes[i] = outcome
    return busy


async def _stale(services: Services, uow: UnitOfWork) -> bool:
    """Whether a member this attempt took from the cache is behind the store (one indexed read,
    only on the way to a refusal, and only for cached members)."""
    if not uow.cached:
        return False
    versions = await services.store.stream_versions(uow.cached)
    return any(versions.get(m, 0) != version for m, (_, version) in uow.loaded(uow.cached).items())


def _forget(repository: Any, uow: UnitOfWork, *, changed_only: bool) -> None:
    """Drop cached aggregates that may hold changes that were not committed (or are stale)."""
    for aggregate in uow.aggregates():
        if not changed_only or aggregate.pending_events:
            repository.forget(aggregate.id)


async def _first_answer(services: Services, ctx: CommandContext, result_type: type[R]) -> Outcome[R] | None:
    """The first outcome of this idempotency key, if the command already succeeded once."""
    if ctx.idempotency_key is None:
        return None
    try:
        replay = await services.idempotency.lookup(ctx.channel, ctx.idempotency_key, ctx.request_hash)
    except store.IdempotencyKeyReused:
        raise IdempotencyKeyReused() from None
    if replay is None:
        return None
    first = await _kept(services, replay.response, result_type)
    return Outcome(replay.status, first, replay.position, replayed=True)  # type: ignore[arg-type]


async def _kept(services: Services, data: bytes, result_type: type[R]) -> R | bytes:
    """A kept result, its sealed fields opened with its member's key as the store holds it now
    (read afresh, not from this process's cache: the member may have been forgotten since)."""
    owner = kept_member(data)
    key = None if owner is None else await services.store.fresh_key(owner)
    return kept(data, result_type, key)


def _refusal(rejected: AppendRejected, ctx: CommandContext) -> DomainError:
    """The use-case error of a claim the appender refused."""
    if isinstance(rejected, store.OrderClaimed):
        extra: dict[str, object] = {"order_ref": rejected.order_ref}
        # Whose order it is is told only to the channel that reported it (SPEC §4).
        if rejected.channel is not None and rejected.channel == ctx.channel:
            extra["member_id"] = str(rejected.member_id)
        return OrderTaken(f"order {rejected.order_ref!r} has already earned points", **extra)
    if isinstance(rejected, store.IdentityClaimed):
        return IdentityTaken(rejected.kind, rejected.member_id)
    if isinstance(rejected, store.IdempotencyKeyReused):
        return IdempotencyKeyReused()
    raise rejected
