"""Admission control: beyond the in-flight limit, calls are refused at once, not queued."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from tests.conftest import FACES, ServerThread, make_settings, read
from vigil.v1 import common_pb2, instant_pb2, instant_pb2_grpc


@pytest.fixture(scope="module")
def tight_server(models_dir: Path) -> Iterator[ServerThread]:
    running = ServerThread(make_settings(models_dir, max_inflight_images=2)).start()
    yield running
    running.stop()


def test_excess_requests_are_refused_quickly(tight_server: ServerThread) -> None:
    request = instant_pb2.LivenessRequest(image=common_pb2.Media(data=read(FACES / "obama3.jpg")))
    with tight_server.channel() as channel:
        stub = instant_pb2_grpc.InstantStub(channel)

        def one(_: int) -> tuple[str, float]:
            began = time.perf_counter()
            try:
                stub.CheckLiveness(request, timeout=60)
                return "OK", time.perf_counter() - began
            except grpc.RpcError as error:
                assert "capacity" in (error.details() or "")
                return error.code().name, time.perf_counter() - began

        with ThreadPoolExecutor(16) as pool:
            outcomes = list(pool.map(one, range(32)))
        codes = [code for code, _ in outcomes]
        assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}
        assert codes.count("OK") >= 2 and codes.count("RESOURCE_EXHAUSTED") >= 8
        refusals = sorted(t for code, t in outcomes if code == "RESOURCE_EXHAUSTED")
        assert refusals[len(refusals) // 2] < 0.5  # refused before any decoding, not after queueing
        # Once the load is gone, the server serves again.
        assert stub.CheckLiveness(request, timeout=60).live
