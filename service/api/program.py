"""/v1/program: the rules, versioned."""

from __future__ import annotations

from litestar import Controller, Response, get, put
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody

from service.handlers import program
from service.handlers.commands import PublishRules
from service.handlers.context import CommandContext
from service.services import Services

from .auth import command_context, requires
from .responses import reply
from .schemas import ProgramOut, RulesIn, RulesVersionOut, rules_of
from .views import program_out


class ProgramController(Controller):
    path = "/v1/program"
    tags = ["program"]
    dependencies = {"ctx": Provide(command_context)}

    @get("/", guards=[requires("read")], summary="The program and its current rules")
    async def get_program(self, services: NamedDependency[Services]) -> ProgramOut:
        return program_out(await program.program_view(services))

    @put("/rules", guards=[requires("rules")], summary="Publish a new version of the rules")
    async def put_rules(
        self,
        data: JSONBody[RulesIn],
        services: NamedDependency[Services],
        ctx: NamedDependency[CommandContext],
    ) -> Response[ProgramOut]:
        cmd = PublishRules(rules=rules_of(data))
        return reply(await program.publish_rules(services, ctx, cmd), program_out)

    @get("/rules/{version:int}", guards=[requires("read")], summary="One published version of the rules")
    async def get_rules(self, version: FromPath[int], services: NamedDependency[Services]) -> RulesVersionOut:
        return RulesVersionOut(version=version, rules=await program.rules_version(services, version))
