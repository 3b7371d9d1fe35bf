"""Request bodies: JSON only, decoded strictly into the endpoint's own Struct.

Litestar parses a body into plain JSON values and then converts them with msgspec's lax rules
(`"100"` would become 100, `1e2` an integer), and the parse of an untyped value can recurse as
deep as the client nests it. Here a body is decoded once, by msgspec, straight into the type
the endpoint's `data` parameter names: strict (no coercion from strings or floats), nesting
bounded by that type (the decoder stops at the first value of the wrong shape, so a body
nested a thousand deep fails at its second level), every problem named by its field path.
Litestar then finds a value of the right type and passes it on unchanged.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import msgspec
from litestar import Request
from litestar.exceptions import ClientException
from litestar.types import Empty

from service.handlers.errors import InvalidInput

from .schemas import PATTERN_HINTS

# msgspec's messages: "<what> - at `$.items[0].amount`" (no suffix: the body itself).
_AT = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_NAMED = re.compile(r"(?:missing required|unknown) field `([^`]+)`")


@functools.cache
def _decoder(target: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(target)


def _field_of(error: msgspec.ValidationError) -> tuple[str, str]:
    match = _AT.match(str(error))
    assert match is not None  # the pattern matches any text
    message, path = match["message"], (match["path"] or "").removeprefix(".")
    for pattern, hint in PATTERN_HINTS.items():
        if message.endswith(f"matching regex {pattern!r}"):
            message = hint
    named = _NAMED.search(message)
    if named:  # the missing or stray field itself, not the object holding it
        path = f"{path}.{named.group(1)}" if path else named.group(1)
    return path or "body", message


def decode_body(body: bytes, target: Any) -> Any:
    """`body` as a `target`; 400 when it is not JSON, 422 naming the field when it does not fit."""
    try:
        return _decoder(target).decode(body)
    except msgspec.ValidationError as exc:
        raise InvalidInput([_field_of(exc)]) from None
    except (msgspec.DecodeError, RecursionError):
        raise ClientException("the request body is not valid JSON") from None


class StrictRequest(Request[Any, Any, Any]):
    """A request whose JSON body is decoded strictly into its endpoint's `data` type."""

    async def json(self) -> Any:
        if self._json is Empty:
            field = self.route_handler.parsed_data_field
            target = Any if field is None else field.annotation
            self._json = decode_body(await self.body() or b"null", target)
        return self._json


def canonical(value: Any) -> bytes:
    """The decoded request as canonical JSON (field order fixed, no whitespace): what an
    idempotency fingerprint covers, so that a retry formatted differently is the same request."""
    return msgspec.json.encode(value, order="sorted")
