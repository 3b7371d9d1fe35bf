"""What auditors ask: verify the log's chains, read the log and the signed checkpoints (ADR 14)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from cryptography.hazmat.primitives import serialization

from service.services import Services
from service.store.audit import (
    ChainVerifier,
    Checkpoint,
    Verification,
    audit_lines,
    checkpoints,
    yield_to_loop,
)


def public_key(services: Services) -> bytes:
    """The raw Ed25519 public key that verifies this service's checkpoints."""
    return services.keyring.checkpoint_key.public_key().public_bytes_raw()


def public_key_pem(services: Services) -> str:
    return (
        services.keyring.checkpoint_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


async def verify(services: Services, *, after: int = 0) -> Verification:
    """Recompute the chains after `after` (0: the whole log), checking every signed checkpoint
    on the way, up to the first break. Pauses between pages so other requests are served."""
    async with services.pool.acquire() as conn:
        verifier = await ChainVerifier.resumed(conn, after, public_key=public_key(services))
        if isinstance(verifier, Verification):
            return verifier
        return await verifier.run(conn, pause=yield_to_loop)


def events(services: Services, *, after: int, limit: int) -> AsyncIterator[bytes]:
    """The log after `after`, at most `limit` events, as JSON Lines (AuditEvent), page by page."""
    return audit_lines(services.pool, after=after, limit=limit)


async def signed_checkpoints(services: Services, *, after: int, limit: int) -> list[Checkpoint]:
    async with services.pool.acquire() as conn:
        return await checkpoints(conn, after=after, limit=limit)
