"""Shared state in Redis (server/shared_state.py), two "replicas" per test on the machine's Redis
(``VIGIL_TEST_REDIS``, default redis://127.0.0.1:6379/15), each test under a key prefix of its
own; and what happens when Redis cannot be reached."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import redis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from grpc_health.v1 import health_pb2

from tests.conftest import FACES, SPOOF
from vigil.inference.errors import RateLimited, Unauthenticated
from vigil.inference.video.replay import frame_hash
from vigil.server.metrics import REDIS_UP
from vigil.server.security.auth import Authenticator
from vigil.server.security.principal import Principal
from vigil.server.security.tokens import Signer
from vigil.server.shared_state import (
    HEALTH_SERVICE,
    SharedReplayMemory,
    SharedState,
    SharedStateWatch,
)

REDIS_URL = os.environ.get("VIGIL_TEST_REDIS", "redis://127.0.0.1:6379/15")
#: Nothing listens there: Redis "down".
DOWN_URL = "redis://127.0.0.1:1/0"


def _redis_or_skip() -> redis.Redis:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis at {REDIS_URL} ({exc}); .ci/run starts one")
    return client


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix of this test's own, deleted afterwards."""
    client = _redis_or_skip()
    name = f"vigil-test-{uuid.uuid4().hex[:10]}:"
    yield name
    keys = list(client.scan_iter(f"{name}*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
async def replicas(prefix: str) -> AsyncIterator[tuple[SharedState, SharedState]]:
    a, b = SharedState(REDIS_URL, prefix), SharedState(REDIS_URL, prefix)
    yield a, b
    await a.stop()
    await b.stop()


async def test_a_rate_limit_is_spent_once_across_replicas(
    replicas: tuple[SharedState, SharedState],
) -> None:
    a, b = replicas
    # A burst of 10 and a refill slow enough not to add a token during the test.
    waits = [await (a if i % 2 else b).take("key-1", 0.01, 10) for i in range(20)]
    assert sum(w == 0 for w in waits) == 10
    assert all(w > 0 for w in waits[10:])
    assert await a.take("key-2", 0.01, 10) == 0  # another credential has its own bucket


async def test_failures_on_one_replica_lock_the_address_out_on_another(
    replicas: tuple[SharedState, SharedState],
) -> None:
    a, b = replicas
    for _ in range(3):
        await a.fail("10.0.0.7", 3, 60.0)
    locked, _ = await b.gate("10.0.0.7", 3, 60.0)
    assert 55 < locked <= 60
    other, _ = await b.gate("10.0.0.8", 3, 60.0)
    assert other == 0


async def test_a_revocation_reaches_every_replica(
    replicas: tuple[SharedState, SharedState],
) -> None:
    a, b = replicas
    dropped = asyncio.Event()
    b.on_revoked = dropped.set
    b.start()
    await asyncio.sleep(0.2)  # subscribed
    _, before = await b.gate("10.0.0.9", 10, 60.0)
    await asyncio.to_thread(a.revoke)
    # The generation is new before revoke() returns: the next call anywhere sees it …
    _, after = await b.gate("10.0.0.9", 10, 60.0)
    assert after == before + 1
    # … and the message drops the other replica's cached credentials.
    await asyncio.wait_for(dropped.wait(), 1.0)


def _photo(name: str) -> np.ndarray:
    image = cv2.imread(str(name))
    assert image is not None, name
    return image


def test_replay_memory_is_shared_and_finds_reencoded_frames(prefix: str) -> None:
    a = SharedReplayMemory(REDIS_URL, prefix, ttl_s=60)
    b = SharedReplayMemory(REDIS_URL, prefix, ttl_s=60)
    assert a.check_media("ab" * 32, "request-1") is None
    assert b.check_media("ab" * 32, "request-2") == "request-1"
    assert b.check_media("ab" * 32, "request-1") is None  # the same origin again: no replay

    photos = [_photo(str(p)) for p in (FACES / "obama.jpg", FACES / "biden.jpg")]
    a.check_frames([frame_hash(p) for p in photos], "request-1")
    # The same frames re-encoded (other bytes), scaled: found on the other replica.
    copies = []
    for photo in photos:
        ok, jpeg = cv2.imencode(".jpg", cv2.resize(photo, None, fx=0.7, fy=0.7), [95, 60])
        assert ok
        decoded = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
        assert decoded is not None
        copies.append(frame_hash(decoded))
    seen = b.check_frames(copies, "request-2")
    assert (seen.matched, seen.total, seen.origin) == (2, 2, "request-1")
    # Another photo is not a replay.
    fresh = b.check_frames([frame_hash(_photo(str(SPOOF / "image_T1.jpg")))], "request-3")
    assert fresh.matched == 0
    assert int(redis.Redis.from_url(REDIS_URL).pttl(f"{prefix}replay:media:{'ab' * 32}")) > 0


async def test_redis_down_fails_open_to_this_replica_and_says_so() -> None:
    down = SharedState(DOWN_URL, "vigil-test-down:")
    dropped: list[bool] = []
    down.on_revoked = lambda: dropped.append(True)
    with pytest.raises((redis.RedisError, OSError)):
        await down.gate("10.0.0.1", 3, 60.0)
    assert not down.up
    assert dropped == [True]  # cached credentials dropped when Redis is lost
    assert REDIS_UP._value.get() == 0
    assert not await down.ping()
    await down.stop()

    memory = SharedReplayMemory(DOWN_URL, "vigil-test-down:", ttl_s=60)
    assert memory.check_media("cd" * 32, "request-1") is None
    assert memory.check_media("cd" * 32, "request-2") == "request-1"  # this process' memory


class _Context:
    """The two things the authenticator reads from a call (mechanics only)."""

    def __init__(self, key: str) -> None:
        self.key = key

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-api-key", self.key),)

    def peer(self) -> str:
        return "ipv4:10.1.2.3:5555"


class _App:
    """An AppContext's parts the authenticator uses; credential lookups counted, not run."""

    def __init__(self, shared: SharedState, **settings: object) -> None:
        from tests.conftest import make_settings

        self.settings = make_settings(Path("/nonexistent/models"), **settings)
        self.shared = shared
        self.background_writes: set[asyncio.Task[None]] = set()
        self.lookups = 0
        self.revoked: set[str] = set()

    async def auth_db(self, work: object) -> Principal:
        self.lookups += 1
        if "key-1" in self.revoked:
            raise Unauthenticated("unknown API key")
        return Principal("c1", "company", "SERVICE", "FULL", api_key_id="key-1")


def _authenticator(app: _App) -> Authenticator:
    signer = Signer(Ed25519PrivateKey.generate())
    return Authenticator(app, signer)  # type: ignore[arg-type]


async def test_a_revocation_on_one_replica_empties_every_replicas_cache_before_it_returns(
    prefix: str,
) -> None:
    # No listener runs: the generation read with each call is what refuses the cached key.
    app_a, app_b = _App(SharedState(REDIS_URL, prefix)), _App(SharedState(REDIS_URL, prefix))
    a, b = _authenticator(app_a), _authenticator(app_b)
    call = _Context("vgl_secret")
    await b.authenticate(call)  # type: ignore[arg-type]
    await b.authenticate(call)  # type: ignore[arg-type]
    assert app_b.lookups == 1  # the second call was served from B's cache
    app_a.revoked.add("key-1")
    app_b.revoked.add("key-1")  # the database both read
    await asyncio.to_thread(a.forget)  # RevokeApiKey on replica A
    with pytest.raises(Unauthenticated):
        await b.authenticate(call)  # type: ignore[arg-type]
    assert app_b.lookups == 2
    await app_a.shared.stop()
    await app_b.shared.stop()


async def test_with_redis_down_no_credential_is_cached_and_limits_hold_per_replica() -> None:
    app = _App(
        SharedState(DOWN_URL, "vigil-test-down:"), rate_limit_per_s=0.001, rate_limit_burst=3
    )
    authenticator = _authenticator(app)
    call = _Context("vgl_secret")
    for _ in range(3):
        await authenticator.authenticate(call)  # type: ignore[arg-type]
    assert app.lookups == 3  # fails closed: every call asks the database
    with pytest.raises(RateLimited):  # fails open to this replica's own bucket
        await authenticator.authenticate(call)  # type: ignore[arg-type]
    await app.shared.stop()


async def test_health_and_metric_follow_redis(prefix: str) -> None:
    class Health:
        def __init__(self) -> None:
            self.statuses: list[int] = []

        async def set(self, service: str, status: int) -> None:
            assert service == HEALTH_SERVICE
            self.statuses.append(status)

    for url, status, up in (
        (REDIS_URL, health_pb2.HealthCheckResponse.SERVING, 1),
        (DOWN_URL, health_pb2.HealthCheckResponse.NOT_SERVING, 0),
    ):
        health = Health()
        watch = SharedStateWatch(SharedState(url, prefix), health, interval_s=0.05)
        watch.start()
        for _ in range(100):
            if health.statuses:
                break
            await asyncio.sleep(0.05)
        await watch.stop()
        assert health.statuses[0] == status
        assert REDIS_UP._value.get() == up
