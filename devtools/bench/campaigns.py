"""`loyalty bench --campaigns N`: N live campaigns that every earn of the run matches (started
through the API with the admin key before the load, ended after it), to measure what campaigns
cost an earn. They target the bench's own channel, so other runs never apply them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from devtools.bench.client import Connection
from devtools.bench.prepare import Target, _call


def campaign_bodies(n: int, channel: str | None) -> list[dict[str, Any]]:
    """N campaigns of every shape an earn evaluates: multiplier, fixed bonus, A/B variants, a
    minimum spend and a cap (never reached), all matching any purchase of the run."""
    now = datetime.now(UTC)
    shapes: list[dict[str, Any]] = [
        {"multiplier": "1.5"},
        {"bonus_points": 10},
        {
            "variants": [
                {"name": "a", "weight": 1, "multiplier": "2"},
                {"name": "b", "weight": 1, "bonus_points": 5},
            ]
        },
        {"min_amount": "1.00", "bonus_points": 3},
        {"multiplier": "1.1", "cap_per_member": 1_000_000_000},
    ]
    return [
        {
            "name": f"bench campaign {i + 1}",
            "starts_at": (now - timedelta(minutes=1)).isoformat(),
            "ends_at": (now + timedelta(days=1)).isoformat(),
            "channels": [channel] if channel else [],
            **shapes[i % len(shapes)],
        }
        for i in range(n)
    ]


async def start_campaigns(
    target: Target, admin_key: str, n: int, channel: str | None, run_id: str
) -> list[str]:
    """Start the run's campaigns; their ids."""
    conn = await Connection.open(target.host, target.port)
    try:
        ids = []
        for i, body in enumerate(campaign_bodies(n, channel)):
            status, answer = await _call(
                conn, target, "POST", "/v1/campaigns", admin_key, body, idem=f"bench-campaign-{run_id}-{i}"
            )
            if status != 201:
                raise SystemExit(f"starting a bench campaign failed: {status} {answer}")
            ids.append(answer["campaign_id"])
        return ids
    finally:
        conn.close()


async def end_campaigns(target: Target, admin_key: str, ids: list[str], run_id: str) -> None:
    """End the run's campaigns, so that later runs do not evaluate them."""
    conn = await Connection.open(target.host, target.port)
    try:
        for campaign_id in ids:
            await _call(
                conn,
                target,
                "POST",
                f"/v1/campaigns/{campaign_id}/end",
                admin_key,
                idem=f"bench-end-{run_id}-{campaign_id}",
            )
    finally:
        conn.close()
