"""The SDK over the whole API, against a real server with the real models and sample photos:
folders, media uploads (path, bytes, file object, with progress), analyses (create, watch,
wait), Submit, collections, webhooks, signed verdicts and challenges, blocking and asyncio; and
the channel's retry policy (UNAVAILABLE only, idempotent calls only) against a scripted server."""

from __future__ import annotations

import asyncio
import hashlib
import io
import uuid
from concurrent import futures
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.conftest import FACES, ServerThread
from tests.videos import encode, motion_frames
from vigil.client import (
    AsyncVigilClient,
    VerdictError,
    VigilClient,
    VigilRpcError,
    verify_challenge_verdict,
    verify_verdict,
)
from vigil.client.connection import Connection
from vigil.v1 import folders_pb2

RESOLUTION = folders_pb2.Resolution.Name


def client_of(server: ServerThread, company: str) -> VigilClient:
    key = server.new_key("SERVICE", company=company)
    return VigilClient(server.address, timeout=60, api_key=key)


@pytest.fixture
def company() -> str:
    return f"sdk-{uuid.uuid4().hex[:10]}"


def test_folders_uploads_analyses_watch_and_wait(
    server: ServerThread, company: str, tmp_path: Path
) -> None:
    photos = [FACES / "obama.jpg", FACES / "obama2.jpg", FACES / "obama3.jpg"]
    progress: list[tuple[int, int | None]] = []
    with client_of(server, company) as client:
        folder = client.create_folder({"case": "sdk", "transaction_id": "t-1"})
        by_path = client.upload_media(
            folder.id, photos[0], tags=["photo_selfie"], progress=lambda *p: progress.append(p)
        )
        by_bytes = client.upload_media(folder.id, photos[1].read_bytes(), tags=["photo_selfie"])
        with photos[2].open("rb") as stream:
            by_file = client.upload_media(folder.id, stream, tags=["photo_selfie"])
        size = photos[0].stat().st_size
        assert progress[-1] == (size, size) and len(progress) == -(-size // (1024 * 1024))
        for media, photo in zip((by_path, by_bytes, by_file), photos, strict=True):
            assert media.sha256 == hashlib.sha256(photo.read_bytes()).hexdigest()
        assert (by_path.original_name, by_file.original_name) == ("obama.jpg", "obama3.jpg")

        [analysis] = client.create_analyses(folder.id, ["LIVENESS"])
        events = list(client.watch(folder.id))
        assert events[-1].final and events[-1].analysis.id == analysis.id
        done = client.wait(folder.id)  # already final: returns at once
        assert RESOLUTION(done.resolution) == "RESOLUTION_SUCCESS"
        assert [len(a.results) for a in done.analyses] == [3]

        assert [f.id for f in client.list_folders({"case": "sdk"})] == [folder.id]
        assert list(client.list_folders({"case": "other"})) == []
        later = datetime.now(UTC) + timedelta(minutes=5)
        assert list(client.list_folders(created_after=later)) == []
        assert len(list(client.list_folders(created_before=later, page_size=1))) == 1

        signed = client.get_verdict(folder.id)
        verdict = verify_verdict(signed.token, client.public_keys(), expected_folder=folder.id)
        assert (verdict.resolution, verdict.transaction_id) == ("SUCCESS", "t-1")

        deleted = client.delete_folder(folder.id)
        assert (deleted.media_deleted, deleted.analyses_deleted) == (3, 1)
        with pytest.raises(VigilRpcError) as missing:
            client.get_folder(folder.id)
        assert missing.value.code == "NOT_FOUND"


def test_submit_collections_and_webhooks(server: ServerThread, company: str) -> None:
    with client_of(server, company) as client:
        client.create_collection("staff")
        faces = client.add_person("staff", "obama", [FACES / "obama.jpg", FACES / "obama2.jpg"])
        assert [f.person_label for f in faces] == ["obama", "obama"]
        hits = client.search("staff", FACES / "obama3.jpg").hits
        assert hits[0].match and hits[0].face.person_label == "obama"
        assert not any(h.match for h in client.search("staff", FACES / "biden.jpg").hits)
        client.remove_face("staff", faces[0].id)
        assert len(client.search("staff", FACES / "obama3.jpg").hits) == 1

        folder = client.submit(
            [(FACES / "obama.jpg", ["photo_selfie"]), FACES / "obama2.jpg"],
            [
                "LIVENESS",
                folders_pb2.AnalysisRequest(
                    type=folders_pb2.ANALYSIS_TYPE_BLACKLIST, collection="staff"
                ),
            ],
            meta={"case": "submit"},
        )
        assert len(folder.media) == 2
        done = client.wait(folder.id, timeout=120)
        kinds = {folders_pb2.AnalysisType.Name(a.type): a for a in done.analyses}
        assert RESOLUTION(kinds["ANALYSIS_TYPE_LIVENESS"].resolution) == "RESOLUTION_SUCCESS"
        # obama is on the watch list: the blacklist analysis does not pass
        assert RESOLUTION(kinds["ANALYSIS_TYPE_BLACKLIST"].resolution) != "RESOLUTION_SUCCESS"

        hook = client.create_webhook("http://127.0.0.1:9/hook", folder_id=folder.id)
        assert hook.secret.startswith("whsec_") and hook.folder_id == folder.id
        client.delete_webhook(hook.id)
        assert client.delete_collection("staff") == 1


def test_a_challenge_answered_with_a_video_file(
    server: ServerThread, company: str, tmp_path: Path
) -> None:
    video = tmp_path / "still.mp4"  # a photo filmed still: no gesture is made
    video.write_bytes(encode(motion_frames(FACES / "obama.jpg", 45, 480, 640, seed=3)))
    with client_of(server, company) as client:
        challenge = client.create_challenge(count=2, allowed=["SMILE", "TURN_LEFT", "TURN_RIGHT"])
        assert len(challenge.gestures) == 2 and challenge.nonce
        answer = client.answer_challenge(challenge.id, video)
        assert not answer.passed and answer.resolution == "DECLINED"
        jwks = client.public_keys()
    claims = verify_challenge_verdict(
        answer.verdict_token, jwks, expected_challenge=challenge.id, expected_nonce=challenge.nonce
    )
    assert (claims.challenge, claims.resolution) == (challenge.id, "DECLINED")
    assert len(claims.gestures) == 2 and claims.frames_sha256
    with pytest.raises(VerdictError) as wrong:
        verify_challenge_verdict(answer.verdict_token, jwks, expected_nonce="another")
    assert wrong.value.reason == "WRONG_NONCE"
    with pytest.raises(VerdictError) as not_a_folder_verdict:
        verify_verdict(answer.verdict_token, jwks)
    assert not_a_folder_verdict.value.reason == "TYPE"


def test_the_asyncio_client(server: ServerThread, company: str) -> None:
    key = server.new_key("SERVICE", company=company)
    progress: list[tuple[int, int | None]] = []

    async def scenario() -> tuple[str, list[str], list[bool], int]:
        async with AsyncVigilClient(server.address, timeout=60, api_key=key) as client:
            folder = await client.create_folder({"case": "aio"})
            data = (FACES / "obama.jpg").read_bytes()
            await client.upload_media(
                folder.id,
                io.BytesIO(data),
                tags=["photo_selfie"],
                progress=lambda *p: progress.append(p),
            )
            await client.create_analyses(folder.id, ["LIVENESS"])
            finals = [event.final async for event in client.watch(folder.id)]
            done = await client.wait(folder.id)
            listed = [f.id async for f in client.list_folders({"case": "aio"})]
            await client.create_collection("aio")
            await client.add_person("aio", "obama", [data])
            hits = (await client.search("aio", FACES / "obama2.jpg")).hits
            return RESOLUTION(done.resolution), [*listed, folder.id], finals, len(hits)

    resolution, listed, finals, hits = asyncio.run(scenario())
    assert resolution == "RESOLUTION_SUCCESS"
    assert listed[0] == listed[1] and finals[-1] and hits == 1
    size = (FACES / "obama.jpg").stat().st_size
    assert progress[-1] == (size, size)


# ---- retry policy (mechanics: a scripted server) ------------------------------------------------


class Flaky(grpc.GenericRpcHandler):
    """Answers every call UNAVAILABLE ``failures`` times (per method), then with an empty reply."""

    def __init__(self, failures: int, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        self.failures, self.code = failures, code
        self.attempts: dict[str, int] = {}

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[bytes, bytes]:
        method = str(details.method)

        def answer(request: bytes, context: grpc.ServicerContext) -> bytes:
            self.attempts[method] = self.attempts.get(method, 0) + 1
            if self.attempts[method] <= self.failures:
                context.abort(self.code, "scripted failure")
            return b""

        return grpc.unary_unary_rpc_method_handler(answer)


def flaky_server(handler: Flaky) -> tuple[grpc.Server, str]:
    running = grpc.server(futures.ThreadPoolExecutor(2), handlers=[handler])
    port = running.add_insecure_port("127.0.0.1:0")
    running.start()
    return running, f"127.0.0.1:{port}"


def attempts(
    failures: int, call: Any, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
) -> tuple[dict[str, int], str]:
    handler = Flaky(failures, code)
    running, address = flaky_server(handler)
    outcome = "OK"
    try:
        with VigilClient(connection=Connection(address), timeout=10) as client:
            call(client)
    except VigilRpcError as error:
        outcome = error.code
    finally:
        running.stop(None)
    return handler.attempts, outcome


def test_idempotent_calls_are_retried_on_unavailable_only() -> None:
    info = "/vigil.v1.Instant/GetServerInfo"
    assert attempts(2, lambda c: c.server_info()) == ({info: 3}, "OK")
    assert attempts(9, lambda c: c.server_info()) == ({info: 4}, "UNAVAILABLE")  # 4 at most
    assert attempts(1, lambda c: c.get_folder("f"), grpc.StatusCode.INTERNAL) == (
        {"/vigil.v1.Folders/GetFolder": 1},
        "INTERNAL",
    )
    # creating is not idempotent: one attempt
    assert attempts(1, lambda c: c.create_folder()) == (
        {"/vigil.v1.Folders/CreateFolder": 1},
        "UNAVAILABLE",
    )
