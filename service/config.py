"""Settings from the environment (twelve-factor); `loyalty serve` flags mirror them."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

FOLLOWER_MODES = ("process", "inline", "off")


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the running service is configured by."""

    database_url: str | None = None
    nats_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path(".loyalty")
    admin_key: str | None = None
    master_key: str | None = None
    default_region: str = "CN"
    db_pool_size: int = 16
    log_format: str = "auto"  # auto | json | console
    stream_name: str = "LOYALTY"
    stream_replicas: int = 1
    stream_max_age_days: int = 0  # 0 = keep forever
    subject_prefix: str = "loyalty.events"
    read_wait_seconds: float = 5.0  # how long a read with min_position waits before 503
    # Where the followers of the log (relay, projections) lead: "process" = a `loyalty follow`
    # child that `serve` starts and restarts; "inline" = in the request process itself; "off" =
    # elsewhere (run `loyalty follow` yourself). The request process always watches them (for
    # min_position reads, /health/ready and /metrics); one instance of each leads at a time.
    followers: str = "process"
    follower_port: int | None = None  # the follower's /health and /metrics; default port + 1
    # HTTP limits: a request head (line and headers) must arrive within the timeout of the
    # connection opening or of the previous response, and be at most max_header_bytes (431);
    # an idle keep-alive connection is closed after keepalive seconds.
    http_header_timeout_seconds: float = 10.0
    http_keepalive_seconds: float = 5.0
    http_max_header_bytes: int = 16384
    # Business times (`occurred_at`) may be at most this many days in the past (SPEC §4).
    max_backdate_days: int = 400
    # Requests per second one API key may make to one instance (a token bucket holding two
    # seconds' worth); 0 turns the limit off.
    rate_limit_per_key: int = 2000
    # /health/ready fails when the relay is further behind than this while NATS is reachable.
    ready_max_relay_lag_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.followers not in FOLLOWER_MODES:
            raise ValueError(f"followers must be one of {', '.join(FOLLOWER_MODES)}, got {self.followers!r}")

    @property
    def leads_followers(self) -> bool:
        """True when the request process itself runs the relay and the projections."""
        return self.followers == "inline"

    @property
    def follower_http_port(self) -> int:
        return self.follower_port if self.follower_port is not None else self.port + 1

    @property
    def embedded(self) -> bool:
        """True when no servers are configured and `serve` starts its own."""
        return self.database_url is None and self.nats_url is None

    def with_overrides(self, **changes: object) -> Settings:
        """A copy with the given (non-None) fields replaced."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from None


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    raw = (env.get(name) or choices[0]).strip().lower()
    if raw not in choices:
        raise SystemExit(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


def settings_from_env(environ: dict[str, str] | None = None) -> Settings:
    """Read LOYALTY_* variables; unset ones take their defaults."""
    env = os.environ if environ is None else environ

    def get(name: str) -> str | None:
        value = env.get(name)
        return value if value else None

    return Settings(
        database_url=get("LOYALTY_DATABASE_URL"),
        nats_url=get("LOYALTY_NATS_URL"),
        host=get("LOYALTY_HOST") or "127.0.0.1",
        port=_int(env, "LOYALTY_PORT", 8080),
        data_dir=Path(get("LOYALTY_DATA_DIR") or ".loyalty"),
        admin_key=get("LOYALTY_ADMIN_KEY"),
        master_key=get("LOYALTY_MASTER_KEY"),
        default_region=get("LOYALTY_DEFAULT_REGION") or "CN",
        db_pool_size=_int(env, "LOYALTY_DB_POOL_SIZE", 16),
        log_format=get("LOYALTY_LOG_FORMAT") or "auto",
        stream_name=get("LOYALTY_STREAM_NAME") or "LOYALTY",
        stream_replicas=_int(env, "LOYALTY_STREAM_REPLICAS", 1),
        stream_max_age_days=_int(env, "LOYALTY_STREAM_MAX_AGE_DAYS", 0),
        subject_prefix=get("LOYALTY_SUBJECT_PREFIX") or "loyalty.events",
        followers=_choice(env, "LOYALTY_FOLLOWERS", FOLLOWER_MODES),
        follower_port=_int(env, "LOYALTY_FOLLOWER_PORT", 0) or None,
        http_header_timeout_seconds=_int(env, "LOYALTY_HTTP_HEADER_TIMEOUT_SECONDS", 10),
        http_keepalive_seconds=_int(env, "LOYALTY_HTTP_KEEPALIVE_SECONDS", 5),
        http_max_header_bytes=_int(env, "LOYALTY_HTTP_MAX_HEADER_BYTES", 16384),
        max_backdate_days=_int(env, "LOYALTY_MAX_BACKDATE_DAYS", 400),
        rate_limit_per_key=_int(env, "LOYALTY_RATE_LIMIT_PER_KEY", 2000),
        ready_max_relay_lag_seconds=_int(env, "LOYALTY_READY_MAX_RELAY_LAG_SECONDS", 60),
    )
