"""What the analytics tests compare with: the raw `events` table, decoded with nothing of the
service's (no projection, no aggregate), and the analytics as the API answers them."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

from domain.program import PROGRAM_ID
from tests.api.conftest import ADMIN_KEY, Api


def plain(value: Any) -> Any:
    """The library's stored JSON with its typed values (`{"_type_", "_data_"}`) unwrapped."""
    if isinstance(value, dict):
        if set(value) == {"_type_", "_data_"}:
            kind, data = value["_type_"], value["_data_"]
            if kind == "datetime_iso":
                return datetime.fromisoformat(data)
            if kind == "decimal_str":
                return Decimal(data)
            return plain(data)
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


async def raw_events(api: Api) -> list[dict[str, Any]]:
    """Every member event in log order: its stream, its type and its stored fields."""
    async with api.services.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT stream_id, event_type, convert_from(data, 'UTF8') AS data FROM events"
            " WHERE stream_id <> $1 ORDER BY position",
            PROGRAM_ID,
        )
    return [
        {"stream": str(r["stream_id"]), "type": r["event_type"], **plain(json.loads(r["data"]))} for r in rows
    ]


async def figures(api: Api, path: str, **params: Any) -> Any:
    """An analytics answer once its projections have applied the whole log."""
    position = await api.last_position()
    response = await api.get(path, key=ADMIN_KEY, params={"min_position": position, **params})
    assert response.status_code == 200, response.text
    return response.json()


async def on_a_still_log(api: Api, compare: Callable[[Api], Awaitable[None]], attempts: int = 20) -> None:
    """Run `compare` until it ran on a log that did not move meanwhile (the clock may record an
    expiry while the figures are read): a failure counts only then."""
    for _ in range(attempts):
        head = await api.last_position()
        try:
            await compare(api)
        except AssertionError:
            if await api.last_position() != head:
                continue
            raise
        if await api.last_position() == head:
            return
    raise AssertionError("the log kept moving")
