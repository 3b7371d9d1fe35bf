"""The Litestar application factory: routes, lifespan, error mapping, docs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from litestar import Litestar, Response, get
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import HTTPException
from litestar.types import ASGIApp, Receive, Scope, Send

from service import tracing
from service.api.access import AccessController
from service.api.analytics import AnalyticsController
from service.api.audit import AuditController
from service.api.auth import Gate, is_public
from service.api.batch import BatchController
from service.api.body import StrictRequest
from service.api.campaigns import CampaignsController
from service.api.errors import EXCEPTION_HANDLERS
from service.api.health import HealthController
from service.api.holds import HoldsController
from service.api.lean import LEAN
from service.api.lean import answer as answer_lean
from service.api.ledger import LedgerController
from service.api.live import LiveController
from service.api.members import MembersController
from service.api.openapi import openapi_config
from service.api.privacy import PrivacyController
from service.api.program import ProgramController
from service.bus.asyncapi import asyncapi_document
from service.config import Settings
from service.console import ROUTES as CONSOLE_ROUTES
from service.handlers.program import ensure_program
from service.logs import channel_var, member_id_var, request_id_var
from service.metrics import (
    CONTENT_TYPE,
    Metrics,
    appender_metrics,
    checkpoint_metrics,
    clock_metrics,
    projection_metrics,
    relay_metrics,
)
from service.services import Services, open_services

log = logging.getLogger("service.requests")


def _services(state: State) -> Services:
    services: Services = state.services
    return services


_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_NOT_JSON = "request bodies must be JSON (Content-Type: application/json)"


def _json_content(headers: dict[bytes, bytes]) -> bool:
    """Whether a request with a body says it is JSON (`application/json` or `…+json`, UTF-8)."""
    media, _, params = (headers.get(b"content-type") or b"").decode("latin-1").partition(";")
    media = media.strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        return False
    charset = params.strip().lower()
    if not charset.startswith("charset="):
        return True
    return charset.removeprefix("charset=").strip('"') in ("utf-8", "utf8")


def _has_body(headers: dict[bytes, bytes]) -> bool:
    return headers.get(b"content-length", b"0").strip() not in (b"0", b"") or b"transfer-encoding" in headers


def _front(metrics: Metrics, gate: Gate | None, *, log_requests: bool) -> Any:
    """The one middleware of every request: request id, the caller (from the API key, within its
    rate limit, unless the path is public; `gate` None: every path is public), JSON bodies only,
    and one log line and one metrics sample at the end (method, route, status, duration, ids;
    never bodies or query strings)."""

    observe = _observer(metrics)

    def factory(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            started = time.perf_counter()
            headers = dict(scope["headers"])
            request_id = (headers.get(b"x-request-id") or b"").decode("latin-1")[:100] or uuid.uuid4().hex
            request_id_var.set(request_id)
            channel_var.set(None)
            member_id_var.set(None)
            status = 500
            traced = tracing.request(scope["method"], headers.get(b"traceparent"))  # None when off

            async def send_wrapper(message: Any) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    if scope["method"] == "OPTIONS" and status == 204:
                        message = _with_allowed_methods(scope, message)
                await send(message)

            try:
                # OPTIONS (a browser's preflight) carries no key and says only what the path allows.
                if gate is not None and scope["method"] != "OPTIONS" and not is_public(scope["path"]):
                    services = scope["app"].state.services
                    client = (scope.get("client") or ("unknown", 0))[0]
                    scope["user"] = await gate.admit(services, headers.get(b"authorization"), client)
                    if scope["method"] in _BODY_METHODS and _has_body(headers) and not _json_content(headers):
                        raise HTTPException(status_code=415, detail=_NOT_JSON)
                    # A command endpoint: answered on the lean path, past Litestar's (ADR 24).
                    lean = scope["route_handler"].opt.get(LEAN) if scope["method"] == "POST" else None
                    if lean is not None:
                        status = await answer_lean(scope, receive, send, lean, headers)
                        return
                await app(scope, receive, send_wrapper)
            except HTTPException as exc:  # answered by the app's exception handlers
                status = exc.status_code
                raise
            finally:
                seconds = time.perf_counter() - started
                route = scope.get("path_template") or "unmatched"
                observe(scope["method"], route, status, seconds)
                if traced is not None:
                    traced.end(route, status)
                if log_requests:
                    _log_request(scope, status, seconds, request_id)

        return middleware

    return factory


def _observer(metrics: Metrics) -> Callable[[str, str, int, float], None]:
    """`metrics.observe_request`, with each label combination's children kept: finding them by
    their labels (a lock, checks, a dict look-up, for each of two metrics) cost more than the
    observation itself."""
    children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(method: str, route: str, status: int, seconds: float) -> None:
        both = children.get((method, route, status))
        if both is None:  # as observe_request labels them; routes are templates, so few
            both = metrics.requests.labels(method, route, str(status)), metrics.latency.labels(method, route)
            children[method, route, status] = both
        both[0].inc()
        both[1].observe(seconds)

    return observe


def _with_allowed_methods(scope: Scope, message: Any) -> Any:
    """Litestar 2 builds a path's automatic OPTIONS answer with the first handler registered on
    the path (litestar#4169, fixed in 3.0): `Allow` then misses the others. The route knows all."""
    template = scope.get("path_template")
    route = next((r for r in scope["app"].routes if getattr(r, "path_format", None) == template), None)
    if route is None:
        return message
    allow = ", ".join(sorted(route.methods)).encode()
    headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"allow"]
    return {**message, "headers": [*headers, (b"allow", allow)]}


def _log_request(scope: Scope, status: int, seconds: float, request_id: str) -> None:
    level = logging.WARNING if status >= 500 else logging.INFO
    if not log.isEnabledFor(level):
        return
    user = scope.get("user")
    member_id = (scope.get("path_params") or {}).get("member_id")
    ids = {
        "request_id": request_id,
        "channel": getattr(user, "channel", None),
        "member_id": None if member_id is None else str(member_id),
    }
    # Made directly rather than by log.log(), which first walks the stack to find its caller
    # (a file and line no formatter prints): the dearest part of a request's log line.
    record = log.makeRecord(
        log.name,
        level,
        __file__,
        0,
        "%s %s %d",
        # never the query string: lookups carry identities there
        (scope["method"], scope["path"], status),
        None,
        extra={
            **{k: v for k, v in ids.items() if v is not None},
            "status": status,
            "duration_ms": round(seconds * 1000, 2),
        },
    )
    log.handle(record)


@get("/asyncapi.json", include_in_schema=False, sync_to_thread=False)
def asyncapi_endpoint(state: State) -> dict[str, Any]:
    """The AsyncAPI 3 document of the events on NATS (also committed as docs/asyncapi.json)."""
    document: dict[str, Any] = state.asyncapi
    return document


@get("/metrics", include_in_schema=False)
async def metrics_endpoint(state: State) -> Response[bytes]:
    """Prometheus exposition (public, like /health: it holds no personal data)."""
    return Response(await state.metrics.render(), media_type=CONTENT_TYPE)


def _lifespan(settings: Settings, metrics: Metrics, *, lead: bool | None) -> Any:
    """Open the services for the app's lifetime and report their state in `metrics`."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        tracing.start(settings.otlp_endpoint)
        async with contextlib.AsyncExitStack() as stack:
            # After the services, so that their last spans go out; in a thread: it may wait for
            # the collector.
            stack.push_async_callback(asyncio.to_thread, tracing.stop)
            services = await stack.enter_async_context(open_services(settings, lead=lead))
            await ensure_program(services)
            metrics.watch(lambda: appender_metrics(services.appender))
            if services.relay is not None:
                relay = services.relay
                metrics.watch(lambda: relay_metrics(relay))
            if services.segments_relay is not None:
                segments_relay = services.segments_relay
                metrics.watch(lambda: relay_metrics(segments_relay, "loyalty_segments_relay"))
            metrics.watch_async(lambda: projection_metrics(services.projections))
            if services.clock is not None:
                clock = services.clock
                metrics.watch(lambda: clock_metrics(clock))
            if services.checkpointer is not None:
                checkpointer = services.checkpointer
                metrics.watch(lambda: checkpoint_metrics(checkpointer))
            app.state.services = services
            yield

    return lifespan


def create_app(settings: Settings, *, log_requests: bool = True) -> Litestar:
    """The HTTP API; its lifespan opens the services (pool, appender, NATS) and closes them."""

    metrics = Metrics()
    return Litestar(
        route_handlers=[
            MembersController,
            AnalyticsController,
            PrivacyController,
            LedgerController,
            HoldsController,
            BatchController,
            ProgramController,
            CampaignsController,
            AccessController,
            LiveController,
            AuditController,
            HealthController,
            metrics_endpoint,
            asyncapi_endpoint,
            *CONSOLE_ROUTES,
        ],
        state=State(
            {
                "metrics": metrics,
                # Set when the server starts draining: long-lived responses (the live stream) end.
                "draining": asyncio.Event(),
                "asyncapi": asyncapi_document(settings, subject_prefix=settings.subject_prefix),
            }
        ),
        lifespan=[_lifespan(settings, metrics, lead=None)],
        dependencies={"services": Provide(_services, sync_to_thread=False)},
        middleware=[_front(metrics, Gate(settings.rate_limit_per_key), log_requests=log_requests)],
        exception_handlers=EXCEPTION_HANDLERS,
        request_class=StrictRequest,
        openapi_config=openapi_config(),
        logging_config=None,  # service.logs configures logging, once, for everything
        debug=False,
    )


def create_follower_app(settings: Settings) -> Litestar:
    """`loyalty follow`: the relay and the projections leading, with only /health and /metrics."""

    metrics = Metrics()
    return Litestar(
        route_handlers=[HealthController, metrics_endpoint],
        state=State({"metrics": metrics}),
        lifespan=[_lifespan(settings, metrics, lead=True)],
        dependencies={"services": Provide(_services, sync_to_thread=False)},
        middleware=[_front(metrics, None, log_requests=False)],
        exception_handlers=EXCEPTION_HANDLERS,
        openapi_config=None,
        logging_config=None,
        debug=False,
    )
