"""The program: its rules (versioned) and their creation on first start."""

from __future__ import annotations

from datetime import UTC, datetime

from domain.program import PROGRAM_ID, Program
from domain.rules import Rules
from service.services import Services

from .commands import PublishRules
from .context import CommandContext
from .errors import NotFound
from .results import Outcome, RulesState
from .unit_of_work import UnitOfWork, execute


async def ensure_program(services: Services) -> None:
    """Create the program with the default rules on first start (once, across instances)."""
    if await services.repository.get(Program, PROGRAM_ID) is not None:
        return
    ctx = CommandContext(channel="system", api_key_id="system", now=datetime.now(UTC), request_id="startup")

    async def decide(uow: UnitOfWork) -> RulesState:
        program = Program.create(at=ctx.now)
        uow.new_aggregate(program)
        return RulesState(rules_version=program.rules_version, rules=program.rules)

    try:
        await execute(services, ctx, [PROGRAM_ID], decide, RulesState)
    except Exception:
        # Another instance may have created it in the meantime: that is success too.
        if await services.repository.get(Program, PROGRAM_ID) is None:
            raise


async def program_view(services: Services) -> RulesState:
    """The rules in force and their version."""
    program = await services.repository.program()
    return RulesState(rules_version=program.rules_version, rules=program.rules)


async def publish_rules(services: Services, ctx: CommandContext, cmd: PublishRules) -> Outcome[RulesState]:
    """Publish a new version of the rules; earns from now on use it."""

    async def decide(uow: UnitOfWork) -> RulesState:
        program = await uow.program_for_change()
        program.publish_rules(rules=cmd.rules, at=ctx.now, channel=ctx.channel)
        return RulesState(rules_version=program.rules_version, rules=program.rules)

    return await execute(services, ctx, [PROGRAM_ID], decide, RulesState, status=200)


async def rules_version(services: Services, version: int) -> Rules:
    """One published version of the rules; NotFound when there is no such version."""
    program = await services.repository.program()
    try:
        return program.rules_at(version)
    except KeyError:
        raise NotFound(f"no rules version {version}") from None
