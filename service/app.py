"""The Litestar application factory: routes, lifespan, error mapping, docs."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.types import ASGIApp, Receive, Scope, Send

from service.api.access import AccessController
from service.api.auth import authentication
from service.api.errors import EXCEPTION_HANDLERS
from service.api.health import HealthController
from service.api.ledger import LedgerController
from service.api.members import MembersController
from service.api.program import ProgramController
from service.config import Settings
from service.handlers.program import ensure_program
from service.logs import channel_var, member_id_var, request_id_var
from service.services import Services, open_services

log = logging.getLogger("service.requests")


def _services(state: State) -> Services:
    services: Services = state.services
    return services


def _request_logging(app: ASGIApp) -> ASGIApp:
    """One log line per request: method, route, status, duration, ids — never bodies or queries."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        request_id_var.set((headers.get(b"x-request-id") or b"").decode("latin-1")[:100] or uuid.uuid4().hex)
        channel_var.set(None)
        member_id_var.set(None)
        status = 500

        async def send_wrapper(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await app(scope, receive, send_wrapper)
        finally:
            user = scope.get("user")
            member_id = (scope.get("path_params") or {}).get("member_id")
            ids = {
                "request_id": request_id_var.get(),
                "channel": getattr(user, "channel", None),
                "member_id": None if member_id is None else str(member_id),
            }
            level = logging.WARNING if status >= 500 else logging.INFO
            log.log(
                level,
                "%s %s %d",
                scope["method"],
                scope["path"],  # never the query string: lookups carry identities there
                status,
                extra={
                    **{k: v for k, v in ids.items() if v is not None},
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                },
            )

    return middleware


def create_app(settings: Settings, *, log_requests: bool = True) -> Litestar:
    """Build the app; its lifespan opens the services (pool, appender, NATS) and closes them."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with open_services(settings) as services:
            await ensure_program(services)
            app.state.services = services
            yield

    return Litestar(
        route_handlers=[
            MembersController,
            LedgerController,
            ProgramController,
            AccessController,
            HealthController,
        ],
        lifespan=[lifespan],
        dependencies={"services": Provide(_services, sync_to_thread=False)},
        middleware=[authentication, *([_request_logging] if log_requests else [])],
        exception_handlers=EXCEPTION_HANDLERS,
        openapi_config=OpenAPIConfig(
            title="Loyalty ledger",
            version="1.0.0",
            description="One member, one balance and one set of rules behind every sales channel.",
            components=Components(
                security_schemes={
                    "apiKey": SecurityScheme(
                        type="http", scheme="bearer", description="An API key of a channel"
                    ),
                }
            ),
            security=[{"apiKey": []}],
        ),
        logging_config=None,  # service.logs configures logging, once, for everything
        debug=False,
    )
