"""Rate limits: token buckets per API key, and per client address for failed authentications.

Per instance and in memory: a limit protects this process (its event loop, its database pool)
from one caller, it is not a quota. Answered with 429 and `Retry-After`.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Hashable


class TokenBuckets:
    """One bucket per key: `rate` tokens a second, holding at most `burst`."""

    def __init__(self, rate: float, burst: float, *, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self._max_keys = max_keys
        # key -> (tokens, when they were counted); least recently used first.
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()

    def _refilled(self, key: Hashable, now: float) -> float:
        tokens, then = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - then) * self.rate)

    def take(self, key: Hashable, cost: float = 1.0) -> float:
        """Take `cost` tokens: 0.0 when allowed, else the seconds until they would be there."""
        now = time.monotonic()
        tokens = self._refilled(key, now)
        if tokens < cost:
            self._store(key, tokens, now)
            return (cost - tokens) / self.rate
        self._store(key, tokens - cost, now)
        return 0.0

    def give_back(self, key: Hashable, cost: float = 1.0) -> None:
        """Return tokens taken for something that turned out not to count."""
        now = time.monotonic()
        self._store(key, min(self.burst, self._refilled(key, now) + cost), now)

    def _store(self, key: Hashable, tokens: float, now: float) -> None:
        self._buckets[key] = (tokens, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)


def retry_after(seconds: float) -> str:
    """A `Retry-After` value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
