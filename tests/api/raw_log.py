"""What the analytics tests compare with: the raw `events` table, decoded with nothing of the
service's (no projection, no aggregate), and the analytics as the API answers them."""

from __future__ import annotations

import json
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
