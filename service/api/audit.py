"""/v1/audit: verify the log, read it with its hashes, the signed checkpoints and their key."""

from __future__ import annotations

import base64
from typing import Annotated

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import QueryParameter
from litestar.response import Stream

from service.handlers import audit
from service.services import Services
from service.store.audit import AuditEvent, Verification

from .auth import requires
from .schemas import (
    AuditBreakOut,
    AuditCheckpointsOut,
    AuditPublicKeyOut,
    AuditVerifyOut,
)

NDJSON = "application/x-ndjson"
_POSITION = QueryParameter(ge=0, le=2**63 - 1)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def verification_out(result: Verification) -> AuditVerifyOut:
    broken = result.broken
    return AuditVerifyOut(
        ok=result.ok,
        after=result.after,
        position=result.position,
        global_hash=result.global_hash.hex(),
        events_checked=result.events_checked,
        checkpoints_checked=result.checkpoints_checked,
        break_=None
        if broken is None
        else AuditBreakOut(
            position=broken.position,
            stream=broken.stream,
            version=broken.version,
            reason=broken.reason,  # type: ignore[arg-type]  # one of the Literal's codes
            detail=broken.detail,
        ),
    )


class AuditController(Controller):
    path = "/v1/audit"
    tags = ["audit"]
    guards = [requires("audit")]

    @get("/verify", summary="Recompute the log's hash chains and report the first break")
    async def verify(
        self, services: NamedDependency[Services], after: Annotated[int, _POSITION] = 0
    ) -> AuditVerifyOut:
        """Every stream's chain and the global chain, from the start or from `after` (a
        checkpoint's position: what is at or before it is taken as that checkpoint signed it),
        and every signed checkpoint on the way. `ok` false names where the log first differs:
        `content_changed` (a byte of the event), `stream_version` (an event of the stream
        deleted, inserted or moved), `position_gap` (an event deleted), `global_chain` (events
        reordered or inserted before it), `checkpoint` (rewritten behind a signed checkpoint),
        `checkpoint_signature`, `truncated` (events deleted after the last checkpoint)."""
        return verification_out(await audit.verify(services, after=after))

    @get(
        "/events",
        summary="The log in global order with its hashes (JSON Lines)",
        responses={
            200: ResponseSpec(
                data_container=AuditEvent,
                media_type=NDJSON,
                generate_examples=False,
                description="One AuditEvent per line, in position order; resume with `after` = the"
                " last line's position.",
            )
        },
    )
    async def events(
        self,
        services: NamedDependency[Services],
        after: Annotated[int, _POSITION] = 0,
        limit: Annotated[int, QueryParameter(ge=1, le=100_000)] = 1000,
    ) -> Stream:
        """Streamed page by page: payloads as stored (personal fields sealed), each event's stream
        hash and global hash, the same lines as `loyalty audit export`."""
        return Stream(audit.events(services, after=after, limit=limit), media_type=NDJSON)

    @get("/checkpoints", summary="Signed checkpoints of the global hash")
    async def checkpoints(
        self,
        services: NamedDependency[Services],
        after: Annotated[int, _POSITION] = 0,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
    ) -> AuditCheckpointsOut:
        """Oldest first; each is also published on NATS (`loyalty.audit.checkpoint`)."""
        found = await audit.signed_checkpoints(services, after=after, limit=limit)
        return AuditCheckpointsOut(
            checkpoints=[c.wire() for c in found],
            next_after=found[-1].position if len(found) == limit else None,
        )

    @get("/public-key", summary="The key that verifies the checkpoints")
    async def public_key(self, services: NamedDependency[Services]) -> AuditPublicKeyOut:
        return AuditPublicKeyOut(
            algorithm="Ed25519",
            public_key=_b64(audit.public_key(services)),
            public_key_pem=audit.public_key_pem(services),
        )


__all__ = ["AuditController"]
