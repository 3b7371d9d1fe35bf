"""Rotating the master key (ADR 20): the stored keys are re-wrapped, the service secrets survive."""

from __future__ import annotations

import base64
import secrets
import uuid
from datetime import UTC, date, datetime
from typing import Any

import asyncpg
import pytest

from domain.identities import Identity
from domain.member_values import Profile
from service import cli
from service.config import Settings
from service.handlers import members, privacy
from service.handlers.commands import Enrol, Forget
from service.handlers.context import CommandContext
from service.handlers.program import ensure_program
from service.services import Services, open_services
from service.store.keys import Keyring, MasterKeyError, parse_master_key
from service.store.master_key import rotate_master_key


def new_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def ctx() -> CommandContext:
    return CommandContext(
        channel="pos",
        api_key_id="test",
        now=datetime.now(UTC),
        request_id=uuid.uuid4().hex,
        scopes=frozenset({"read", "members", "privacy"}),
        idempotency_key=uuid.uuid4().hex,
        request_hash=secrets.token_bytes(8),
    )


def settings(database_url: str, master: str, previous: str | None = None) -> Settings:
    return Settings(
        database_url=database_url,
        nats_url=None,
        master_key=master,
        previous_master_key=previous,
        db_pool_size=2,
    )


async def enrol(services: Services, phone: str, name: str | None = None) -> uuid.UUID:
    profile = None if name is None else Profile(name=name, birthday=date(1990, 5, 17))
    outcome = await members.enrol(
        services, ctx(), Enrol(identities=[Identity(kind="phone", value=phone)], profile=profile)
    )
    assert outcome.status == 201
    return outcome.result.member_id


def public_key(services: Services) -> bytes:
    return services.keyring.checkpoint_key.public_key().public_bytes_raw()


async def stored(database_url: str) -> list[Any]:
    """Every stored wrapped key and the sealed service secrets, to compare before and after."""
    conn = await asyncpg.connect(database_url)
    try:
        keys = await conn.fetch("SELECT member_id, wrapped_key FROM member_keys ORDER BY member_id")
        return [*map(tuple, keys), await conn.fetchval("SELECT sealed FROM service_secrets")]
    finally:
        await conn.close()


async def rotate(database_url: str, current: str, new: str) -> Any:
    conn = await asyncpg.connect(database_url)
    try:
        return await rotate_master_key(conn, parse_master_key(current), parse_master_key(new))
    finally:
        await conn.close()


async def test_a_rotation_rewraps_every_key_and_keeps_the_service_secrets(database_url: str) -> None:
    old, new = new_key(), new_key()
    async with open_services(settings(database_url, old)) as before:
        await ensure_program(before)
        # Stored on first start, exactly as derived before they were stored: existing data reads.
        assert (
            public_key(before)
            == Keyring(parse_master_key(old)).checkpoint_key.public_key().public_bytes_raw()
        )
        kept = await enrol(before, "+8613800000001", name="Li Wei")
        forgotten = await enrol(before, "+8613800000002")
        assert (await privacy.forget(before, ctx(), Forget(member_id=forgotten))).status == 201
        checkpoint_public_key = public_key(before)

    # Rolling restart, step 1: an instance that knows both keys, wrapping new keys with the old.
    async with open_services(settings(database_url, old, previous=new)) as step1:
        assert (await step1.repository.member(kept)).profile.name == "Li Wei"  # type: ignore[union-attr]
    # Step 2: wrapping with the new key, still reading the old; step-1 instances read its members.
    async with open_services(settings(database_url, new, previous=old)) as step2:
        assert (await step2.repository.member(kept)).profile.name == "Li Wei"  # type: ignore[union-attr]
        during = await enrol(step2, "+8613800000003", name="Zhang Min")
    async with open_services(settings(database_url, old, previous=new)) as step1:
        assert (await step1.repository.member(during)).profile.name == "Zhang Min"  # type: ignore[union-attr]

    # A wrong current key is refused and changes nothing.
    untouched = await stored(database_url)
    with pytest.raises(MasterKeyError):
        await rotate(database_url, new_key(), new_key())
    assert await stored(database_url) == untouched

    # Step 3: the rotation; the member enrolled under the new key is left as it is.
    done = await rotate(database_url, old, new)
    assert (done.rewrapped, done.already, done.shredded, done.secrets_rewrapped) == (1, 1, 1, True)
    rotated = await stored(database_url)
    again = await rotate(database_url, old, new)  # a re-run is a no-op
    assert (again.rewrapped, again.already, again.secrets_rewrapped) == (0, 2, False)
    assert await stored(database_url) == rotated

    # Step 4: only the new key. Everything reads; the identity hashes and the auditors' key hold.
    async with open_services(settings(database_url, new)) as after:
        member = await after.repository.member(kept)
        assert member is not None
        assert [i.value for i in member.identities] == ["+8613800000001"]
        assert member.profile == Profile(name="Li Wei", birthday=date(1990, 5, 17))
        assert (await after.repository.member(during)).profile.name == "Zhang Min"  # type: ignore[union-attr]
        assert await members.lookup(after, Identity(kind="phone", value="+8613800000001")) == kept
        assert public_key(after) == checkpoint_public_key
        gone = await after.repository.member(forgotten)
        assert gone is not None
        assert (gone.identities, gone.profile) == ([], None)

    # The old key alone no longer starts a service: it fails at start-up, saying why.
    with pytest.raises(MasterKeyError, match="does not open the stored service secrets"):
        async with open_services(settings(database_url, old)):
            pass


def test_the_command_generates_the_new_key_and_prints_it_last(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    old = new_key()
    monkeypatch.setenv("LOYALTY_MASTER_KEY", old)
    monkeypatch.delenv("LOYALTY_NEW_MASTER_KEY", raising=False)
    monkeypatch.setenv("LOYALTY_NATS_URL", "nats://unused:4222")  # not embedded; never connected
    assert cli.main(["keys", "rotate-master", "--database-url", database_url]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[0].startswith("re-wrapped 0 member key(s)")
    generated = printed[-1]
    # The stored secrets open with the printed key, and not with the old one any more.
    monkeypatch.setenv("LOYALTY_MASTER_KEY", generated)
    monkeypatch.setenv("LOYALTY_NEW_MASTER_KEY", new_key())
    assert cli.main(["keys", "rotate-master", "--database-url", database_url]) == 0
    monkeypatch.setenv("LOYALTY_MASTER_KEY", old)
    monkeypatch.delenv("LOYALTY_NEW_MASTER_KEY")
    with pytest.raises(SystemExit, match="does not open the stored service secrets"):
        cli.main(["keys", "rotate-master", "--database-url", database_url])
