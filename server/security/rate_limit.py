"""Per-credential token buckets, a lockout after repeated failed authentications, and the bounded
per-key memory both keep (as does the credential cache).

All live in one replica's memory: behind a load balancer each replica counts on its own, unless
``VIGIL_REDIS_URL`` is set (then the authenticator counts in Redis, ``server/shared_state.py``, and
falls back to these while Redis is unreachable). Each is bounded: beyond ``max_keys`` the least
recently seen key is forgotten (a forgotten bucket starts full again, a forgotten source's failures
start from zero).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Generic, TypeVar

from vigil.server.metrics import CACHE_ENTRIES, CACHE_EVICTIONS

K = TypeVar("K")
V = TypeVar("V")


class BoundedLRU(Generic[K, V]):
    """A dict of at most ``max_size`` entries, dropping the least recently used; its size and
    evictions are exported as ``vigil_cache_entries{cache=name}`` and
    ``vigil_cache_evictions_total{cache=name}``."""

    def __init__(self, name: str, max_size: int) -> None:
        self.name = name
        self.max_size = max(1, max_size)
        self._items: OrderedDict[K, V] = OrderedDict()
        CACHE_ENTRIES.labels(name).set_function(lambda: len(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.max_size:
            self._items.popitem(last=False)
            CACHE_EVICTIONS.labels(self.name).inc()

    def pop(self, key: K) -> None:
        self._items.pop(key, None)

    def clear(self) -> None:
        self._items.clear()


class TokenBuckets:
    """``rate`` calls per second with bursts of ``burst``, per key. A rate of 0 turns it off."""

    def __init__(
        self,
        rate: float,
        burst: float,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.clock = clock
        self._buckets: BoundedLRU[str, tuple[float, float]] = BoundedLRU("rate_limit", max_keys)

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> float:
        """Spend one token; returns 0 when allowed, else the seconds until one is available."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        tokens, last = self._buckets.get(key) or (self.burst, now)
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets.put(key, (tokens, now))
            return (1.0 - tokens) / self.rate
        self._buckets.put(key, (tokens - 1.0, now))
        return 0.0


class FailureTracker:
    """Locks a source out for ``lockout_s`` after ``max_failures`` failures within ``lockout_s``."""

    def __init__(
        self,
        max_failures: int,
        lockout_s: float,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        self.max_failures = max_failures
        self.lockout_s = lockout_s
        self.clock = clock
        self._failures: BoundedLRU[str, deque[float]] = BoundedLRU("failed_logins", max_keys)

    def __len__(self) -> int:
        return len(self._failures)

    def fail(self, source: str) -> None:
        now = self.clock()
        window = self._failures.get(source)
        if window is None:
            window = deque()
        self._failures.put(source, window)
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
            self._failures.pop(source)
            return 0.0
        return remaining
