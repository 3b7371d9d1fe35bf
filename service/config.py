"""Settings from the environment (twelve-factor); `loyalty serve` flags mirror them.

Each setting is declared once, as a field of `Settings`: its type and default, and (in its
`Setting` annotation) its environment variable, meaning and accepted values. Reading the
environment, validating, writing the follower child's environment and the README's table
(`python -m service.config`) all follow from that declaration.
"""

from __future__ import annotations

import math
import os
import re
import sys
import types
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin, get_type_hints

FOLLOWER_MODES = ("process", "inline", "off")
LOG_FORMATS = ("auto", "json", "console")


@dataclass(frozen=True, kw_only=True)
class Setting:
    """How one field of `Settings` is configured: its variable, its meaning, what it accepts."""

    variable: str
    meaning: str
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    choices: tuple[str, ...] = ()
    pattern: str | None = None
    accepts: str | None = None  # how to say what `pattern` (or a plain string) accepts
    secret: bool = False  # never printed: not its value, not its default

    def describe(self, kind: type) -> str:
        """What the variable accepts, in words ("an integer from 1 to 65535")."""
        if self.accepts:
            return self.accepts
        if self.choices:
            return "one of " + ", ".join(self.choices)
        noun = {int: "an integer", float: "a number", Path: "a path"}.get(kind, "text")
        if self.ge is not None and self.le is not None:
            return f"{noun} from {self.ge:g} to {self.le:g}"
        limits = [
            f"{words} {bound:g}"
            for words, bound in (("at least", self.ge), ("above", self.gt), ("at most", self.le))
            if bound is not None
        ]
        return ", ".join([noun, " and ".join(limits)]) if limits else noun

    def allows(self, value: object) -> bool:
        """Whether `value` (of the field's type) is acceptable."""
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if isinstance(value, int | float) and (
            (self.ge is not None and value < self.ge)
            or (self.gt is not None and value <= self.gt)
            or (self.le is not None and value > self.le)
        ):
            return False
        if isinstance(value, str):
            # Not empty: an empty variable means unset, so such a value could not round-trip.
            return (
                bool(value)
                and (not self.choices or value in self.choices)
                and (self.pattern is None or re.fullmatch(self.pattern, value) is not None)
            )
        return True


@dataclass(frozen=True, kw_only=True, repr=False)
class Settings:
    """Everything the running service is configured by."""

    database_url: Annotated[
        str | None,
        Setting(
            variable="LOYALTY_DATABASE_URL",
            meaning="PostgreSQL URL; with neither it nor LOYALTY_NATS_URL set, `serve` starts"
            " embedded servers",
            pattern="postgres(ql)?://.+",
            accepts="a postgresql:// URL",
            secret=True,
        ),
    ] = None
    nats_url: Annotated[
        str | None,
        Setting(
            variable="LOYALTY_NATS_URL",
            meaning="NATS URL (JetStream enabled); set both server URLs or neither",
            accepts="a NATS server URL (nats://, tls://), or a cluster's, comma-separated",
            secret=True,
        ),
    ] = None
    host: Annotated[
        str,
        Setting(
            variable="LOYALTY_HOST",
            meaning="Interface the HTTP server listens on",
        ),
    ] = "127.0.0.1"
    port: Annotated[
        int,
        Setting(
            variable="LOYALTY_PORT",
            meaning="HTTP port of the API",
            ge=1,
            le=65535,
        ),
    ] = 8080
    data_dir: Annotated[
        Path,
        Setting(
            variable="LOYALTY_DATA_DIR",
            meaning="Where the embedded servers keep their data (it survives restarts), with"
            " servers.json and master.key",
        ),
    ] = Path(".loyalty")
    admin_key: Annotated[
        str | None,
        Setting(
            variable="LOYALTY_ADMIN_KEY",
            meaning="If set at first start, an admin key with every scope is created with this value",
            secret=True,
        ),
    ] = None
    master_key: Annotated[
        str | None,
        Setting(
            variable="LOYALTY_MASTER_KEY",
            meaning="Wraps the per-member keys; generated into the data dir in embedded mode,"
            " required otherwise",
            accepts="32 bytes in URL-safe base64",
            secret=True,
        ),
    ] = None
    previous_master_key: Annotated[
        str | None,
        Setting(
            variable="LOYALTY_PREVIOUS_MASTER_KEY",
            meaning="During a rotation of the master key, the other key: it also unwraps the stored"
            " keys (new ones are wrapped by LOYALTY_MASTER_KEY); see docs/guides/operations.md",
            accepts="32 bytes in URL-safe base64",
            secret=True,
        ),
    ] = None
    new_master_key: Annotated[
        str | None,
        Setting(
            variable="LOYALTY_NEW_MASTER_KEY",
            meaning="`loyalty keys rotate-master` only: the key to re-wrap with (generated and"
            " printed when unset)",
            accepts="32 bytes in URL-safe base64",
            secret=True,
        ),
    ] = None
    default_region: Annotated[
        str,
        Setting(
            variable="LOYALTY_DEFAULT_REGION",
            meaning="Region of phone numbers given without a country code",
            pattern="[A-Z]{2}",
            accepts="a two-letter region code in capitals (CN, GB, US)",
        ),
    ] = "CN"
    # At least 2: the pool keeps two connections open (services.py, min_size=2).
    db_pool_size: Annotated[
        int,
        Setting(
            variable="LOYALTY_DB_POOL_SIZE",
            meaning="Most PostgreSQL connections the request process holds",
            ge=2,
        ),
    ] = 16
    log_format: Annotated[
        str,
        Setting(
            variable="LOYALTY_LOG_FORMAT",
            meaning="Log lines on stderr; auto is JSON unless stderr is a terminal",
            choices=LOG_FORMATS,
        ),
    ] = "auto"
    stream_name: Annotated[
        str,
        Setting(
            variable="LOYALTY_STREAM_NAME",
            meaning="JetStream stream the relay publishes the events to",
            pattern="[A-Za-z0-9_-]+",
            accepts="letters, digits, _ and -",
        ),
    ] = "LOYALTY"
    stream_replicas: Annotated[
        int,
        Setting(
            variable="LOYALTY_STREAM_REPLICAS",
            meaning="Replicas of the stream",
            ge=1,
            le=5,
        ),
    ] = 1
    stream_max_age_days: Annotated[
        int,
        Setting(
            variable="LOYALTY_STREAM_MAX_AGE_DAYS",
            meaning="Days the stream keeps an event; 0 keeps them forever",
            ge=0,
        ),
    ] = 0
    subject_prefix: Annotated[
        str,
        Setting(
            variable="LOYALTY_SUBJECT_PREFIX",
            meaning="Events are published on PREFIX.TYPE.MEMBER_ID",
            pattern=r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*",
            accepts="dot-separated tokens of letters, digits, _ and -",
        ),
    ] = "loyalty.events"
    read_wait_seconds: Annotated[
        float,
        Setting(
            variable="LOYALTY_READ_WAIT_SECONDS",
            meaning="How long a read with min_position waits for the projection before a 503",
            ge=0,
        ),
    ] = 5.0
    # The request process always watches the followers (for min_position reads, /health/ready
    # and /metrics), wherever they run; one instance of each leads at a time.
    followers: Annotated[
        str,
        Setting(
            variable="LOYALTY_FOLLOWERS",
            meaning="Where the relay and the projections run: process (a `loyalty follow` child"
            " that `serve` starts and restarts), inline (in the request process), off (run"
            " `loyalty follow` yourself)",
            choices=FOLLOWER_MODES,
        ),
    ] = "process"
    processes: Annotated[
        int,
        Setting(
            variable="LOYALTY_PROCESSES",
            meaning="Request processes `serve` runs on the one port, each member's commands served"
            " by one of them (so each keeps its members' cache: ADR 25); with more than one,"
            " LOYALTY_FOLLOWERS is process or off",
            ge=1,
            le=64,
        ),
    ] = 1
    follower_port: Annotated[
        int | None,
        Setting(
            variable="LOYALTY_FOLLOWER_PORT",
            meaning="Port of the follower process's /health and /metrics; unset, LOYALTY_PORT + 1",
            ge=1,
            le=65535,
        ),
    ] = None
    http_header_timeout_seconds: Annotated[
        float,
        Setting(
            variable="LOYALTY_HTTP_HEADER_TIMEOUT_SECONDS",
            meaning="A request head (line and headers) must arrive within this long of the"
            " connection opening or of the previous response",
            gt=0,
        ),
    ] = 10.0
    http_keepalive_seconds: Annotated[
        float,
        Setting(
            variable="LOYALTY_HTTP_KEEPALIVE_SECONDS",
            meaning="An idle keep-alive connection is closed after this long",
            ge=0,
        ),
    ] = 5.0
    http_max_header_bytes: Annotated[
        int,
        Setting(
            variable="LOYALTY_HTTP_MAX_HEADER_BYTES",
            meaning="Largest request head (line and headers); a larger one is answered 431",
            ge=1,
        ),
    ] = 16384
    max_backdate_days: Annotated[
        int,
        Setting(
            variable="LOYALTY_MAX_BACKDATE_DAYS",
            meaning="How many days in the past a business time (occurred_at) may be",
            ge=0,
        ),
    ] = 400
    rate_limit_per_key: Annotated[
        int,
        Setting(
            variable="LOYALTY_RATE_LIMIT_PER_KEY",
            meaning="Requests per second one API key may make to one instance (bursts of two"
            " seconds' worth); 0 turns the limit off",
            ge=0,
        ),
    ] = 2000
    ready_max_relay_lag_seconds: Annotated[
        float,
        Setting(
            variable="LOYALTY_READY_MAX_RELAY_LAG_SECONDS",
            meaning="/health/ready fails when the relay is further behind than this while NATS is reachable",
            ge=0,
        ),
    ] = 60.0
    clock_interval_seconds: Annotated[
        float,
        Setting(
            variable="LOYALTY_CLOCK_INTERVAL_SECONDS",
            meaning="How often the clock (where the followers lead) looks for members that time"
            " alone has changed: lots expiring, holds expiring, downgrades after the grace period",
            gt=0,
        ),
    ] = 1.0
    audit_checkpoint_events: Annotated[
        int,
        Setting(
            variable="LOYALTY_AUDIT_CHECKPOINT_EVENTS",
            meaning="A signed checkpoint of the log's global hash is taken after this many events",
            ge=1,
        ),
    ] = 10_000
    audit_checkpoint_seconds: Annotated[
        float,
        Setting(
            variable="LOYALTY_AUDIT_CHECKPOINT_SECONDS",
            meaning="A signed checkpoint is also taken this long after the last one when the log has grown",
            gt=0,
        ),
    ] = 60.0
    audit_subject: Annotated[
        str,
        Setting(
            variable="LOYALTY_AUDIT_SUBJECT",
            meaning="NATS subject each signed checkpoint is published on",
            pattern=r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*",
            accepts="dot-separated tokens of letters, digits, _ and -",
        ),
    ] = "loyalty.audit.checkpoint"

    otlp_endpoint: Annotated[
        str | None,
        Setting(
            variable="LOYALTY_OTLP_ENDPOINT",
            meaning="OTLP/HTTP collector the traces are exported to (e.g. http://otel-collector:4318);"
            " unset, tracing is off and a request's own traceparent passes through to its events",
            pattern="https?://.+",
            accepts="an http:// or https:// URL",
        ),
    ] = None

    def __post_init__(self) -> None:
        for spec in SPECS:
            value = getattr(self, spec.name)
            if value is not None and not spec.setting.allows(value):
                raise ValueError(f"{spec.name} must be {spec.accepts}, got {spec.shown(value)}")

    def __repr__(self) -> str:
        shown = ", ".join(f"{spec.name}={spec.shown(getattr(self, spec.name))}" for spec in SPECS)
        return f"Settings({shown})"

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

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with the given (non-None) fields replaced."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_env(self) -> dict[str, str]:
        """The variables `settings_from_env` reads back into these settings (unset ones left out)."""
        return {
            spec.variable: spec.format(value)
            for spec in SPECS
            if (value := getattr(self, spec.name)) is not None
        }


@dataclass(frozen=True)
class FieldSpec:
    """A field of `Settings` with its type and `Setting`, resolved once at import."""

    name: str
    kind: type  # int, float, str or Path (a field typed `X | None` is unset when None)
    default: Any
    setting: Setting

    @property
    def variable(self) -> str:
        return self.setting.variable

    @property
    def accepts(self) -> str:
        return self.setting.describe(self.kind)

    def parse(self, raw: str) -> Any:
        """The value of a (non-empty, stripped) variable; ValueError when it is not one."""
        if self.kind is int:
            return int(raw)
        if self.kind is float:
            return float(raw)
        if self.kind is Path:
            return Path(raw)
        # Choices are matched case-insensitively (LOYALTY_FOLLOWERS=Inline).
        return raw.lower() if self.setting.choices else raw

    def format(self, value: Any) -> str:
        """The variable's text for `value`; `parse` reads it back to the same value."""
        return repr(value) if isinstance(value, float) else str(value)

    def shown(self, value: Any) -> str:
        """`value` as it may appear in a message or a log line: secrets masked."""
        if value is None:
            return "None"
        return "'***'" if self.setting.secret else repr(value)


def _field_specs(cls: type) -> tuple[FieldSpec, ...]:
    hints = get_type_hints(cls, include_extras=True)
    specs = []
    for field in fields(cls):
        hint = hints[field.name]
        settings = [m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Setting)]
        if get_origin(hint) is not Annotated or len(settings) != 1:
            raise TypeError(f"Settings.{field.name} needs one Setting(...) in its annotation")
        kind = get_args(hint)[0]
        if isinstance(kind, types.UnionType) and type(None) in get_args(kind):
            (kind,) = (arg for arg in get_args(kind) if arg is not type(None))
        if kind not in (int, float, str, Path):
            raise TypeError(f"Settings.{field.name}: no parser for {kind!r}")
        specs.append(FieldSpec(field.name, kind, field.default, settings[0]))
    return tuple(specs)


SPECS = _field_specs(Settings)


def settings_from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the LOYALTY_* variables; unset (or empty) ones take their defaults.

    A value that is not acceptable stops the process with a message naming the variable and
    what it accepts (a secret's value is never repeated).
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for spec in SPECS:
        raw = (env.get(spec.variable) or "").strip()
        if not raw:
            continue
        try:
            value = spec.parse(raw)
        except ValueError:
            value = None
        if value is None or not spec.setting.allows(value):
            got = "(the value is not shown)" if spec.setting.secret else f"got {raw!r}"
            raise SystemExit(f"{spec.variable} must be {spec.accepts}, {got}")
        values[spec.name] = value
    return Settings(**values)


def markdown_table() -> str:
    """The configuration as a Markdown table: variable, default, accepted values, meaning."""
    rows = ["| Variable | Default | Accepts | Meaning |", "| --- | --- | --- | --- |"]
    for spec in SPECS:
        default = "" if spec.default is None or spec.setting.secret else f"`{spec.format(spec.default)}`"
        cells = (f"`{spec.variable}`", default, spec.accepts, spec.setting.meaning)
        rows.append("| " + " | ".join(cell.replace("|", r"\|") for cell in cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.stdout.write(markdown_table() + "\n")
