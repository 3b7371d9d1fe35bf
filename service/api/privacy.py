"""A member's own data (scope `privacy`): export everything held about them, or forget them."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

from litestar import Controller, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody

from service.handlers import privacy
from service.handlers.commands import Forget
from service.handlers.context import CommandContext
from service.services import Services

from .auth import command_context, requires
from .holds import _BodyMayBeAbsent
from .responses import reply
from .schemas import ForgetIn, MemberExportOut, MemberOut
from .views import export_out, member_out


class PrivacyController(Controller):
    path = "/v1/members"
    tags = ["privacy"]
    dependencies = {"ctx": Provide(command_context)}
    guards = [requires("privacy")]

    @get("/{member_id:uuid}/export", summary="Everything held about a member, decrypted")
    async def export(self, services: NamedDependency[Services], member_id: FromPath[UUID]) -> MemberExportOut:
        """The member (identities and profile in the clear, balance) and every event of theirs
        (and of the members merged into them) with its whole payload. A forgotten member's
        export keeps the amounts and holds no personal data."""
        return export_out(await privacy.export(services, member_id, now=datetime.now(UTC)))

    @post(
        "/{member_id:uuid}/forget",
        status_code=201,
        summary="Forget a member (crypto-shredding of their personal data)",
        operation_class=_BodyMayBeAbsent,
    )
    async def forget(
        self,
        member_id: FromPath[UUID],
        services: NamedDependency[Services],
        ctx: NamedDependency[CommandContext],
        # Nothing to say: no body, or `{}` (anything else is refused, as everywhere).
        data: JSONBody[ForgetIn | None] = None,
    ) -> Response[MemberOut]:
        """The member's data key is destroyed: their identities and profile are unreadable from
        then on, everywhere they were stored (events, snapshots, kept answers, backups taken
        since). Open holds are released first; the identities are free to enrol again; the
        status becomes `forgotten` and later commands are 409 `member_forgotten`. Points,
        amounts and positions stay."""
        return reply(await privacy.forget(services, ctx, Forget(member_id=member_id)), member_out)
