"""Embedded PostgreSQL and nats-server: `loyalty serve` on a developer's machine (`make run`) and the
tests. Never used in production, which sets LOYALTY_DATABASE_URL and LOYALTY_NATS_URL."""

from devtools.embedded.servers import (
    EmbeddedServers,
    EmbeddedServersError,
    ServerUrls,
    mask_password,
    postgres_bin,
)

__all__ = ["EmbeddedServers", "EmbeddedServersError", "ServerUrls", "mask_password", "postgres_bin"]
