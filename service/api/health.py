"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Response, get
from litestar.di import NamedDependency

from service.services import Services

# A projection this far behind serves stale reads: take the instance out of rotation.
PROJECTION_LAG_LIMIT_SECONDS = 30.0


class HealthController(Controller):
    path = "/health"
    tags = ["operations"]
    include_in_schema = False

    @get("/live", summary="The process is up")
    async def live(self) -> dict[str, str]:
        return {"status": "ok"}

    @get("/ready", summary="Database and NATS reachable")
    async def ready(self, services: NamedDependency[Services]) -> Response[dict[str, Any]]:
        checks: dict[str, Any] = {}
        try:
            async with services.pool.acquire(timeout=2) as conn:
                checks["database"] = {
                    "ok": True,
                    "position": await conn.fetchval("SELECT coalesce(max(position), 0) FROM events"),
                }
        except Exception as exc:
            checks["database"] = {"ok": False, "error": type(exc).__name__}
        nats = services.nats
        # NATS is reported, not required: commands succeed while it is away (the log keeps
        # every event and the relay publishes them when it returns), so the instance stays in
        # rotation and says it is degraded.
        checks["nats"] = {"ok": True, "connected": nats is not None and nats.is_connected}
        if services.relay is not None:
            relay = services.relay.status()
            checks["relay"] = {
                "ok": True,
                "active": relay.active,
                "position": relay.published_position,
                "lag_events": relay.lag_events,
                "lag_seconds": round(relay.lag_seconds, 3),
            }
        for projection in await services.projections.status():
            checks[f"projection:{projection.name}"] = {
                "ok": projection.error is None and projection.lag_seconds < PROJECTION_LAG_LIMIT_SECONDS,
                "position": projection.position,
                "lag_events": projection.lag_events,
                "lag_seconds": round(projection.lag_seconds, 3),
                **({"error": projection.error} if projection.error else {}),
            }
        ok = all(c["ok"] for c in checks.values())
        degraded = not checks["nats"]["connected"]
        status = "unavailable" if not ok else "degraded" if degraded else "ok"
        return Response({"status": status, "checks": checks}, status_code=200 if ok else 503)
