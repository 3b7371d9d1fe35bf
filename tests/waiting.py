"""Waiting on a condition (never on a sleep of a guessed length)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

import pytest

DEADLINE = 30.0


async def until(probe: Callable[[], Any], *, within: float = DEADLINE, what: str = "") -> Any:
    """Poll `probe` (sync or async) until it returns something truthy, and return that;
    fail the test after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = probe()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what or probe}")
        await asyncio.sleep(0.02)
