"""Capture sessions and per-address limits, in the adapter's memory (one adapter process; a
restarted adapter forgets its open sessions, whose pages then start a new one)."""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field


@dataclass
class Session:
    id: str
    folder_id: str
    origin: str
    created: float
    expires: float
    challenge_id: str = ""
    gestures: list[str] = field(default_factory=list)
    gesture_window_ms: int = 0
    #: Set when the capture arrives: a session takes one upload (a second is a replay).
    used: bool = False


class Sessions:
    def __init__(self, ttl_s: float, capacity: int) -> None:
        self.ttl_s = ttl_s
        self.capacity = capacity
        self._open: OrderedDict[str, Session] = OrderedDict()

    def new(self, folder_id: str, origin: str) -> Session:
        now = time.monotonic()
        # 192 random bits: the id is the page's only proof that the session is its own
        session = Session(secrets.token_urlsafe(24), folder_id, origin, now, now + self.ttl_s)
        self._open[session.id] = session
        while len(self._open) > self.capacity:
            self._open.popitem(last=False)
        return session

    def get(self, session_id: str) -> Session | None:
        return self._open.get(session_id)


class AddressLimit:
    """At most ``per_minute`` events per client address in any 60 s (a sliding window)."""

    def __init__(self, per_minute: int, capacity: int = 100_000) -> None:
        self.per_minute = per_minute
        self.capacity = capacity
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()

    def allow(self, address: str) -> bool:
        if self.per_minute <= 0:
            return True
        now = time.monotonic()
        times = self._seen.pop(address, deque())
        while times and times[0] <= now - 60:
            times.popleft()
        self._seen[address] = times
        while len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        if len(times) >= self.per_minute:
            return False
        times.append(now)
        return True
