"""Settings come from the environment (SPEC §6); each is declared once, in service/config.py."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from service.config import SPECS, Settings, markdown_table, settings_from_env
from service.followers import _child_environment

MASTER_KEY = "q83vEjRWeJASNFZ4kBI0VniQEjRWeJASNFZ4kBI0Vng="
README = Path(__file__).resolve().parents[2] / "README.md"

# A value other than the default for every setting, as the environment spells it.
EVERY_VARIABLE = {
    "LOYALTY_DATABASE_URL": "postgresql://ledger:hunter2@db:5432/ledger",
    "LOYALTY_NATS_URL": "nats://ledger:hunter2@bus:4222",
    "LOYALTY_HOST": "0.0.0.0",
    "LOYALTY_PORT": "9000",
    "LOYALTY_DATA_DIR": "/srv/loyalty",
    "LOYALTY_ADMIN_KEY": "admin-secret",
    "LOYALTY_MASTER_KEY": MASTER_KEY,
    "LOYALTY_PREVIOUS_MASTER_KEY": "previous-key",
    "LOYALTY_NEW_MASTER_KEY": "new-key",
    "LOYALTY_DEFAULT_REGION": "GB",
    "LOYALTY_DB_POOL_SIZE": "4",
    "LOYALTY_LOG_FORMAT": "JSON",
    "LOYALTY_STREAM_NAME": "ACME_LOYALTY",
    "LOYALTY_STREAM_REPLICAS": "3",
    "LOYALTY_STREAM_MAX_AGE_DAYS": "30",
    "LOYALTY_SUBJECT_PREFIX": "acme.events",
    "LOYALTY_READ_WAIT_SECONDS": "0.25",
    "LOYALTY_FOLLOWERS": " off ",
    "LOYALTY_PROCESSES": "4",
    "LOYALTY_FOLLOWER_PORT": "9100",
    "LOYALTY_HTTP_HEADER_TIMEOUT_SECONDS": "2.5",
    "LOYALTY_HTTP_KEEPALIVE_SECONDS": "0",
    "LOYALTY_HTTP_MAX_HEADER_BYTES": "4096",
    "LOYALTY_MAX_BACKDATE_DAYS": "30",
    "LOYALTY_RATE_LIMIT_PER_KEY": "0",
    "LOYALTY_READY_MAX_RELAY_LAG_SECONDS": "12",
    "LOYALTY_CLOCK_INTERVAL_SECONDS": "0.5",
    "LOYALTY_AUDIT_CHECKPOINT_EVENTS": "500",
    "LOYALTY_AUDIT_CHECKPOINT_SECONDS": "5",
    "LOYALTY_AUDIT_SUBJECT": "acme.audit.checkpoint",
    "LOYALTY_OTLP_ENDPOINT": "http://otel-collector:4318",
}


def test_defaults_and_overrides_from_the_environment() -> None:
    defaults = settings_from_env({})
    configured = settings_from_env(
        {
            "LOYALTY_PORT": "9000",
            "LOYALTY_DATA_DIR": "/srv/loyalty",
            "LOYALTY_FOLLOWERS": "Inline",
            "LOYALTY_SUBJECT_PREFIX": "acme.events",
        }
    )

    assert (defaults.host, defaults.port, defaults.data_dir) == ("127.0.0.1", 8080, Path(".loyalty"))
    assert defaults.embedded
    assert (defaults.followers, defaults.leads_followers, defaults.follower_http_port) == (
        "process",
        False,
        8081,
    )
    assert configured.port == 9000
    assert configured.data_dir == Path("/srv/loyalty")
    assert (configured.followers, configured.leads_followers, configured.follower_http_port) == (
        "inline",
        True,
        9001,
    )
    assert configured.subject_prefix == "acme.events"


def test_every_variable_is_read() -> None:
    configured = settings_from_env(EVERY_VARIABLE)

    assert configured == Settings(
        database_url="postgresql://ledger:hunter2@db:5432/ledger",
        nats_url="nats://ledger:hunter2@bus:4222",
        host="0.0.0.0",
        port=9000,
        data_dir=Path("/srv/loyalty"),
        admin_key="admin-secret",
        master_key=MASTER_KEY,
        previous_master_key="previous-key",
        new_master_key="new-key",
        default_region="GB",
        db_pool_size=4,
        log_format="json",
        stream_name="ACME_LOYALTY",
        stream_replicas=3,
        stream_max_age_days=30,
        subject_prefix="acme.events",
        read_wait_seconds=0.25,
        followers="off",
        processes=4,
        follower_port=9100,
        http_header_timeout_seconds=2.5,
        http_keepalive_seconds=0.0,
        http_max_header_bytes=4096,
        max_backdate_days=30,
        rate_limit_per_key=0,
        ready_max_relay_lag_seconds=12.0,
        clock_interval_seconds=0.5,
        audit_checkpoint_events=500,
        audit_checkpoint_seconds=5.0,
        audit_subject="acme.audit.checkpoint",
        otlp_endpoint="http://otel-collector:4318",
    )
    # A setting added without a case above would pass unnoticed with its default.
    assert [spec.name for spec in SPECS if getattr(configured, spec.name) == spec.default] == []
    assert sorted(EVERY_VARIABLE) == sorted(spec.variable for spec in SPECS)


def test_unset_and_empty_variables_take_the_declared_defaults() -> None:
    assert settings_from_env({}) == Settings()
    assert settings_from_env(dict.fromkeys(EVERY_VARIABLE, "")) == Settings()
    assert Settings().to_env() == {
        spec.variable: spec.format(spec.default) for spec in SPECS if spec.default is not None
    }


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("LOYALTY_PORT", "http"),
        ("LOYALTY_PORT", "0"),
        ("LOYALTY_PORT", "65536"),
        ("LOYALTY_FOLLOWER_PORT", "0"),
        ("LOYALTY_DB_POOL_SIZE", "1"),
        ("LOYALTY_DB_POOL_SIZE", "4.5"),
        ("LOYALTY_STREAM_REPLICAS", "0"),
        ("LOYALTY_STREAM_REPLICAS", "6"),
        ("LOYALTY_STREAM_MAX_AGE_DAYS", "-1"),
        ("LOYALTY_MAX_BACKDATE_DAYS", "-1"),
        ("LOYALTY_RATE_LIMIT_PER_KEY", "-5"),
        ("LOYALTY_READ_WAIT_SECONDS", "soon"),
        ("LOYALTY_READY_MAX_RELAY_LAG_SECONDS", "-1"),
        ("LOYALTY_HTTP_HEADER_TIMEOUT_SECONDS", "0"),
        ("LOYALTY_HTTP_KEEPALIVE_SECONDS", "nan"),
        ("LOYALTY_HTTP_MAX_HEADER_BYTES", "0"),
        ("LOYALTY_LOG_FORMAT", "xml"),
        ("LOYALTY_FOLLOWERS", "sometimes"),
        ("LOYALTY_PROCESSES", "0"),
        ("LOYALTY_DEFAULT_REGION", "china"),
        ("LOYALTY_STREAM_NAME", "loyalty.events"),
        ("LOYALTY_SUBJECT_PREFIX", "loyalty.>"),
    ],
)
def test_a_bad_value_is_refused_naming_the_variable_and_what_it_accepts(variable: str, raw: str) -> None:
    with pytest.raises(SystemExit) as refused:
        settings_from_env({variable: raw})

    message = str(refused.value)
    assert message.startswith(f"{variable} must be ")
    assert message.endswith(f"got {raw!r}")


def test_a_refused_secret_is_not_repeated() -> None:
    with pytest.raises(SystemExit, match=r"^LOYALTY_DATABASE_URL must be a postgresql:// URL") as refused:
        settings_from_env({"LOYALTY_DATABASE_URL": "mysql://ledger:hunter2@db/ledger"})

    assert "hunter2" not in str(refused.value)


def test_secrets_are_masked_in_the_settings_repr() -> None:
    settings = settings_from_env(EVERY_VARIABLE)

    assert "hunter2" not in repr(settings)
    assert "admin-secret" not in repr(settings)
    assert MASTER_KEY not in repr(settings)
    assert "port=9000" in repr(settings)


def test_settings_built_in_code_are_validated_too() -> None:
    with pytest.raises(ValueError, match="followers"):
        Settings(followers="sometimes")
    with pytest.raises(ValueError, match=r"^db_pool_size must be an integer, at least 2"):
        Settings(db_pool_size=1)
    with pytest.raises(ValueError, match=r"^port must be an integer from 1 to 65535"):
        Settings().with_overrides(port=70000)


def test_an_unknown_follower_mode_is_refused_with_the_variable_named() -> None:
    with pytest.raises(SystemExit, match="LOYALTY_FOLLOWERS"):
        settings_from_env({"LOYALTY_FOLLOWERS": "sometimes"})


@pytest.mark.parametrize(
    "settings",
    [
        Settings(),
        settings_from_env(EVERY_VARIABLE),
        Settings(read_wait_seconds=0.1 + 0.2, http_keepalive_seconds=1e-3, data_dir=Path("a b/c")),
    ],
    ids=["defaults", "every-variable", "awkward-values"],
)
def test_to_env_round_trips_through_settings_from_env(settings: Settings) -> None:
    assert settings_from_env(settings.to_env()) == settings


def test_the_follower_child_reads_the_settings_serve_resolved(monkeypatch: pytest.MonkeyPatch) -> None:
    # The parent's own variables lose to what `serve` resolved (embedded servers, flags).
    monkeypatch.setenv("LOYALTY_NATS_URL", "nats://elsewhere:4222")
    monkeypatch.setenv("LOYALTY_PORT", "7000")
    monkeypatch.setenv("UNRELATED", "kept")
    resolved = replace(settings_from_env(EVERY_VARIABLE), follower_port=None)

    child = _child_environment(resolved)

    assert child["UNRELATED"] == "kept"
    assert settings_from_env(child) == resolved.with_overrides(follower_port=9001)


def test_the_table_has_a_row_per_variable_and_no_secret() -> None:
    table = subprocess.run(
        [sys.executable, "-m", "service.config"], capture_output=True, text=True, check=True
    ).stdout

    assert table == markdown_table() + "\n"
    rows = table.splitlines()[2:]
    assert [row.split(" | ")[0] for row in rows] == [f"| `{spec.variable}`" for spec in SPECS]
    for spec in SPECS:
        if spec.setting.secret:
            assert f"| `{spec.variable}` |  |" in table


def test_the_readme_lists_every_variable() -> None:
    readme = README.read_text()

    assert [spec.variable for spec in SPECS if spec.variable not in readme] == []
    # The table itself, as `python -m service.config` prints it: defaults and meanings too.
    assert markdown_table().strip() in readme
