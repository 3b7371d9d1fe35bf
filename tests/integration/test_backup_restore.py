"""Backup and restore as docs/guides/operations.md says: `pg_dump`, `pg_restore` into a new
database, then `loyalty audit verify` on it; a restored log with a changed byte is caught."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from tests.conftest import with_database
from tests.postgres_tools import pg
from tests.service_process import ADMIN_KEY, Service

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


def audit_verify(env: dict[str, str], database_url: str) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "audit", "verify"],
        env={**env, "LOYALTY_DATABASE_URL": database_url},
        capture_output=True,
        check=False,
    )
    return done.returncode, json.loads(done.stdout.decode().strip().splitlines()[-1])


async def test_a_restored_backup_verifies_and_a_changed_byte_in_it_is_found(
    service: Service, database_url: str, tmp_path: Path
) -> None:
    service.start()
    await service.ready()
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
        enrolled = await client.post(
            "/v1/members",
            json={"identities": [{"kind": "app_user", "value": "backup-1"}]},
            headers=AUTH | {"Idempotency-Key": uuid.uuid4().hex},
        )
        member_id = enrolled.json()["member_id"]
        for n in range(3):
            earned = await client.post(
                f"/v1/members/{member_id}/earn",
                json={"order_ref": f"backup-{n}", "amount": "10", "currency": "CNY"},
                headers=AUTH | {"Idempotency-Key": uuid.uuid4().hex},
            )
            assert earned.status_code == 201, earned.text
    assert service.terminate() == 0

    backup = tmp_path / "loyalty.dump"
    pg("pg_dump", "-Fc", "-f", str(backup), database_url)
    restored_name = f"restored_{uuid.uuid4().hex}"
    admin = await asyncpg.connect(with_database(database_url, "postgres"))
    await admin.execute(f'CREATE DATABASE "{restored_name}"')
    restored = with_database(database_url, restored_name)
    try:
        pg("pg_restore", "--no-owner", "-d", restored, str(backup))
        conn = await asyncpg.connect(restored)
        try:
            head = await conn.fetchval("SELECT max(position) FROM events")

            code, report = audit_verify(service.env, restored)
            assert (code, report["ok"], report["events_checked"]) == (0, True, head)

            # One byte of an earn's stored payload changed in the backup: found, named.
            changed = await conn.fetchval(
                "UPDATE events SET data = set_byte(data, 20, (get_byte(data, 20) + 1) % 256)"
                " WHERE position = (SELECT min(position) FROM events WHERE event_type = 'points_earned')"
                " RETURNING position"
            )
        finally:
            await conn.close()
        code, report = audit_verify(service.env, restored)
        assert (code, report["ok"]) == (1, False)
        assert report["break"]["position"] == changed
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{restored_name}" WITH (FORCE)')
        await admin.close()
