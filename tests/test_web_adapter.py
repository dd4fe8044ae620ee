"""The Web Adapter over HTTP (Starlette's TestClient): origins, limits, expiry, CSP and what a
SAFE answer holds. The service behind it is a fake that records its calls (these are the adapter's
mechanics; the real service and a real browser are in tests/test_web_browser.py)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

pytest.importorskip("starlette", reason="starlette (the web extra) is missing")
pytest.importorskip("httpx2", reason="httpx2 (the dev extra) is missing")

from starlette.testclient import TestClient

from vigil.client.errors import VigilRpcError
from vigil.v1 import challenges_pb2, common_pb2, folders_pb2
from vigil.web.app import CSP, create_app
from vigil.web.service import AnalysisTimeout, Capture
from vigil.web.settings import WebSettings

OWN = "http://testserver"
PARTNER = "https://shop.example"
SECRET = "vk_secret_service_credential"


class FakeService:
    """Answers as vigil would for a live face (score 0.93) unless told to refuse the video."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.folders: dict[str, dict[str, str]] = {}
        self.refuse_video = False
        self.late = False

    async def create_folder(self, meta: dict[str, str]) -> str:
        folder_id = f"f{len(self.folders)}"
        self.folders[folder_id] = dict(meta)
        self.calls.append(("create_folder", meta))
        return folder_id

    async def create_challenge(self, gestures: list[str], count: int) -> challenges_pb2.Challenge:
        self.calls.append(("create_challenge", (gestures, count)))
        return challenges_pb2.Challenge(
            id="c1", gestures=[challenges_pb2.GESTURE_SMILE], gesture_window_ms=5000
        )

    async def upload(
        self,
        folder_id: str,
        video: bytes,
        tags: list[str],
        meta: dict[str, str],
        kind: str,
        capture: Capture,
    ) -> str:
        self.calls.append(("upload", (folder_id, tags, meta, kind, capture)))
        if self.refuse_video:
            raise VigilRpcError("INVALID_ARGUMENT", "not a video vigil can read")
        return "m1"

    async def liveness(self, folder_id: str, wait_s: float) -> folders_pb2.Analysis:
        self.calls.append(("liveness", folder_id))
        if self.late:
            raise AnalysisTimeout("a1")
        return folders_pb2.Analysis(
            id="a1",
            folder_id=folder_id,
            type=folders_pb2.ANALYSIS_TYPE_LIVENESS,
            state=folders_pb2.ANALYSIS_STATE_FINISHED,
            resolution=folders_pb2.RESOLUTION_SUCCESS,
            thresholds={"liveness": 0.5},
            results=[
                folders_pb2.MediaResult(
                    media_id="m1",
                    resolution=folders_pb2.RESOLUTION_SUCCESS,
                    score=0.93,
                    face=common_pb2.Face(box=common_pb2.BoundingBox(x=1, y=2, width=3, height=4)),
                )
            ],
        )

    async def set_meta(self, folder_id: str, values: dict[str, str]) -> None:
        self.folders[folder_id].update(values)

    async def close(self) -> None:
        pass


def client(**overrides: Any) -> tuple[TestClient, FakeService]:
    values: dict[str, Any] = {"api_key": SECRET, "allowed_origins": [PARTNER]}
    values.update(overrides)
    service = FakeService()
    app = create_app(WebSettings(**values), service)  # type: ignore[arg-type]
    return TestClient(app), service


def open_session(http: TestClient, origin: str = OWN, **body: Any) -> Any:
    body.setdefault("meta", {"transaction_id": "t-1"})
    return http.post("/api/sessions", json=body, headers={"Origin": origin})


def upload(
    http: TestClient, session: str, origin: str = OWN, video: bytes = b"\x1a\x45\xdf\xa3" * 64
) -> Any:
    capture = {"camera_label": "FaceTime HD", "devices": ["FaceTime HD"], "user_agent": "UA"}
    return http.post(
        f"/api/sessions/{session}/capture",
        headers={"Origin": origin, "X-Vigil-Session": session},
        files={"video": ("capture.webm", video, "video/webm")},
        data={"capture": json.dumps(capture)},
    )


def test_a_safe_answer_is_the_resolution_alone() -> None:
    http, service = client()
    opened = open_session(http)
    assert opened.status_code == 201
    answer = upload(http, opened.json()["session_id"])
    assert answer.status_code == 200 and answer.json() == {"status": "SUCCESS"}
    text = answer.text + opened.text
    for leaked in (SECRET, "0.93", "score", "box", "threshold", "f0"):
        assert leaked not in text, leaked
    # the video went to the folder with its capture metadata, then one LIVENESS analysis; the
    # folder's meta holds the page's metadata and the origin, no result
    (_, (folder_id, tags, meta, kind, capture)), *_ = [c for c in service.calls if c[0] == "upload"]
    assert (folder_id, tags, kind) == ("f0", ["video_selfie_blank"], "video/webm")
    assert capture.camera_label == "FaceTime HD" and meta["capture_user_agent"] == "UA"
    assert [c for c in service.calls if c[0] == "liveness"] == [("liveness", "f0")]
    assert service.folders["f0"] == {"transaction_id": "t-1", "web_origin": OWN}


def test_full_mode_adds_the_result_but_never_the_credential() -> None:
    http, _ = client(result_mode="FULL")
    answer = upload(http, open_session(http).json()["session_id"]).json()
    assert answer["status"] == "SUCCESS"
    assert answer["result"]["results"][0]["score"] == pytest.approx(0.93)
    assert SECRET not in json.dumps(answer)


def test_every_response_carries_the_policy() -> None:
    http, _ = client(demo=True)
    for path in ("/plugin/vigil-web.js", "/demo", "/healthz"):
        response = http.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-security-policy"] == CSP
        assert response.headers["x-content-type-options"] == "nosniff"
    assert "'unsafe-inline'" not in CSP and "frame-ancestors 'none'" in CSP
    # the demo is off unless asked for
    assert client()[0].get("/demo").status_code == 404


def test_origins_are_allow_listed() -> None:
    http, service = client()
    assert open_session(http, "https://evil.example").status_code == 403
    assert http.post("/api/sessions", json={"meta": {}}).status_code == 403  # no Origin
    assert not service.folders
    partner = open_session(http, PARTNER)
    assert partner.status_code == 201
    assert partner.headers["access-control-allow-origin"] == PARTNER
    preflight = http.options("/api/sessions", headers={"Origin": "https://evil.example"})
    assert preflight.status_code == 403 and "access-control-allow-origin" not in preflight.headers
    # the capture must come from the origin that opened the session
    assert upload(http, partner.json()["session_id"], OWN).status_code == 403


def test_one_upload_per_session_and_unknown_sessions() -> None:
    http, service = client()
    session = open_session(http).json()["session_id"]
    assert upload(http, session).status_code == 200
    replay = upload(http, session)
    assert replay.status_code == 409 and "already" in replay.json()["error"]
    # the replay reached nothing: one video, one analysis
    assert [c[0] for c in service.calls].count("upload") == 1
    assert [c[0] for c in service.calls].count("liveness") == 1
    assert upload(http, "not-a-session").status_code == 404
    wrong = http.post(
        f"/api/sessions/{session}/capture", headers={"Origin": OWN, "X-Vigil-Session": "guess"}
    )
    assert wrong.status_code == 404


def test_sessions_expire() -> None:
    http, _ = client(session_ttl_s=0.2)
    session = open_session(http).json()["session_id"]
    time.sleep(0.3)
    expired = upload(http, session)
    assert expired.status_code == 410 and "expired" in expired.json()["error"]


def test_limits() -> None:
    http, _ = client(max_video_bytes=1000, sessions_per_minute=2, max_meta_keys=2)
    assert open_session(http, meta={"a": "1", "b": "2", "c": "3"}).status_code == 400
    session = open_session(http).json()["session_id"]
    assert upload(http, session, video=b"\0" * 2000).status_code == 413
    third = open_session(http)
    assert third.status_code == 429 and "minute" in third.json()["error"]
    http2, _ = client()
    assert open_session(http2, meta={"web_resolution": "SUCCESS"}).status_code == 400
    assert open_session(http2, meta={"k": 5}).status_code == 400


def test_a_service_refusal_becomes_a_precise_answer() -> None:
    http, service = client()
    service.refuse_video = True
    answer = upload(http, open_session(http).json()["session_id"])
    assert answer.status_code == 400 and answer.json() == {"error": "not a video vigil can read"}
    assert not [c for c in service.calls if c[0] == "liveness"]


def test_an_analysis_not_final_in_time_is_a_504() -> None:
    http, service = client(analysis_wait_s=0.1)
    service.late = True
    answer = upload(http, open_session(http).json()["session_id"])
    assert answer.status_code == 504 and "not finished" in answer.json()["error"]


def test_gestures_come_from_the_service() -> None:
    http, service = client(active=True, gestures=["smile", "move_closer"])
    opened = open_session(http).json()
    assert opened["gestures"] == ["smile"] and opened["gesture_window_ms"] == 5000
    assert ("create_challenge", (["smile", "move_closer"], 2)) in service.calls
    # a page may ask for gestures where the adapter does not require them
    http, service = client()
    assert open_session(http, gestures=True).json()["gestures"] == ["smile"]
    assert open_session(http).json()["gestures"] == []
