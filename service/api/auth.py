"""Bearer API keys: finding the caller (called by the request middleware in service/app.py),
guards that check scopes, and the CommandContext every state-changing request is turned into."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException, TooManyRequestsException
from litestar.handlers.base import BaseRouteHandler

from service.handlers.context import CommandContext
from service.handlers.errors import InvalidInput
from service.logs import channel_var, request_id_var
from service.services import Services
from service.store.access import LookupRefused, Principal

from .body import canonical
from .limits import TokenBuckets, retry_after
from .schemas import IDEMPOTENCY_KEY

PUBLIC_PREFIXES = ("/health", "/schema", "/metrics", "/asyncapi.json", "/console")
IDEMPOTENCY_HEADER = "idempotency-key"
IDEMPOTENCY_HEADER_BYTES = IDEMPOTENCY_HEADER.encode()


def is_public(path: str) -> bool:
    """Health, docs, metrics, the console's page and files: no key needed (they hold no data)."""
    return path.startswith(PUBLIC_PREFIXES)


async def authenticate(services: Services, authorization: bytes | None, *, look_up: bool = True) -> Principal:
    """`Authorization: Bearer <key>` → the key's Principal; NotAuthorizedException (401) if not
    (LookupRefused when the key is not cached and `look_up` is False)."""
    scheme, _, key = (authorization or b"").decode("latin-1").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise NotAuthorizedException("an API key is required: Authorization: Bearer <key>")
    principal = await services.access.authenticate(key, look_up=look_up)
    if principal is None:
        raise NotAuthorizedException("the API key is not valid")
    channel_var.set(principal.channel)
    return principal


class Gate:
    """Who gets in: a valid API key, within its rate limit; and a brake on guessing keys.

    Each lookup of a key not cached takes a token from its client address's bucket (given back
    when the key is valid); while an address has used them up, a key from it that is not cached
    is answered 429 without a database lookup, so a flood of made-up keys cannot crowd out the
    honest callers' queries (and the cached keys of that address, e.g. the other tills behind a
    store's NAT, still work).
    """

    FAILURES_PER_SECOND = 5.0
    FAILURE_BURST = 50.0

    def __init__(self, rate_per_key: int) -> None:
        self._keys = TokenBuckets(rate_per_key, 2.0 * rate_per_key) if rate_per_key > 0 else None
        self._failures = TokenBuckets(self.FAILURES_PER_SECOND, self.FAILURE_BURST)

    async def admit(self, services: Services, authorization: bytes | None, client: str) -> Principal:
        """The caller's Principal; 401 without a valid key, 429 over a limit."""
        try:
            principal = await authenticate(services, authorization, look_up=False)
        except LookupRefused:
            # Not cached: a lookup costs a token of the address's failure bucket, given back
            # when the key turns out valid (taken first, so that concurrent guesses count too).
            wait = self._failures.take(client)
            if wait:
                raise TooManyRequestsException(
                    "too many requests with invalid API keys from this address",
                    headers={"Retry-After": retry_after(wait)},
                ) from None
            principal = await authenticate(services, authorization)
            self._failures.give_back(client)
        if self._keys is not None:
            wait = self._keys.take(principal.key_id)
            if wait:
                raise TooManyRequestsException(
                    "this API key is over its rate limit", headers={"Retry-After": retry_after(wait)}
                )
        return principal


def requires(*scopes: str) -> Any:
    """A guard letting through only keys that carry one of `scopes`."""

    # Async on purpose: Litestar runs a sync guard in a worker thread, on every request.
    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        if connection.scope["method"] == "OPTIONS":  # a preflight: no key, nothing done
            return
        principal: Principal = connection.user
        if principal.scopes.isdisjoint(scopes):
            raise PermissionDeniedException(lacks(*scopes))

    guard.__name__ = "requires_" + "_or_".join(scopes)
    guard.scopes = scopes  # type: ignore[attr-defined]  # read by the OpenAPI document
    return guard


def lacks(*scopes: str) -> str:
    """What a 403 says: the key has none of `scopes`."""
    wanted = " or ".join(repr(s) for s in scopes)
    return f"this API key lacks the {wanted} scope"


def fingerprint(method: str, path: str, body: bytes) -> bytes:
    """What an Idempotency-Key is bound to: the method, the path and the canonical body."""
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()


def _valid_idempotency_key(key: str) -> bool:
    return IDEMPOTENCY_KEY.fullmatch(key) is not None


async def command_context(
    request: Request[Principal, Any, Any], services: NamedDependency[Services]
) -> CommandContext:
    """The caller, the clock and the idempotency key of a state-changing request.

    (It takes `services` only so that Litestar resolves the two dependencies one after the
    other: two independent ones cost an anyio task group on every request, ~7 % of CPU here.)

    POSTs and PUTs must carry an Idempotency-Key (a PUT of rules publishes a new version each
    time, so a retried one must be recognised like any other command); the request hash covers
    method, path and the decoded body (so a retry that differs only in whitespace or key order
    is the same request), and the same key with any other request is refused.
    """
    body = b""
    if request.route_handler.parsed_data_field:
        # An absent body (a release may have none) is the same request as `{}`.
        data = await request.json()
        body = canonical(data if data is not None else {})
    return context_of(
        request.user,
        method=request.method,
        path=request.url.path,
        idempotency_key=request.headers.get(IDEMPOTENCY_HEADER),
        request_id=request_id_var.get() or request.headers.get("x-request-id"),
        body=body,
    )


def context_of(
    principal: Principal,
    *,
    method: str,
    path: str,
    idempotency_key: str | None,
    request_id: str | None,
    body: bytes,
) -> CommandContext:
    """The CommandContext of a request (`body`: its canonical body, empty when it has none);
    InvalidInput when a POST or PUT lacks a valid Idempotency-Key."""
    if method in ("POST", "PUT"):
        if idempotency_key is None:
            raise InvalidInput([("Idempotency-Key", "header is required on every change of state")])
        if not _valid_idempotency_key(idempotency_key):
            raise InvalidInput([("Idempotency-Key", "must be 1-200 printable ASCII characters")])
    return CommandContext(
        channel=principal.channel,
        api_key_id=str(principal.key_id),
        scopes=principal.scopes,
        now=datetime.now(UTC),
        request_id=(request_id or uuid.uuid4().hex)[:100],
        idempotency_key=idempotency_key,
        request_hash=fingerprint(method, path, body),
    )
