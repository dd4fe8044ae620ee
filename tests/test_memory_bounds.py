"""Every in-memory cache of a replica has a size bound from the settings and a metric:
credentials, rate-limit buckets, failed logins, the replay memory, the per-company database turns;
and no metric label takes values a caller chooses (unknown methods add no label set)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client import REGISTRY

from tests.conftest import ServerThread, make_settings
from vigil.server.security.rate_limit import BoundedLRU, FailureTracker, TokenBuckets
from vigil.server.video import replay_memory_for
from vigil.v1 import auth_pb2, auth_pb2_grpc, instant_pb2, instant_pb2_grpc


def _entries(cache: str) -> float:
    value = REGISTRY.get_sample_value("vigil_cache_entries", {"cache": cache})
    assert value is not None, f"no vigil_cache_entries for {cache}"
    return value


def _evictions(cache: str) -> float:
    return REGISTRY.get_sample_value("vigil_cache_evictions_total", {"cache": cache}) or 0.0


def test_bounded_lru_forgets_the_least_recently_used_and_counts_it() -> None:
    name = f"test-{uuid.uuid4().hex[:6]}"
    cache: BoundedLRU[str, int] = BoundedLRU(name, 3)
    for i in range(3):
        cache.put(f"k{i}", i)
    assert cache.get("k0") == 0  # k0 is now the most recent: k1 goes first
    cache.put("k3", 3)
    assert cache.get("k1") is None
    assert [cache.get(k) for k in ("k0", "k2", "k3")] == [0, 2, 3]
    assert len(cache) == 3
    assert _entries(name) == 3
    assert _evictions(name) == 1


def test_rate_limit_buckets_and_failed_logins_stay_within_their_bound() -> None:
    now = [0.0]
    buckets = TokenBuckets(rate=1.0, burst=2.0, clock=lambda: now[0], max_keys=50)
    for i in range(1_000):
        buckets.take(f"key-{i}")
    assert len(buckets) == 50
    # The most recent key still has its bucket: two calls spent it.
    assert buckets.take("key-999") == 0.0
    assert buckets.take("key-999") > 0.0

    failures = FailureTracker(max_failures=3, lockout_s=60.0, clock=lambda: now[0], max_keys=50)
    for i in range(1_000):
        failures.fail(f"10.0.{i // 256}.{i % 256}")
    assert len(failures) == 50
    for _ in range(3):
        failures.fail("192.0.2.1")
    assert failures.locked_for("192.0.2.1") > 0  # the lockout still works at the bound


@pytest.fixture(scope="module")
def small_server(
    models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerThread]:
    running = ServerThread(
        make_settings(
            models_dir,
            data_dir=tmp_path_factory.mktemp("bounds"),
            credential_cache_size=2,
            rate_limit_per_s=1000.0,
            rate_limit_max_keys=3,
            replay_max_media=7,
            replay_max_frames=11,
        )
    ).start()
    yield running
    running.stop()


def test_the_credential_cache_and_buckets_hold_at_most_their_settings(
    small_server: ServerThread,
) -> None:
    keys = [small_server.new_key("SERVICE", company=f"bounds-{i}") for i in range(6)]
    for key in keys:
        with small_server.channel(key) as channel:
            auth_pb2_grpc.AuthStub(channel).WhoAmI(auth_pb2.WhoAmIRequest())
    assert _entries("credentials") == 2
    assert _entries("rate_limit") == 3
    assert _entries("company_slots") == 0  # idle companies' turns are forgotten
    # Evicted credentials are looked up again, not refused.
    with small_server.channel(keys[0]) as channel:
        auth_pb2_grpc.AuthStub(channel).WhoAmI(auth_pb2.WhoAmIRequest())


def test_the_replay_memory_takes_its_bounds_from_the_settings(small_server: ServerThread) -> None:
    memory = replay_memory_for(small_server.vigil.engine)
    assert (memory.max_media, len(memory._origins)) == (7, 11)
    for i in range(20):
        memory.check_media(f"{i:064x}", origin=f"request-{i}")
    assert memory.media_count == 7
    assert _entries("replay_media") == 7


def test_unknown_methods_add_no_metric_labels(small_server: ServerThread) -> None:
    def label_sets() -> int:
        return sum(
            len(metric.samples) for metric in REGISTRY.collect() if metric.name == "vigil_rpc"
        )

    with small_server.channel() as channel:
        instant_pb2_grpc.InstantStub(channel).GetServerInfo(instant_pb2.GetServerInfoRequest())
        before = label_sets()
        for i in range(50):
            call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                f"/vigil.v1.Instant/NoSuch{uuid.uuid4().hex}{i}"
            )
            with pytest.raises(grpc.RpcError) as info:
                call(b"")
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        instant_pb2_grpc.InstantStub(channel).GetServerInfo(instant_pb2.GetServerInfoRequest())
    assert label_sets() == before
