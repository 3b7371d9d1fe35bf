"""Fixtures of the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service_process import Service


@pytest.fixture
def service(database_url: str, nats_url: str, tmp_path: Path) -> Iterator[Service]:
    """`loyalty serve` on the test's servers, not started yet; killed at the end if still up."""
    svc = Service(database_url, nats_url, tmp_path)
    yield svc
    if svc.process is not None and svc.process.poll() is None:
        svc.process.kill()
        svc.process.wait()
