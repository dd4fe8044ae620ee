"""Capture metadata where the Web Adapter now decides: stored with an uploaded video and read by
its persistent LIVENESS analysis, and sent with a challenge answer. Real videos made from the real
photos, the real server and models (SQLite): a camera label naming a virtual camera declines
through the same virtual-camera signal as the Instant API's CaptureInfo; a camera's own passes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.conftest import FACES, Metadata, ServerThread
from tests.gesture_videos import Still, analyse_still
from tests.test_active_liveness import create, order, performing
from tests.test_folders_api import LIVENESS, run
from tests.videos import encode, motion_frames
from vigil.v1 import challenges_pb2, challenges_pb2_grpc, common_pb2, folders_pb2_grpc, video_pb2
from vigil.v1 import folders_pb2 as fp

VIRTUAL = video_pb2.CaptureInfo(camera_label="OBS Virtual Camera", device="Windows 11")
CAMERA = video_pb2.CaptureInfo(camera_label="Integrated Camera (04f2:b6dd)", device="Windows 11")


@pytest.fixture
def folders(server: ServerThread) -> Iterator[folders_pb2_grpc.FoldersStub]:
    with server.channel() as channel:
        yield folders_pb2_grpc.FoldersStub(channel)


def upload(
    stub: folders_pb2_grpc.FoldersStub,
    md: Metadata,
    folder_id: str,
    video: bytes,
    capture: video_pb2.CaptureInfo | None = None,
    meta: dict[str, str] | None = None,
) -> fp.MediaInfo:
    header = fp.UploadMediaHeader(
        folder_id=folder_id, tags=["video_selfie_blank"], meta=meta or {}, capture=capture
    )
    parts = [fp.UploadMediaRequest(header=header), fp.UploadMediaRequest(chunk=video)]
    return stub.UploadMedia(iter(parts), metadata=md, timeout=60)


def test_a_liveness_analysis_reads_the_capture_stored_with_the_video(
    server: ServerThread, folders: folders_pb2_grpc.FoldersStub, company: Metadata
) -> None:
    for capture, seed, expected in ((CAMERA, 31, "SUCCESS"), (VIRTUAL, 32, "DECLINED")):
        video = encode(motion_frames(FACES / "obama.jpg", 30, seed=seed))
        folder = folders.CreateFolder(fp.CreateFolderRequest(), metadata=company)
        media = upload(folders, company, folder.id, video, capture)
        # kept with the media, readable by the backend
        kept = json.loads(media.meta["vigil_capture"])
        assert kept["camera_label"] == capture.camera_label and kept["device"] == "Windows 11"
        live = run(folders, company, folder.id, LIVENESS)[fp.ANALYSIS_TYPE_LIVENESS]
        assert fp.Resolution.Name(live.resolution) == f"RESOLUTION_{expected}", live.results
        (result,) = live.results
        virtual = {s.name: s for s in result.signals}["virtual_camera"]
        assert result.score > 0.9  # the face itself is live either way
        if expected == "DECLINED":
            assert virtual.triggered and virtual.declines and "obs virtual" in virtual.detail
            assert "virtual_camera" in result.error
        else:
            assert not virtual.triggered and not result.error


def test_the_capture_key_is_the_servers(
    server: ServerThread, folders: folders_pb2_grpc.FoldersStub, company: Metadata
) -> None:
    folder = folders.CreateFolder(fp.CreateFolderRequest(), metadata=company)
    video = encode(motion_frames(FACES / "obama.jpg", 8, seed=33))
    with pytest.raises(grpc.RpcError) as refused:
        upload(folders, company, folder.id, video, meta={"vigil_capture": '{"camera_label": ""}'})
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "header.capture" in str(refused.value.details())


@pytest.fixture(scope="module")
def obama(models_dir: Path) -> Still:
    return analyse_still(FACES / "obama.jpg", models_dir)


@pytest.fixture(scope="module")
def challenges(server: ServerThread) -> Iterator[challenges_pb2_grpc.ChallengesStub]:
    key = server.new_key("SERVICE", company="web-capture-signals")
    with server.channel(key) as channel:
        yield challenges_pb2_grpc.ChallengesStub(channel)


def test_a_challenge_answered_from_a_virtual_camera_is_declined(
    challenges: challenges_pb2_grpc.ChallengesStub, obama: Still
) -> None:
    G = challenges_pb2
    for capture, seed, passes in ((VIRTUAL, 41, False), (CAMERA, 42, True)):
        challenge = create(challenges, G.GESTURE_SMILE, G.GESTURE_MOVE_CLOSER)
        video = performing(obama, order(challenge), seed=seed)
        verdict = challenges.AnswerChallenge(
            G.AnswerChallengeRequest(
                challenge_id=challenge.id, video=common_pb2.Media(data=video), capture=capture
            ),
            timeout=120,
        )
        checks = {c.name: c for c in verdict.checks}
        # the gestures were performed; only the capture's label decides
        assert all(g.passed for g in verdict.gestures), verdict
        assert checks["virtual_camera"].passed is passes, checks["virtual_camera"]
        assert verdict.passed is passes and verdict.resolution == (
            "SUCCESS" if passes else "DECLINED"
        )
        # the backend reads the verdict from the service
        read = challenges.GetChallenge(G.GetChallengeRequest(challenge_id=challenge.id))
        assert read.answered and read.resolution == verdict.resolution
