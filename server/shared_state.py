"""State the replicas share through Redis when ``VIGIL_REDIS_URL`` is set.

What lives there (every key under ``VIGIL_REDIS_PREFIX``):

- **rate limits** — one token bucket per credential, spent by a Lua script (:data:`_TAKE`) that
  reads Redis' own clock, so replicas with skewed clocks agree and N replicas allow the limit once;
- **address lockouts** — failed authentications per address in a sorted set (:data:`_FAIL`,
  :data:`_GATE`);
- **credential revocation** — a generation number: a revocation bumps it and publishes it on a
  channel; every replica drops its cached credentials on the message, and every call reads the
  generation with its lockout check, so a credential cached before a revocation is never used
  again even if the message is still in flight (no 2 s window, no extra round trip);
- **replay memory** — media hashes and frame fingerprints with a TTL (:class:`SharedReplayMemory`).

Challenge nonces need nothing here: ``storage/challenges.py`` consumes a challenge with one
conditional ``UPDATE`` on the shared database, which PostgreSQL serialises on the row lock.

When Redis cannot be reached (``vigil_redis_up`` 0, health service ``vigil.redis`` NOT_SERVING):

- fails closed: the credential cache — every call looks its credential up in the database, so a
  revoked key or disabled user is refused at once on every replica;
- fails open to this replica's own memory: rate limits and lockouts (each replica counts on its
  own again) and replay memory (a replay to another replica is not caught).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import redis
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2

from vigil.inference.video.replay import FrameReplay, ReplayMemory
from vigil.server.metrics import REDIS_UP

log = logging.getLogger(__name__)

#: Seconds a Redis call may take before the replica treats Redis as down.
_TIMEOUT_S = 0.5

# Token bucket: KEYS[1] the bucket; ARGV rate (per s), burst. Returns the wait in seconds ("0":
# allowed). Redis' clock (TIME) is the one clock all replicas share.
_TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local v = redis.call('HMGET', KEYS[1], 'tokens', 'last')
local tokens = tonumber(v[1]) or burst
local last = tonumber(v[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - last) * rate)
local wait = 0
if tokens < 1 then
  wait = (1 - tokens) / rate
else
  tokens = tokens - 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'last', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""

# A failed authentication: KEYS[1] the address' failures; ARGV max failures, lockout s.
_FAIL = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZADD', KEYS[1], now, tostring(now) .. ':' .. t[2] .. ':' .. math.random())
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
local extra = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[1])
if extra > 0 then redis.call('ZREMRANGEBYRANK', KEYS[1], 0, extra - 1) end
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2]) * 1000))
return 1
"""

# Before authenticating: KEYS[1] the address' failures, KEYS[2] the credential generation;
# ARGV max failures, lockout s. Returns {seconds locked (string), generation}.
_GATE = """
local generation = tonumber(redis.call('GET', KEYS[2]) or '0')
local count = redis.call('ZCARD', KEYS[1])
if count < tonumber(ARGV[1]) then return {'0', generation} end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
local remaining = tonumber(ARGV[2]) - (now - tonumber(newest[2]))
if remaining <= 0 then
  redis.call('DEL', KEYS[1])
  return {'0', generation}
end
return {tostring(remaining), generation}
"""

# Media hash: KEYS[1]; ARGV origin, ttl ms. Returns the earlier origin, or false when new.
_SEEN = """
local earlier = redis.call('GET', KEYS[1])
if earlier then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return earlier
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""


def report_up(up: bool) -> None:
    REDIS_UP.set(1 if up else 0)


class SharedState:
    """The asyncio Redis client of one replica: limits, lockouts, revocations, health.

    Every method raises ``redis.RedisError`` (or OSError/TimeoutError) when Redis is unreachable;
    the caller falls back (see the module docstring), and :attr:`up` says how the last call went.
    """

    def __init__(self, url: str, prefix: str) -> None:
        self.prefix = prefix
        self.client = aioredis.Redis.from_url(
            url, socket_timeout=_TIMEOUT_S, socket_connect_timeout=_TIMEOUT_S
        )
        self._url = url
        self._take = self.client.register_script(_TAKE)
        self._fail = self.client.register_script(_FAIL)
        self._gate = self.client.register_script(_GATE)
        self.up = True
        #: Called when a revocation arrives or Redis is lost (cached credentials are dropped).
        self.on_revoked: Callable[[], None] = lambda: None
        self._listener: asyncio.Task[None] | None = None

    @property
    def channel(self) -> str:
        return f"{self.prefix}revocations"

    @property
    def generation_key(self) -> str:
        return f"{self.prefix}credentials:generation"

    def mark(self, up: bool) -> None:
        if self.up and not up:
            log.warning(
                "Redis unreachable: rate limits, lockouts and replay memory fall back to "
                "this replica; the credential cache is off until it is back"
            )
            self.on_revoked()
        elif up and not self.up:
            log.info("Redis reachable again")
        self.up = up
        report_up(up)

    async def _call(self, work: Any) -> Any:
        try:
            result = await work
        except (redis.RedisError, OSError, TimeoutError):
            self.mark(False)
            raise
        self.mark(True)
        return result

    async def gate(self, address: str, max_failures: int, lockout_s: float) -> tuple[float, int]:
        """(seconds the address stays locked out, the credential generation)."""
        keys = [f"{self.prefix}failures:{address}", self.generation_key]
        locked, generation = await self._call(self._gate(keys, [max_failures, lockout_s]))
        return float(locked), int(generation)

    async def fail(self, address: str, max_failures: int, lockout_s: float) -> None:
        await self._call(
            self._fail([f"{self.prefix}failures:{address}"], [max_failures, lockout_s])
        )

    async def take(self, actor: str, rate: float, burst: float) -> float:
        """Spend one of ``actor``'s tokens; 0 when allowed, else the seconds until one is."""
        if rate <= 0:
            return 0.0
        wait = await self._call(self._take([f"{self.prefix}bucket:{actor}"], [rate, max(burst, 1)]))
        return float(wait)

    def revoke(self) -> None:
        """Bump the credential generation and tell every replica (synchronously: the revoking
        call returns only after every later call on any replica sees the new generation)."""
        client = redis.Redis.from_url(
            self._url, socket_timeout=_TIMEOUT_S, socket_connect_timeout=_TIMEOUT_S
        )
        try:
            generation = client.incr(self.generation_key)
            client.publish(self.channel, str(generation))
        except (redis.RedisError, OSError) as exc:
            log.warning(
                "cannot publish a revocation (%s): other replicas use no cache while Redis is down",
                exc,
            )
            self.mark(False)
        finally:
            client.close()

    async def ping(self) -> bool:
        with contextlib.suppress(redis.RedisError, OSError, TimeoutError):
            await self._call(self.client.ping())
        return self.up

    def start(self) -> None:
        self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self.client.aclose()

    async def _listen(self) -> None:
        """Drop cached credentials on every revocation message; re-subscribe after a loss
        (dropping them then too: messages may have been missed)."""
        while True:
            try:
                async with self.client.pubsub() as pubsub:
                    await pubsub.subscribe(self.channel)
                    self.mark(True)
                    while True:
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=1.0
                        )
                        if message is not None:
                            self.on_revoked()
            except asyncio.CancelledError:
                raise
            except (redis.RedisError, OSError, TimeoutError):
                self.mark(False)
                await asyncio.sleep(1.0)


#: Frame fingerprints are found by 16 bands of 16 bits: two 256-bit hashes within 12 differing
#: bits share at least 4 bands exactly, so looking up a frame's bands finds every close one.
_BANDS = 16


def _bands(value: np.ndarray) -> list[str]:
    raw = value.astype(">u8").tobytes()
    return [raw[i * 2 : i * 2 + 2].hex() for i in range(_BANDS)]


class SharedReplayMemory(ReplayMemory):
    """Replay memory in Redis, shared by every replica and worker, each entry kept ``ttl_s``.
    Called from engine threads (synchronous client). Falls back to this process' memory (the
    parent class) while Redis is unreachable."""

    def __init__(
        self,
        url: str,
        prefix: str,
        ttl_s: float,
        max_media: int = 10_000,
        max_frames: int = 50_000,
        max_bits: int = 12,
    ) -> None:
        super().__init__(max_media, max_frames, max_bits)
        if max_bits >= _BANDS:
            raise ValueError(f"max_bits {max_bits}: the shared memory finds at most {_BANDS - 1}")
        self.client = redis.Redis.from_url(
            url, socket_timeout=_TIMEOUT_S, socket_connect_timeout=_TIMEOUT_S
        )
        self.prefix = f"{prefix}replay:"
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self._seen = self.client.register_script(_SEEN)

    def check_media(self, sha256: str, origin: str) -> str | None:
        try:
            earlier = self._seen([f"{self.prefix}media:{sha256}"], [origin, self.ttl_ms])
        except (redis.RedisError, OSError):
            report_up(False)
            return super().check_media(sha256, origin)
        report_up(True)
        if earlier is None:
            return None
        text = earlier.decode() if isinstance(earlier, bytes) else str(earlier)
        return text if text != origin else None

    def check_frames(self, hashes: list[np.ndarray], origin: str) -> FrameReplay:
        if not hashes:
            return FrameReplay(0, 0, None)
        try:
            return self._check_frames(hashes, origin)
        except (redis.RedisError, OSError):
            report_up(False)
            return super().check_frames(hashes, origin)

    def _check_frames(self, hashes: list[np.ndarray], origin: str) -> FrameReplay:
        keys = [[f"{self.prefix}f:{i}:{band}" for i, band in enumerate(_bands(h))] for h in hashes]
        read = self.client.pipeline(transaction=False)
        for frame_keys in keys:
            for key in frame_keys:
                read.smembers(key)
        members = read.execute()
        matched, hits = 0, dict[str, int]()
        for n, value in enumerate(hashes):
            best: str | None = None
            for entry in set().union(*members[n * _BANDS : (n + 1) * _BANDS]):
                stored_hex, _, stored_origin = entry.decode().partition("|")
                if stored_origin == origin:
                    continue
                stored = np.frombuffer(bytes.fromhex(stored_hex), dtype=">u8").astype(np.uint64)
                if int(np.bitwise_count(stored ^ value).sum()) <= self.max_bits:
                    best = stored_origin
                    break
            if best is not None:
                matched += 1
                hits[best] = hits.get(best, 0) + 1
        write = self.client.pipeline(transaction=False)
        for value, frame_keys in zip(hashes, keys, strict=True):
            member = f"{value.astype('>u8').tobytes().hex()}|{origin}"
            for key in frame_keys:
                write.sadd(key, member)
                write.pexpire(key, self.ttl_ms)
        write.execute()
        report_up(True)
        top = max(hits, key=lambda k: hits[k]) if hits else None
        return FrameReplay(matched, len(hashes), top)


#: The gRPC health service that reports the shared Redis (the server itself stays SERVING).
HEALTH_SERVICE = "vigil.redis"


class SharedStateWatch:
    """Runs the revocation listener and pings Redis every ``interval_s``: ``vigil_redis_up`` and
    the health service ``vigil.redis`` (SERVING / NOT_SERVING) follow it."""

    def __init__(self, shared: SharedState, health: Any, interval_s: float = 2.0) -> None:
        self.shared = shared
        self.health = health
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.shared.start()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.shared.stop()

    async def _run(self) -> None:
        while True:
            up = await self.shared.ping()
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if up
                else (health_pb2.HealthCheckResponse.NOT_SERVING)
            )
            await self.health.set(HEALTH_SERVICE, status)
            await asyncio.sleep(self.interval_s)
