"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Response, get
from litestar.di import NamedDependency

from service.services import Services


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
        checks["nats"] = {"ok": nats is not None and nats.is_connected}
        ok = all(c["ok"] for c in checks.values())
        return Response(
            {"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503
        )
