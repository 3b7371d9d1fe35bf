"""Settings come from the environment, with the defaults of SPEC §6."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import Settings, settings_from_env


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


def test_an_unknown_follower_mode_is_refused_with_the_variable_named() -> None:
    with pytest.raises(SystemExit, match="LOYALTY_FOLLOWERS"):
        settings_from_env({"LOYALTY_FOLLOWERS": "sometimes"})
    with pytest.raises(ValueError, match="followers"):
        Settings(followers="sometimes")
