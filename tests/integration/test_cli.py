"""The `loyalty` command against configured servers: migrate, keys, projections."""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import subprocess
import sys

import asyncpg

from projections.registry import PROJECTIONS

MASTER_KEY = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def loyalty(*args: str, database_url: str, nats_url: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "LOYALTY_DATABASE_URL": database_url,
        "LOYALTY_NATS_URL": nats_url,
        "LOYALTY_MASTER_KEY": MASTER_KEY,
        "LOYALTY_LOG_FORMAT": "json",
    }
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_migrate_keys_and_projections_commands(database_url: str, nats_url: str) -> None:
    migrated = loyalty("migrate", database_url=database_url, nats_url=nats_url)
    again = loyalty("migrate", database_url=database_url, nats_url=nats_url)
    created = loyalty(
        "keys",
        "create",
        "--channel",
        "admin",
        "--scopes",
        "read,admin",
        database_url=database_url,
        nats_url=nats_url,
    )
    status = loyalty("projections", "status", database_url=database_url, nats_url=nats_url)
    rebuilt = loyalty(
        "projections", "rebuild", "balances", "--workers", "1", database_url=database_url, nats_url=nats_url
    )
    unknown = loyalty("projections", "rebuild", "nope", database_url=database_url, nats_url=nats_url)

    assert migrated.returncode == 0, migrated.stderr
    assert "0001_event_store.sql" in migrated.stdout
    assert again.stdout.strip() == "applied: nothing (up to date)"
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("lk_")
    conn = await asyncpg.connect(database_url)
    try:
        scopes = await conn.fetchval("SELECT scopes FROM api_keys WHERE channel = 'admin'")
        stored = await conn.fetchval("SELECT secret_hash FROM api_keys WHERE channel = 'admin'")
    finally:
        await conn.close()
    assert sorted(scopes) == ["admin", "read"]
    assert stored == hashlib.sha256(key.encode()).digest()  # only its hash is kept
    assert status.returncode == 0, status.stderr
    assert {line.split()[0] for line in status.stdout.splitlines()[1:]} == set(PROJECTIONS)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert rebuilt.stdout.startswith("rebuilt balances")
    assert "1 process(es)" in rebuilt.stdout
    assert unknown.returncode != 0
    assert "unknown projection" in unknown.stderr
