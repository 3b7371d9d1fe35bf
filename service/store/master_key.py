"""The keyring as the store holds it, and the rotation of the master key (ADR 20).

The service secrets (identity-index, idempotency-record and checkpoint-signing keys) are
stored wrapped by the master key, like the member keys: a rotation re-wraps both, and the
secrets themselves, on which stored identity hashes and the auditors' public key depend,
never change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from cryptography.exceptions import InvalidTag

from .keys import (
    Keyring,
    MasterKeyError,
    derive_service_secrets,
    open_service_secrets,
    seal_service_secrets,
)


async def load_keyring(conn: Any, master: bytes, previous: bytes | None = None) -> Keyring:
    """The keyring with the stored service secrets, opened by `master` (or `previous`).

    On a database without them (first start of this version) they are derived from `master`,
    exactly as before they were stored, and stored sealed by it; with `previous` given that
    would be ambiguous (which key is the original?), so it is refused.
    """
    sealed = await conn.fetchval("SELECT sealed FROM service_secrets")
    if sealed is None:
        if previous is not None:
            raise MasterKeyError(
                "the service secrets are not stored yet: start once with LOYALTY_MASTER_KEY alone"
                " (the key in use) before setting LOYALTY_PREVIOUS_MASTER_KEY"
            )
        sealed = await _stored(conn, master)
    for key in (master, previous):
        if key is None:
            continue
        try:
            service_secrets = open_service_secrets(key, sealed)
        except InvalidTag:
            continue
        return Keyring(master, previous=previous, service_secrets=service_secrets)
    raise MasterKeyError(
        "LOYALTY_MASTER_KEY does not open the stored service secrets"
        + ("" if previous is None else " (nor does LOYALTY_PREVIOUS_MASTER_KEY)")
        + ": the master key was rotated, or this is not this database's key"
    )


async def _stored(conn: Any, master: bytes) -> bytes:
    """The sealed service secrets, derived from `master` and stored if absent."""
    await conn.execute(
        "INSERT INTO service_secrets (sealed) VALUES ($1) ON CONFLICT (id) DO NOTHING",
        seal_service_secrets(master, derive_service_secrets(master)),
    )
    # Another instance may have stored them first: what is stored wins.
    return bytes(await conn.fetchval("SELECT sealed FROM service_secrets FOR UPDATE"))


@dataclass(frozen=True, slots=True)
class Rotation:
    """What `rotate_master_key` did."""

    rewrapped: int  # member keys now wrapped by the new key
    already: int  # member keys that were already (a re-run, or enrolled by an instance on the new key)
    shredded: int  # forgotten members' keys: none to re-wrap
    secrets_rewrapped: bool


async def rotate_master_key(conn: Any, current: bytes, new: bytes) -> Rotation:
    """Re-wrap every member key and the service secrets from `current` to `new`, in one
    transaction; a key already wrapped by `new` is left. Refuses (MasterKeyError, nothing
    changed) when `current` does not open a stored key that `new` does not either."""
    if current == new:
        raise MasterKeyError("the new master key is the current one")
    async with conn.transaction():
        # Stored now (derived from `current`) if no instance of this version has run yet.
        sealed = await _stored(conn, current)
        secrets_rewrapped = False
        try:
            open_service_secrets(new, sealed)
        except InvalidTag:
            try:
                service_secrets = open_service_secrets(current, sealed)
            except InvalidTag:
                raise MasterKeyError(
                    "LOYALTY_MASTER_KEY does not open the stored service secrets (nor does the new"
                    " key): it is not this database's current master key; nothing was changed"
                ) from None
            await conn.execute(
                "UPDATE service_secrets SET sealed = $1", seal_service_secrets(new, service_secrets)
            )
            secrets_rewrapped = True
        old = Keyring(current)
        to_new = Keyring(new)
        ids: list[UUID] = []
        before: list[bytes] = []
        after: list[bytes] = []
        already = unreadable = 0
        rows = await conn.fetch(
            "SELECT member_id, wrapped_key FROM member_keys WHERE wrapped_key IS NOT NULL"
        )
        for row in rows:
            member_id, wrapped = row["member_id"], bytes(row["wrapped_key"])
            try:
                to_new.unwrap(member_id, wrapped)
                already += 1
                continue
            except InvalidTag:
                pass
            try:
                key = old.unwrap(member_id, wrapped)
            except InvalidTag:
                unreadable += 1
                continue
            ids.append(member_id)
            before.append(wrapped)
            after.append(to_new.wrap(member_id, key))
        if unreadable:
            raise MasterKeyError(
                f"{unreadable} member key(s) open with neither the current nor the new master key;"
                " nothing was changed"
            )
        # `wrapped_key = before`: a key shredded meanwhile (a member forgotten) stays shredded.
        await conn.execute(
            "UPDATE member_keys m SET wrapped_key = u.after"
            " FROM unnest($1::uuid[], $2::bytea[], $3::bytea[]) AS u(member_id, before, after)"
            " WHERE m.member_id = u.member_id AND m.wrapped_key = u.before",
            ids,
            before,
            after,
        )
        shredded = await conn.fetchval("SELECT count(*) FROM member_keys WHERE wrapped_key IS NULL")
    return Rotation(
        rewrapped=len(ids), already=already, shredded=shredded, secrets_rewrapped=secrets_rewrapped
    )
