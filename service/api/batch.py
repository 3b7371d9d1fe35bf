"""POST /v1/batch: many commands in one request (an offline POS catching up; high-volume callers).

Each item is the command its own endpoint would run, with its own Idempotency-Key, its own scope
and its own answer: the item's result is what that endpoint would have answered (status and
body, a problem for a refused item), and one bad item does not stop the others. An item is
fingerprinted exactly as its endpoint's request would be (method, the endpoint's path, the
decoded body), so a command sent once alone and once in a batch with the same key is one
command, and retrying a whole batch replays every item that was applied.

Items run in order for each member (and each hold); items of different members run at once, so
their appends share group commits (ADR 2). The first earn of each member is decided with the
others in one pass (`execute_many`, ADR 19): a batch of 100 earns for 100 members is one or two
group commits, not 100 commands.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
from litestar import Controller, post
from litestar.exceptions import ClientException
from litestar.params import JSONBody
from msgspec import Meta

from domain.errors import DomainError
from service.handlers import ledger
from service.handlers.commands import Award
from service.handlers.context import CommandContext
from service.handlers.errors import InvalidInput
from service.handlers.results import Earned, Outcome
from service.handlers.unit_of_work import Command, execute_many
from service.services import Services

from .auth import fingerprint, requires
from .body import canonical, decode_body
from .errors import RETRY_AFTER_SECONDS, UNAVAILABLE, domain_problem, problem_body
from .lean import answered_by, answered_here
from .operations import OPERATIONS, earn_command
from .responses import Answer, encode
from .schemas import Body, EarnIn, IdempotencyKey, Out
from .views import earn_out

MAX_ITEMS = 500

Op = Literal["earn", "redeem", "hold", "capture", "release", "reversal", "adjustment", "transfer"]


class BatchItemIn(Body, kw_only=True):
    """One command: `op` names its endpoint; `member_id` or `hold_id` its path; `body` its body."""

    op: Op
    member_id: UUID | None = None
    hold_id: UUID | None = None
    idempotency_key: IdempotencyKey
    # The body of the item's own endpoint, decoded (strictly, into that endpoint's type) per item.
    body: dict[str, Any] | None = None


class BatchIn(Body, kw_only=True):
    items: Annotated[list[BatchItemIn], Meta(min_length=1, max_length=MAX_ITEMS)]


class BatchItemOut(Out, kw_only=True):
    """What the item's own endpoint would have answered (a problem when refused)."""

    status: int
    body: dict[str, Any]
    replayed: bool = False


class BatchOut(Out, kw_only=True):
    results: list[BatchItemOut]


def _keys(item: BatchItemIn) -> list[UUID]:
    """What an item must wait for the earlier items of: its member (or hold), and for a
    transfer the receiver too (read from the body; a body that does not decode waits for none)."""
    keys = [k for k in (item.member_id, item.hold_id) if k is not None]
    if item.op == "transfer":
        with contextlib.suppress(msgspec.ValidationError):
            keys.append(msgspec.convert(item.body or {}, _Receiver).to_member_id)
    return keys


class _Receiver(msgspec.Struct):
    to_member_id: UUID


_decode = msgspec.json.Decoder(dict[str, Any]).decode


@dataclass(slots=True)
class _Item:
    index: int
    item: BatchItemIn
    after: list[asyncio.Future[None]]
    done: asyncio.Future[None]


async def run_batch(services: Services, ctx: CommandContext, _: dict[str, Any], data: BatchIn) -> Answer:
    """Items run in order per member; the answer lists each item's result in order."""
    last: dict[UUID, asyncio.Future[None]] = {}
    items: list[_Item] = []
    loop = asyncio.get_running_loop()
    for index, item in enumerate(data.items):
        done: asyncio.Future[None] = loop.create_future()
        keys = _keys(item)
        items.append(_Item(index, item, [last[k] for k in keys if k in last], done))
        last.update(dict.fromkeys(keys, done))
    # The first item of each member that is an earn (the common case, and what a POS catching
    # up sends) is decided with the others like it in one pass and appended with them; the
    # rest run one by one, after the items of their member before them.
    earns = [i for i in items if not i.after and i.item.op == "earn"]
    results: list[BatchItemOut | None] = [None] * len(items)
    one_by_one = [i for i in items if i.after or i.item.op != "earn"]
    await asyncio.gather(
        _earns(services, ctx, earns, results), *(_run(services, ctx, i, results) for i in one_by_one)
    )
    return Answer(200, encode(BatchOut(results=[r for r in results if r is not None])))


class BatchController(Controller):
    path = "/v1/batch"
    tags = ["ledger"]

    @post(
        "/",
        # Each item needs the scope of its own endpoint; the batch itself any of them.
        guards=[requires("earn", "award", "redeem", "adjust", "transfer")],
        status_code=200,
        summary="Many commands in one request, each with its own Idempotency-Key and answer",
        opt=answered_by(run_batch),
    )
    async def batch(self, data: JSONBody[BatchIn]) -> BatchOut:
        """Items run in order per member; the answer lists each item's result in order."""
        answered_here()


async def _run(
    services: Services, ctx: CommandContext, queued: _Item, results: list[BatchItemOut | None]
) -> None:
    try:
        for earlier in queued.after:
            await earlier
        results[queued.index] = await _item(services, ctx, queued.item)
    finally:
        queued.done.set_result(None)


async def _earns(
    services: Services, ctx: CommandContext, queued: list[_Item], results: list[BatchItemOut | None]
) -> None:
    """Earn items of distinct members, decided together and appended together (execute_many)."""
    try:
        commands: list[tuple[int, Command[Earned]]] = []
        for q in queued:
            try:
                command = _earn_item(services, ctx, q.item)
            except Exception as exc:  # answered per item, or raised again by _refused
                command = _refused(exc)
            if isinstance(command, BatchItemOut):
                results[q.index] = command
            else:
                commands.append((q.index, command))
        try:
            outcomes = await execute_many(services, [c for _, c in commands])
        except Exception as exc:  # e.g. the database went away: each item says so, as alone
            outcomes = [exc] * len(commands)
        for (index, _), outcome in zip(commands, outcomes, strict=True):
            results[index] = _answer(outcome, earn_out)
    finally:
        for q in queued:
            q.done.set_result(None)


def _earn_item(services: Services, ctx: CommandContext, item: BatchItemIn) -> Command[Earned] | BatchItemOut:
    """An earn item as the command its endpoint would run (or the 403 it gets); InvalidInput
    when it does not fit (the same checks, in the same order, as `_item`)."""
    if item.member_id is None:
        raise InvalidInput([("member_id", "required for earn")])
    body = decode_body(encode(item.body if item.body is not None else {}), EarnIn)
    cmd = earn_command(item.member_id, body)
    scope = "award" if isinstance(cmd, Award) else "earn"
    if scope not in ctx.scopes:
        return _forbidden(scope)
    own = _own(ctx, item, OPERATIONS["earn"].path.format(member_id=item.member_id), body)
    return Command(own, [item.member_id], ledger.earn_decision(services, own, cmd), Earned)


async def _item(services: Services, ctx: CommandContext, item: BatchItemIn) -> BatchItemOut:
    operation = OPERATIONS.get(item.op)
    try:
        if operation is None:
            raise InvalidInput([("op", f"unknown operation {item.op!r}")])
        target = item.member_id if operation.target == "member" else item.hold_id
        if target is None:
            name = "member_id" if operation.target == "member" else "hold_id"
            raise InvalidInput([(name, f"required for {item.op}")])
        body = decode_body(encode(item.body if item.body is not None else {}), operation.body)
        cmd = operation.command(target, body)
        scope = operation.scope(cmd)
        if scope not in ctx.scopes:
            return _forbidden(scope)
        own = _own(ctx, item, operation.path.format(member_id=target, hold_id=target), body)
        outcome = await operation.run(services, own, cmd)
    except Exception as exc:  # answered per item, or raised again by _refused
        return _refused(exc)
    return _answer(outcome, operation.render)


def _own(ctx: CommandContext, item: BatchItemIn, path: str, body: Any) -> CommandContext:
    """The item's own context: its key, and fingerprinted as its endpoint's request would be
    (alone or in a batch, one command)."""
    return replace(
        ctx, idempotency_key=item.idempotency_key, request_hash=fingerprint("POST", path, canonical(body))
    )


def _answer(outcome: Outcome[Any] | BaseException, render: Callable[[Any, int], Any]) -> BatchItemOut:
    """An item's answer: its result rendered as its endpoint renders it, or its refusal."""
    if isinstance(outcome, BaseException):
        return _refused(outcome)
    result = outcome.result
    rendered = (
        _decode(result)
        if isinstance(result, bytes)
        else msgspec.to_builtins(render(result, outcome.position))
    )
    return BatchItemOut(status=outcome.status, body=rendered, replayed=outcome.replayed)


def _refused(exc: BaseException) -> BatchItemOut:
    """The problem an item gets for an error; errors that are not the item's own are raised."""
    if isinstance(exc, DomainError) and not (exc.status >= 500 and exc.status != 503):
        return BatchItemOut(status=exc.status, body=domain_problem(exc))
    if isinstance(exc, ClientException):
        return _problem(400, "malformed_request", "Malformed request", exc.detail)
    if isinstance(exc, UNAVAILABLE):
        detail = f"the database cannot be reached right now; retry in {RETRY_AFTER_SECONDS} s"
        return _problem(503, "unavailable", "Service unavailable", detail)
    raise exc


def _forbidden(scope: str) -> BatchItemOut:
    return _problem(403, "forbidden", "Forbidden", f"this API key lacks the {scope!r} scope")


def _problem(status: int, code: str, title: str, detail: str) -> BatchItemOut:
    return BatchItemOut(status=status, body=problem_body(status, code, title, detail))
