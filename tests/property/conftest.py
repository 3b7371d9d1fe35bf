"""Fixtures of the property tests: the service on a loop of its own (see harness.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.property.harness import Harness


@pytest.fixture
def harness(database_url: str) -> Iterator[Harness]:
    """The services, a projection runner and the clock, on one fresh database for the test."""
    opened = Harness(database_url).open()
    try:
        yield opened
    finally:
        opened.close()
