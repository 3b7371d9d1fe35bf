"""The servers' passwords, generated on first use and kept beside their data (mode 0600)."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from devtools.embedded.files import write_atomically
from devtools.embedded.process import EmbeddedServersError


@dataclass(frozen=True)
class Credentials:
    """The password of PostgreSQL's `postgres` and of nats-server's one user."""

    postgres_password: str
    nats_password: str


def load_or_create_credentials(path: Path) -> Credentials:
    """The servers' passwords, generated once and kept (mode 0600) beside their data."""
    try:
        recorded = json.loads(path.read_text())
        return Credentials(str(recorded["postgres_password"]), str(recorded["nats_password"]))
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EmbeddedServersError(f"{path} is unreadable ({exc}); delete it to generate new ones") from None
    credentials = Credentials(secrets.token_urlsafe(24), secrets.token_urlsafe(24))
    record = {"postgres_password": credentials.postgres_password, "nats_password": credentials.nats_password}
    write_atomically(path, json.dumps(record, indent=2) + "\n", mode=0o600)
    return credentials


def mask_password(url: str) -> str:
    """`url` with its password (if any) replaced by `***`, for printing and logging."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo.partition(':')[0]}:***@{hostport}"))
