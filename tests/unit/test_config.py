"""Settings come from the environment, with the defaults of SPEC §6."""

from __future__ import annotations

from pathlib import Path

from service.config import settings_from_env


def test_defaults_and_overrides_from_the_environment() -> None:
    defaults = settings_from_env({})
    configured = settings_from_env(
        {
            "LOYALTY_PORT": "9000",
            "LOYALTY_DATA_DIR": "/srv/loyalty",
            "LOYALTY_RUN_RELAY": "false",
            "LOYALTY_RUN_PROJECTIONS": "0",
            "LOYALTY_SUBJECT_PREFIX": "acme.events",
        }
    )

    assert (defaults.host, defaults.port, defaults.data_dir) == ("127.0.0.1", 8080, Path(".loyalty"))
    assert defaults.embedded
    assert defaults.run_relay
    assert defaults.run_projections
    assert configured.port == 9000
    assert configured.data_dir == Path("/srv/loyalty")
    assert not configured.run_relay
    assert not configured.run_projections
    assert configured.subject_prefix == "acme.events"
