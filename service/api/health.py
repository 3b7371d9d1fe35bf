"""Liveness and readiness.

`/health/ready` is 200 when this instance can take traffic and the followers of the log keep
up, and 503 with the failing checks in the body otherwise; it comes back to 200 by itself when
they recover. Its checks:

- database: a connection within CHECK_TIMEOUT, and the log's head read on it;
- projection:<name>: applies the log without error, under PROJECTION_LAG_LIMIT_SECONDS behind
  (stale reads otherwise);
- nats: reported, never failing. Commands succeed while NATS is unreachable (the log keeps
  every event and the relay publishes them when it returns), so the instance stays in rotation
  and says "degraded". Whether the stream exists and how far the relay lags cannot be judged
  then (the lag only grows while it waits), so neither counts against readiness;
- stream (NATS reachable): the stream exists. Start-up creates it (SPEC §6), so a subscriber
  connecting after readiness finds it; missing while NATS answers means the relay cannot
  publish (never created yet, deleted, refused by JetStream): not ready;
- relay (NATS reachable): not more than `ready_max_relay_lag_seconds` behind, once NATS has
  been reachable that long (the backlog of a NATS outage gets that time to go out, so that
  every instance does not leave rotation at once when NATS returns). A relay further behind is
  stuck, or no instance runs it.

Every check is bounded in time and any error fails that check only: during a database outage
the answer is a 503 with the checks, never a 500 or a hung probe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from litestar import Controller, Response, get
from litestar.di import NamedDependency

from service.bus.relay import Relay
from service.services import Services

# A projection this far behind serves stale reads: take the instance out of rotation.
PROJECTION_LAG_LIMIT_SECONDS = 30.0
# Each check answers within this (a load balancer's probe times out after a few seconds).
CHECK_TIMEOUT = 2.0


class HealthController(Controller):
    path = "/health"
    tags = ["operations"]
    include_in_schema = False

    @get("/live", summary="The process is up")
    async def live(self) -> dict[str, str]:
        return {"status": "ok"}

    @get("/ready", summary="Database, NATS, the stream, relay and projection lag")
    async def ready(self, services: NamedDependency[Services]) -> Response[dict[str, Any]]:
        relay = services.relay
        # Concurrently: a database outage costs one timeout, not one per check.
        database, projections, stream = await asyncio.gather(
            _bounded(_database(services)),
            _bounded(_projections(services)),
            _bounded(_stream(relay)) if relay is not None else _nothing(),
        )
        checks: dict[str, Any] = {"database": database}
        nats = services.nats
        connected = nats is not None and nats.is_connected
        checks["nats"] = {"ok": True, "connected": connected}
        if relay is not None:
            checks["stream"] = stream
            checks["relay"] = _relay(relay, services.settings.ready_max_relay_lag_seconds)
        if "error" in projections:  # their status could not be read: all of them fail
            for name in services.projections.names:
                checks[f"projection:{name}"] = {
                    "ok": False,
                    "position": services.projections.position(name),
                    "error": projections["error"],
                }
        else:
            checks.update(projections)
        ok = all(c["ok"] for c in checks.values())
        status = "unavailable" if not ok else "ok" if connected or nats is None else "degraded"
        return Response({"status": status, "checks": checks}, status_code=200 if ok else 503)


async def _bounded(check: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    """The check's result; a failing check (any error, or too slow) as not ok, with the error."""
    try:
        return await asyncio.wait_for(check, CHECK_TIMEOUT)
    except Exception as exc:  # pool timeouts, refused connections, asyncpg and NATS errors
        return {"ok": False, "error": type(exc).__name__}


async def _nothing() -> dict[str, Any]:
    return {}


async def _database(services: Services) -> dict[str, Any]:
    async with services.pool.acquire(timeout=CHECK_TIMEOUT) as conn:
        position = await conn.fetchval("SELECT coalesce(max(position), 0) FROM events")
    return {"ok": True, "position": position}


async def _projections(services: Services) -> dict[str, Any]:
    checks: dict[str, Any] = {}
    for projection in await services.projections.status():
        checks[f"projection:{projection.name}"] = {
            "ok": projection.error is None and projection.lag_seconds < PROJECTION_LAG_LIMIT_SECONDS,
            "position": projection.position,
            "lag_events": projection.lag_events,
            "lag_seconds": round(projection.lag_seconds, 3),
            **({"error": projection.error} if projection.error else {}),
        }
    return checks


async def _stream(relay: Relay) -> dict[str, Any]:
    exists = await relay.stream_exists()
    # None: NATS is unreachable, the stream's existence is unknown (see the module docstring).
    return {"ok": exists is not False, "name": relay.stream_name, "exists": exists}


def _relay(relay: Relay, max_lag_seconds: float) -> dict[str, Any]:
    status = relay.status()
    stuck = (
        status.nats_connected
        and status.lag_seconds > max_lag_seconds
        and status.nats_up_seconds > max_lag_seconds
    )
    return {
        "ok": not stuck,
        "active": status.active,
        "position": status.published_position,
        "lag_events": status.lag_events,
        "lag_seconds": round(status.lag_seconds, 3),
        "max_lag_seconds": max_lag_seconds,
    }
