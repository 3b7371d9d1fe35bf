"""Turning a handler's Reply into an HTTP response."""

from __future__ import annotations

from typing import Any

from litestar import Response

from service.handlers.context import Reply


def reply(result: Reply) -> Response[Any]:
    """The encoded body as is; a replay of a first answer says so in a header."""
    headers = {"Idempotent-Replayed": "true"} if result.replayed else {}
    return Response(
        content=result.body, status_code=result.status, media_type="application/json", headers=headers
    )
