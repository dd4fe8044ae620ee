"""Per-credential token buckets, and a lockout after repeated failed authentications.

Both live in one replica's memory: behind a load balancer each replica counts on its own.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class TokenBuckets:
    """``rate`` calls per second with bursts of ``burst``, per key. A rate of 0 turns it off."""

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str) -> float:
        """Spend one token; returns 0 when allowed, else the seconds until one is available."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > 100_000:  # forget idle keys rather than grow without bound
            self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 60}
        return 0.0


class FailureTracker:
    """Locks a source out for ``lockout_s`` after ``max_failures`` failures within ``lockout_s``."""

    def __init__(
        self, max_failures: int, lockout_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_failures = max_failures
        self.lockout_s = lockout_s
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}

    def fail(self, source: str) -> None:
        now = self.clock()
        window = self._failures.setdefault(source, deque())
        window.append(now)
        while window and now - window[0] > self.lockout_s:
            window.popleft()
        while len(window) > self.max_failures:
            window.popleft()

    def locked_for(self, source: str) -> float:
        """Seconds the source stays locked out (0: not locked)."""
        window = self._failures.get(source)
        if not window or len(window) < self.max_failures:
            return 0.0
        remaining = self.lockout_s - (self.clock() - window[-1])
        if remaining <= 0:
            self._failures.pop(source, None)
            return 0.0
        return remaining
