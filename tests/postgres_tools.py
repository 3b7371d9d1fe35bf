"""PostgreSQL's own client tools (pg_dump, pg_restore), of the embedded server's version."""

from __future__ import annotations

import subprocess

from devtools.embedded import postgres_bin


def pg(tool: str, *args: str) -> bytes:
    """Run a PostgreSQL client tool shipped with the embedded server (its own version: pg_dump
    refuses a newer server) and return what it wrote to stdout; it fails the caller if the tool
    does (its stderr goes to the test's output)."""
    done = subprocess.run([str(postgres_bin() / tool), *args], stdout=subprocess.PIPE, check=True)
    return done.stdout
