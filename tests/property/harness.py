"""The service for the property tests: opened once per test on an event loop of its own.

Hypothesis' state machines are synchronous, and pytest-asyncio's session loop cannot be
re-entered from inside a test. So the test is a plain function: the harness owns a fresh event
loop, opens the services, publishes the run's rules and starts a projection runner on it, and
every step runs its coroutine to completion on that loop (`run`). Between steps the loop is
idle; the runner catches up whenever the loop runs again. One database serves all examples of
the test: each example enrols members of its own and reads only those.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import uuid
from collections.abc import Coroutine
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

from domain.rules import EarnRule, Rules, Tier
from projections.runner import ProjectionRunner
from service.config import Settings
from service.handlers import program
from service.handlers.commands import PublishRules
from service.handlers.context import CommandContext
from service.handlers.program import ensure_program
from service.services import Services, open_services
from tests.property import model

T = TypeVar("T")

SCOPES = frozenset({"read", "earn", "award", "redeem", "members", "admin"})

# The model's rules, as a rules document.
RULES = Rules(
    earn=EarnRule(
        points_per_unit=Decimal(1), pending_days=model.PENDING.days, expiry_months=model.EXPIRY_MONTHS
    ),
    tiers=[
        Tier(name=name, threshold=t, multiplier=Decimal(x.numerator) / x.denominator)
        for name, t, x in model.TIERS
    ],
    tier_window_days=model.WINDOW.days,
    downgrade_grace_days=model.GRACE.days,
)

# A fixed start (a 29th, near a month's end: expiries clamp to shorter months), so that a run is
# the same whatever day it runs; the clock only moves forward, across examples too.
START = datetime(2031, 1, 29, 9, 0, tzinfo=UTC)


class Harness:
    """A loop, the services on it, a projection runner, and the simulated clock."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.loop = asyncio.new_event_loop()
        self.now = START
        self._stack = contextlib.AsyncExitStack()
        self.services: Services
        self.runner: ProjectionRunner
        self._phones = 0

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run one coroutine to completion on the harness' loop."""
        return self.loop.run_until_complete(coro)

    def ctx(self, channel: str = "pos") -> CommandContext:
        """A command's context at the simulated clock, with an idempotency key of its own."""
        return CommandContext(
            channel=channel,
            api_key_id="property",
            now=self.now,
            request_id=uuid.uuid4().hex,
            scopes=SCOPES,
            idempotency_key=uuid.uuid4().hex,
            request_hash=secrets.token_bytes(8),
        )

    def phone(self) -> str:
        """A mobile number no member of this database has."""
        self._phones += 1
        return f"+86139{self._phones:08d}"

    async def _open(self) -> None:
        settings = Settings(
            database_url=self.database_url,
            nats_url=None,
            master_key=base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
            db_pool_size=4,
            followers="off",  # the harness runs its own projection runner
        )
        self.services = await self._stack.enter_async_context(open_services(settings))
        await ensure_program(self.services)
        await program.publish_rules(self.services, self.ctx("admin"), PublishRules(rules=RULES))
        self.runner = ProjectionRunner(self.services.pool, self.services.store, self.database_url)
        await self.runner.start()
        self._stack.push_async_callback(self.runner.stop)

    def open(self) -> Harness:
        self.run(self._open())
        return self

    def close(self) -> None:
        try:
            self.run(self._stack.aclose())
            self.run(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()
