"""Setup through the API: a bench channel and an API key for it, then the members enrolled."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from devtools.bench.client import Connection, request_bytes

# read: balance; earn: earn, refund, batch (its earns); redeem: redeem, hold, capture; members: setup
BENCH_SCOPES = ["read", "earn", "redeem", "members"]


@dataclass
class Target:
    host: str
    port: int

    @property
    def authority(self) -> str:
        return f"{self.host}:{self.port}"


def parse_url(url: str) -> Target:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise SystemExit(f"--url must be http://host:port, got {url!r}")
    return Target(parts.hostname, parts.port or 80)


async def _call(
    conn: Connection,
    target: Target,
    method: str,
    path: str,
    key: str,
    body: Any = None,
    *,
    idem: str | None = None,
) -> tuple[int, Any]:
    raw = request_bytes(
        method,
        target.authority,
        path,
        auth=key,
        idempotency_key=idem,
        body=json.dumps(body).encode() if body is not None else b"",
    )
    status, payload = await conn.send(raw, 60.0)
    try:
        return status, json.loads(payload) if payload else None
    except ValueError:
        return status, payload.decode(errors="replace")


async def setup(
    target: Target, *, admin_key: str | None, key: str | None, members: int, concurrency: int, run_id: str
) -> tuple[str, list[str], float]:
    """The bench key (made with the admin key unless given) and `members` new members' ids."""
    started = time.perf_counter()
    try:
        conn = await Connection.open(target.host, target.port)
    except OSError as exc:
        raise SystemExit(f"cannot connect to {target.authority}: {exc}") from None
    try:
        if key is None:
            if not admin_key:
                raise SystemExit("give --admin-key (or LOYALTY_ADMIN_KEY) to create a bench key, or --key")
            channel = f"bench-{run_id}"
            status, body = await _call(
                conn,
                target,
                "POST",
                "/v1/channels",
                admin_key,
                {"id": channel, "name": f"loyalty bench {run_id}", "kind": "internal"},
                idem=f"bench-channel-{run_id}",
            )
            if status not in (200, 201):
                raise SystemExit(f"creating the bench channel failed: {status} {body}")
            status, body = await _call(
                conn,
                target,
                "POST",
                "/v1/api-keys",
                admin_key,
                {"channel": channel, "scopes": BENCH_SCOPES, "name": f"bench {run_id}"},
                idem=f"bench-key-{run_id}",
            )
            if status != 201:
                raise SystemExit(f"creating the bench API key failed: {status} {body}")
            key = body["key"]
    finally:
        conn.close()
    assert key is not None
    ids: list[str] = []
    counter = iter(range(members))

    async def enrol_worker() -> None:
        c = await Connection.open(target.host, target.port)
        try:
            for i in counter:
                status, body = await _call(
                    c,
                    target,
                    "POST",
                    "/v1/members",
                    key,
                    {"identities": [{"kind": "app_user", "value": f"bench-{run_id}-{i}"}]},
                    idem=f"bench-enrol-{run_id}-{i}",
                )
                if status != 201:
                    raise SystemExit(f"enrolling a member failed: {status} {body}")
                ids.append(body["member_id"])
        finally:
            c.close()

    await asyncio.gather(*(enrol_worker() for _ in range(max(1, min(concurrency, members, 32)))))
    return key, ids, time.perf_counter() - started
