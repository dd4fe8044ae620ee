"""Health, reflection, graceful shutdown, start-up on corrupt models, the asyncio client, and the
SDK's public names."""

from __future__ import annotations

import asyncio
import concurrent.futures
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

import vigil.client as sdk
from tests.conftest import FACES, SPOOF, ServerThread, make_settings, read
from vigil.inference import catalog
from vigil.inference.backends import candidates
from vigil.inference.errors import ModelError
from vigil.inference.media import DecodedImage
from vigil.inference.types import Face
from vigil.v1 import common_pb2, instant_pb2, instant_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.mark.parametrize("service", ["", "vigil.v1.Instant"])
def test_health_is_serving(channel: grpc.Channel, service: str) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == SERVING


def test_health_of_an_unknown_service_is_not_found(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    with pytest.raises(grpc.RpcError) as caught:
        health.Check(health_pb2.HealthCheckRequest(service="vigil.v1.Nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection(channel: grpc.Channel) -> None:
    database = ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    assert {"vigil.v1.Instant", "grpc.health.v1.Health"} <= services
    assert "grpc.reflection.v1alpha.ServerReflection" in services
    assert database.FindFileContainingSymbol("vigil.v1.Instant").name == "vigil/v1/instant.proto"
    pool = descriptor_pool.DescriptorPool(database)
    instant = pool.FindServiceByName("vigil.v1.Instant")
    assert {m.name for m in instant.methods} == {
        "Detect", "CheckLiveness", "ExtractTemplate", "Verify", "GetServerInfo", "StreamLiveness",
    }  # fmt: skip
    verify = instant.methods_by_name["Verify"]
    assert verify.input_type.full_name == "vigil.v1.VerifyRequest"
    # the imported common.proto resolves too
    assert pool.FindMessageTypeByName("vigil.v1.Template").fields_by_name["values"].number == 1


def _verify_request(a: str, b: str) -> instant_pb2.VerifyRequest:
    def side(name: str) -> instant_pb2.FaceInput:
        return instant_pb2.FaceInput(image=common_pb2.Media(data=read(FACES / name)))

    return instant_pb2.VerifyRequest(a=side(a), b=side(b))


def _finish(running: ServerThread) -> None:
    running.loop.call_soon_threadsafe(running.loop.stop)
    running.thread.join(30)
    running.loop.close()


def test_graceful_shutdown(models_dir: Path) -> None:
    """In-flight calls finish OK during the grace period; health watchers see NOT_SERVING; new
    calls are refused with UNAVAILABLE. The calls are held inside the engine (after the server
    received them, before decoding) so the test does not depend on timing."""
    running = ServerThread(make_settings(models_dir, shutdown_grace_s=20.0)).start()
    vigil = running.running
    assert vigil is not None
    engine = vigil.engine
    arrived = threading.Semaphore(0)

    async def make_gate() -> asyncio.Event:
        return asyncio.Event()

    gate = running.call(make_gate)
    locate = engine._locate  # the first stage of every image: decode + detect

    async def held_locate(*args: Any, **kwargs: Any) -> tuple[DecodedImage, list[Face], Any]:
        arrived.release()
        await gate.wait()
        return await locate(*args, **kwargs)

    engine._locate = held_locate  # type: ignore[method-assign]  # hold calls in the engine
    pairs = [("obama.jpg", "obama3.jpg"), ("obama3.jpg", "biden.jpg"), ("obama2.jpg", "obama3.jpg")]
    stopping: concurrent.futures.Future[None] | None = None
    try:
        with running.channel() as channel:
            stub = instant_pb2_grpc.InstantStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)
            assert next(watch).status == SERVING
            calls = [stub.Verify.future(_verify_request(a, b), timeout=60) for a, b in pairs]
            for _ in range(2 * len(pairs)):  # both sides of every call are inside the engine
                assert arrived.acquire(timeout=30)
            stopping = asyncio.run_coroutine_threadsafe(vigil.stop(), running.loop)
            assert next(watch).status == NOT_SERVING
            watch.cancel()
            refused: grpc.RpcError | None = None
            deadline = time.monotonic() + 10
            while refused is None and time.monotonic() < deadline:
                try:
                    stub.GetServerInfo(instant_pb2.GetServerInfoRequest(), timeout=5)
                    time.sleep(0.02)  # health flipped; the listener closes a moment later
                except grpc.RpcError as error:
                    refused = error
            assert refused is not None and refused.code() == grpc.StatusCode.UNAVAILABLE
            with running.channel() as fresh:
                with pytest.raises(grpc.RpcError) as caught:
                    instant_pb2_grpc.InstantStub(fresh).GetServerInfo(
                        instant_pb2.GetServerInfoRequest(), timeout=5
                    )
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert not any(call.done() for call in calls)  # still held, still in flight
            running.loop.call_soon_threadsafe(gate.set)
            replies = [call.result(timeout=60) for call in calls]
            assert [r.match for r in replies] == [True, False, True]
            stopping.result(timeout=30)
    finally:
        if stopping is None or not stopping.done():
            running.loop.call_soon_threadsafe(gate.set)
            asyncio.run_coroutine_threadsafe(vigil.stop(), running.loop).result(60)
        _finish(running)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_corrupt_model_stops_start_up(models_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "models"
    broken.mkdir()
    for spec in catalog.DEFAULT_MODELS:
        shutil.copyfile(models_dir / spec.file, broken / spec.file)
    victim = broken / catalog.MINIFASNET_V1SE.file
    victim.write_bytes(victim.read_bytes()[:1000])
    port = _free_port()
    running = ServerThread(make_settings(broken, port=port))
    try:
        with pytest.raises(ModelError) as caught:
            running.start()
    finally:
        running.thread.join(30)
        running.loop.close()
    assert catalog.MINIFASNET_V1SE.file in caught.value.message
    assert "corrupt" in caught.value.message and "vigil models install" in caught.value.message
    assert running.running is None
    with socket.socket() as sock:  # nothing listens on the port
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0


def _engine_threads() -> int:
    return sum(t.name.startswith("vigil-engine") for t in threading.enumerate())


def test_failed_start_up_leaves_no_thread_behind(tmp_path: Path) -> None:
    before = _engine_threads()
    running = ServerThread(make_settings(tmp_path / "empty"))  # no models at all
    with pytest.raises(ModelError, match="is missing"):
        running.start()
    running.thread.join(30)
    running.loop.close()
    assert _engine_threads() == before


async def test_async_client(server: ServerThread) -> None:
    key = server.admin_key
    async with sdk.AsyncVigilClient(server.address, timeout=30, api_key=key) as client:
        live, spoof, found, made = await asyncio.gather(
            client.liveness(FACES / "obama.jpg"),
            client.liveness(str(SPOOF / "image_F1.jpg")),
            client.detect(read(FACES / "astronaut.png")),
            client.template(FACES / "obama2.jpg", require_single_face=True),
        )
        assert live.live and live.score >= 0.5 and live.face_count == 1
        assert not spoof.live and spoof.score < 0.5
        assert set(live.model_scores) == {"minifasnet-v2", "minifasnet-v1se"}
        assert len(found.faces) == 1 and found.content_type == "image/png"
        assert len(made.template.values) == 128
        same = await client.verify(FACES / "obama.jpg", made.template)
        assert same.match and same.similarity > 0.5
        other = await client.verify(FACES / "biden.jpg", made.template)
        assert not other.match
        info = await client.server_info()
        assert info.backend == candidates("auto", "auto")[0].backend  # the default, resolved
        with pytest.raises(sdk.VigilRpcError) as caught:
            await client.detect(b"GIF89a" + bytes(100))
        error = caught.value
        assert (error.code, error.reason) == ("INVALID_ARGUMENT", "UNSUPPORTED_MEDIA_TYPE")
        assert "GIF" in error.message
        assert str(error).startswith("INVALID_ARGUMENT: ")


def test_sync_client_error_carries_reason(server: ServerThread) -> None:
    with sdk.VigilClient(server.address, timeout=30, api_key=server.admin_key) as client:
        assert client.liveness(FACES / "obama.jpg").live
        with pytest.raises(sdk.VigilRpcError) as caught:
            client.verify(FACES / "obama.jpg", sdk.Template([0.0] * 3, "dlib-resnet", "v1"))
        assert (caught.value.code, caught.value.reason) == ("INVALID_ARGUMENT", "INVALID_TEMPLATE")


def test_sdk_public_names() -> None:
    assert sdk.__all__ == [
        "AsyncVigilClient",
        "ChallengeVerdictClaims",
        "DetectResult",
        "Face",
        "LivenessResult",
        "Template",
        "TemplateResult",
        "Verdict",
        "VerdictError",
        "VerifyResult",
        "VigilClient",
        "VigilRpcError",
        "WebhookSignatureError",
        "verify_challenge_verdict",
        "verify_delivery",
        "verify_verdict",
    ]
    for name in sdk.__all__:
        assert getattr(sdk, name).__module__.startswith("vigil.client.")
