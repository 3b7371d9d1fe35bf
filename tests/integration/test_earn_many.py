"""Earns decided together (a batch's lean path, `execute_many`): one group commit for many, and
every answer a command alone would get — in order, refusals, replays, busy or moved members."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from uuid import UUID

import pytest_asyncio

from domain.errors import DuplicateOrder
from domain.identities import Identity
from domain.rules import DEFAULT_RULES
from service.config import Settings
from service.handlers import ledger, members
from service.handlers.commands import Award, EarnPurchase, Enrol
from service.handlers.context import CommandContext
from service.handlers.errors import IdempotencyKeyReused, OrderTaken, UnknownMember
from service.handlers.program import ensure_program
from service.handlers.results import Earned, Outcome
from service.handlers.unit_of_work import Command, execute_many
from service.services import Services, open_services
from tests.integration.test_ledger_operations import MASTER_KEY, ctx
from tests.waiting import until


@pytest_asyncio.fixture
async def two_instances(database_url: str) -> AsyncIterator[list[Services]]:
    """Two service instances (each with its own pool, cache and appender) on one database."""
    settings = Settings(database_url=database_url, nats_url=None, master_key=MASTER_KEY, db_pool_size=4)
    async with open_services(settings) as first, open_services(settings) as second:
        await ensure_program(first)
        yield [first, second]


@pytest_asyncio.fixture
async def services(two_instances: list[Services]) -> Services:
    return two_instances[0]


async def enrol(services: Services, count: int) -> list[UUID]:
    enrolled = await asyncio.gather(
        *(
            members.enrol(
                services, ctx(), Enrol(identities=[Identity(kind="email", value=f"{uuid.uuid4().hex}@x.cn")])
            )
            for _ in range(count)
        )
    )
    return [e.result.member_id for e in enrolled]


def earn(
    services: Services, member_id: UUID, order_ref: str, context: CommandContext | None = None
) -> Command[Earned]:
    """The command an earn item of a batch becomes."""
    own = context or ctx()
    cmd = EarnPurchase(member_id=member_id, order_ref=order_ref, amount=Decimal("10"), currency="CNY")
    return Command(own, [member_id], ledger.earn_decision(services, own, cmd), Earned)


def positions(outcomes: list[Outcome[Earned] | BaseException]) -> list[int]:
    assert all(isinstance(o, Outcome) and o.status == 201 for o in outcomes), outcomes
    return [o.position for o in outcomes if isinstance(o, Outcome)]


async def test_earns_of_many_members_share_a_group_commit_and_answer_in_order(services: Services) -> None:
    people = await enrol(services, 50)
    batches = services.appender.batches

    outcomes = await execute_many(services, [earn(services, m, f"M-{i}") for i, m in enumerate(people)])

    assert positions(outcomes) == sorted(positions(outcomes))
    assert len(set(positions(outcomes))) == 50
    assert services.appender.batches - batches <= 2
    assert [o.result.member_id for o in outcomes if isinstance(o, Outcome)] == people


async def test_members_not_cached_are_read_and_decided(two_instances: list[Services]) -> None:
    first, second = two_instances
    people = await enrol(first, 10)  # cached by the first instance only
    assert not any(second.repository.is_cached(m) for m in people)

    outcomes = await execute_many(second, [earn(second, m, f"C-{i}") for i, m in enumerate(people)])

    assert len(positions(outcomes)) == 10
    assert all(second.repository.is_cached(m) for m in people)


async def test_a_member_busy_with_another_command_gets_its_turn_after_it(services: Services) -> None:
    busy, free = await enrol(services, 2)
    async with services.repository.locked([busy]):
        running = asyncio.create_task(
            execute_many(services, [earn(services, busy, "B-1"), earn(services, free, "F-1")])
        )

        # The free member's earn commits while the busy one waits for its lock.
        async def earned(member: UUID) -> bool:
            return await services.store.stream_version(member) > 1  # enrolled, then earned

        await until(lambda: earned(free), what="the free member's earn")
        assert not await earned(busy)
        assert not running.done()

    outcomes = await running

    busy_position, free_position = positions(outcomes)
    assert free_position < busy_position


async def test_a_member_moved_by_another_instance_is_decided_again(two_instances: list[Services]) -> None:
    first, second = two_instances
    (member,) = await enrol(first, 1)
    await execute_many(second, [earn(second, member, "A-1")])  # the second instance caches it
    await ledger.earn(
        first,
        ctx(),
        EarnPurchase(member_id=member, order_ref="A-2", amount=Decimal("10"), currency="CNY"),
    )  # and the stream moves on under it

    (outcome,) = await execute_many(second, [earn(second, member, "A-3")])

    assert isinstance(outcome, Outcome)
    assert outcome.result.balance.lifetime_earned == 30


async def test_refusals_and_retries_are_answered_as_for_a_command_alone(services: Services) -> None:
    alice, bob = await enrol(services, 2)
    first = ctx(key="retried")
    (done,) = await execute_many(services, [earn(services, alice, "R-1", first)])
    assert isinstance(done, Outcome)
    position = await services.store.last_position()

    outcomes = await execute_many(
        services,
        [
            earn(services, alice, "R-1", first),  # the same command again: its first answer
            earn(services, bob, "R-1"),  # the order earned already (for another member)
            earn(services, bob, "R-2", ctx(key="retried")),  # the key, with another request
            earn(services, uuid.uuid4(), "R-3"),  # nobody
        ],
    )

    replay, taken, reused, unknown = outcomes
    assert isinstance(replay, Outcome)
    assert replay.replayed
    assert (replay.position, replay.result) == (done.position, done.result)
    assert isinstance(taken, OrderTaken)
    assert isinstance(reused, IdempotencyKeyReused)
    assert isinstance(unknown, UnknownMember)
    assert await services.store.last_position() == position  # nothing written


async def test_commands_of_one_member_keep_their_order(services: Services) -> None:
    (alice,) = await enrol(services, 1)

    outcomes = await execute_many(
        services,
        [earn(services, alice, "O-1"), earn(services, alice, "O-1"), earn(services, alice, "O-2")],
    )

    first, refused, second = outcomes
    assert isinstance(refused, DuplicateOrder)  # decided after the first, which it found
    assert isinstance(first, Outcome)
    assert isinstance(second, Outcome)
    assert first.position < second.position
    assert (first.result.balance.lifetime_earned, second.result.balance.lifetime_earned) == (10, 20)


async def test_a_retried_award_decided_again_is_answered_with_its_first_answer(services: Services) -> None:
    (alice,) = await enrol(services, 1)
    retried = ctx(key="award-1")
    award = Award(member_id=alice, points=5, reason="welcome")

    def command() -> Command[Earned]:
        return Command(retried, [alice], ledger.earn_decision(services, retried, award), Earned)

    (first,) = await execute_many(services, [command()])
    position = await services.store.last_position()
    (again,) = await execute_many(services, [command()])  # decided again: the key is found at append

    assert isinstance(first, Outcome)
    assert isinstance(again, Outcome)
    assert again.replayed
    assert (again.position, again.result) == (first.position, first.result)
    assert await services.store.last_position() == position
    assert (await services.repository.member(alice)).balance(
        now=retried.now, rules=DEFAULT_RULES
    ).available == 5
