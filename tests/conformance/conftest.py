"""A fresh, migrated database for each conformance test (the suites assert ids 1, 2, 3).

The library's suites are `unittest` classes, which cannot take fixtures as arguments: this
autouse fixture stores the database's URL on the test instance instead.
"""

from __future__ import annotations

import asyncpg
import pytest
import pytest_asyncio

from service.store.migrate import migrate


@pytest_asyncio.fixture(autouse=True)
async def migrated_database(request: pytest.FixtureRequest, database_url: str) -> str:
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    if request.instance is not None:
        request.instance.database_url = database_url
    return database_url
