"""The program: its rules (versioned) and their creation on first start."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from domain.program import PROGRAM_ID, Program
from domain.rules import Rules
from service.api.schemas import ProgramOut, RulesVersionOut
from service.services import Services

from .context import CommandContext, Reply
from .errors import NotFound
from .unit_of_work import Render, UnitOfWork, execute


class _Created(msgspec.Struct):
    position: int


async def ensure_program(services: Services) -> None:
    """Create the program with the default rules on first start (once, across instances)."""
    if await services.repository.get(Program, PROGRAM_ID) is not None:
        return
    ctx = CommandContext(channel="system", api_key_id="system", now=datetime.now(UTC), request_id="startup")

    async def decide(uow: UnitOfWork) -> Render:
        uow.new_aggregate(Program.create(at=ctx.now))
        return lambda position: _Created(position)

    try:
        await execute(services, ctx, [PROGRAM_ID], decide)
    except Exception:
        # Another instance may have created it in the meantime: that is success too.
        if await services.repository.get(Program, PROGRAM_ID) is None:
            raise


async def program_view(services: Services) -> ProgramOut:
    program = await services.repository.program()
    return ProgramOut(rules_version=program.rules_version, rules=program.rules)


async def publish_rules(services: Services, ctx: CommandContext, rules: Rules) -> Reply:
    """Publish a new version of the rules; earns from now on use it."""

    async def decide(uow: UnitOfWork) -> Render:
        program = await uow.program_for_change()
        program.publish_rules(rules=rules, at=ctx.now, channel=ctx.channel)
        return lambda position: ProgramOut(
            rules_version=program.rules_version, rules=program.rules, position=position
        )

    return await execute(services, ctx, [PROGRAM_ID], decide, status=200)


async def rules_version(services: Services, version: int) -> RulesVersionOut:
    program = await services.repository.program()
    try:
        return RulesVersionOut(version=version, rules=program.rules_at(version))
    except KeyError:
        raise NotFound(f"no rules version {version}") from None
