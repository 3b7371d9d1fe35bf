"""Session-wide servers for the tests: real PostgreSQL and nats-server.

By default an embedded pair is started once per session in a temporary directory. To run against
servers of your own, set both LOYALTY_TEST_DATABASE_URL (any database on the server; the tests
create and drop their own, so the role needs CREATEDB) and LOYALTY_TEST_NATS_URL.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import pytest_asyncio

from devtools.embedded import EmbeddedServers, ServerUrls

DATABASE_URL_VAR = "LOYALTY_TEST_DATABASE_URL"
NATS_URL_VAR = "LOYALTY_TEST_NATS_URL"


@pytest.fixture(scope="session")
def server_urls() -> Iterator[ServerUrls]:
    """URLs of the PostgreSQL and NATS servers the tests use (external or embedded)."""
    database_url = os.environ.get(DATABASE_URL_VAR)
    nats_url = os.environ.get(NATS_URL_VAR)
    if database_url and nats_url:
        yield ServerUrls(database_url=database_url, nats_url=nats_url)
        return
    if database_url or nats_url:
        # Half a configuration is almost certainly a mistake; silently starting embedded
        # servers would test something other than what was asked for.
        pytest.fail(f"set both {DATABASE_URL_VAR} and {NATS_URL_VAR}, or neither")
    # Synchronous on purpose: starting processes needs no event loop, and PR_SET_PDEATHSIG
    # (children die with us) is only used when started from the main thread.
    # Not under pytest's basetemp: a second pytest session resets that to mode 0700, which
    # would lock the unprivileged postgres user out of a running server's data directory.
    data_dir = Path(tempfile.mkdtemp(prefix="loyalty-test-servers-"))
    try:
        with EmbeddedServers(data_dir) as urls:
            yield urls
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def with_database(url: str, database: str) -> str:
    """`url` pointing at another database on the same server (credentials and options kept)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


@pytest_asyncio.fixture
async def database_url(server_urls: ServerUrls) -> AsyncIterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    name = f"test_{uuid.uuid4().hex}"
    # CREATE/DROP DATABASE cannot run inside the target database: use the maintenance one.
    admin_url = with_database(server_urls.database_url, "postgres")
    conn = await asyncpg.connect(admin_url, timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield with_database(server_urls.database_url, name)
    finally:
        conn = await asyncpg.connect(admin_url, timeout=10)
        try:
            # FORCE: a test that leaked a connection or pool must not leak the database too.
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@pytest.fixture
def nats_url(server_urls: ServerUrls) -> str:
    """The NATS server's URL; tests isolate themselves by stream and subject names."""
    return server_urls.nats_url
