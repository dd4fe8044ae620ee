"""Persistent analyses on a video (both databases), and the command line on videos:
``vigil liveness VIDEO`` and ``vigil stream VIDEO`` against the session server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest

from tests.conftest import FACES, ROOT, Metadata, ServerThread
from tests.test_folders_api import BEST_SHOT, BIOMETRY, LIVENESS, run, upload
from tests.videos import encode, motion_frames
from vigil.server.video import replay_memory_for
from vigil.v1 import folders_pb2 as fp
from vigil.v1 import folders_pb2_grpc


@pytest.fixture(scope="module")
def selfie_video() -> bytes:
    return encode(motion_frames(FACES / "obama.jpg", 30, seed=11))


@pytest.fixture
def stub(api_channel: grpc.Channel) -> folders_pb2_grpc.FoldersStub:
    return folders_pb2_grpc.FoldersStub(api_channel)


def test_liveness_best_shot_and_biometry_on_a_video(
    api_server: ServerThread,
    stub: folders_pb2_grpc.FoldersStub,
    company: Metadata,
    selfie_video: bytes,
) -> None:
    replay_memory_for(api_server.vigil.engine).clear()
    folder = stub.CreateFolder(fp.CreateFolderRequest(meta={"tx": "video"}), metadata=company)
    photo = upload(
        stub, company, folder.id, (FACES / "obama2.jpg").read_bytes(), ["photo_id_front"]
    )
    video = upload(stub, company, folder.id, selfie_video, ["video_selfie_blank"])
    assert video.content_type == "video/mp4"
    results = run(stub, company, folder.id, LIVENESS, BEST_SHOT, BIOMETRY)

    live = results[fp.ANALYSIS_TYPE_LIVENESS]
    assert (live.state, live.resolution) == (fp.ANALYSIS_STATE_FINISHED, fp.RESOLUTION_SUCCESS)
    (result,) = live.results
    assert result.media_id == video.id and result.score > 0.9
    assert result.video.sampled_frames == len(result.frames) == 12
    assert result.aggregation == "interquartile_mean" and result.face.box.width > 100
    assert {s.name for s in result.signals} >= {"subject_changed", "replay_media"}
    assert not any(s.triggered for s in result.signals)

    best = results[fp.ANALYSIS_TYPE_BEST_SHOT]
    assert best.resolution == fp.RESOLUTION_SUCCESS and best.decisive.media_id == video.id
    shot = stub.GetMedia(
        fp.GetMediaRequest(media_id=best.decisive.output_media_id), metadata=company
    )
    assert list(shot.tags) == ["best_shot"] and shot.source_media_id == video.id
    assert shot.content_type == "image/jpeg"
    chunks = stub.DownloadMedia(fp.DownloadMediaRequest(media_id=shot.id), metadata=company)
    data = b"".join(c.data for c in chunks)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    assert image.shape == (640, 480, 3) and len(data) == shot.size

    bio = results[fp.ANALYSIS_TYPE_BIOMETRY]
    assert bio.resolution == fp.RESOLUTION_SUCCESS, bio.error
    assert {bio.decisive.media_id, bio.decisive.other_media_id} == {video.id, photo.id}
    assert bio.decisive.distance < 0.6

    # the same video in another folder: a replay of this replica's media
    other = stub.CreateFolder(fp.CreateFolderRequest(), metadata=company)
    upload(stub, company, other.id, selfie_video, ["video_selfie_blank"])
    again = run(stub, company, other.id, LIVENESS)[fp.ANALYSIS_TYPE_LIVENESS]
    assert again.resolution == fp.RESOLUTION_DECLINED
    assert "replay_media" in again.results[0].error


@pytest.fixture
def cli_env(server: ServerThread, models_dir: Path) -> dict[str, str]:
    values = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    values.update(VIGIL_API_KEY=server.admin_key, VIGIL_SERVER=server.address)
    return values


def _vigil(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vigil.server.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=90,
    )


def test_cli_liveness_and_stream_on_a_video(
    server: ServerThread, cli_env: dict[str, str], tmp_path: Path
) -> None:
    replay_memory_for(server.vigil.engine).clear()
    path = tmp_path / "selfie.mp4"
    path.write_bytes(encode(motion_frames(FACES / "biden.jpg", 36, seed=12)))
    done = _vigil("liveness", str(path), env=cli_env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("LIVE score=") and "video 480x640 h264" in done.stdout
    replay_memory_for(server.vigil.engine).clear()
    done = _vigil("stream", str(path), "--json", env=cli_env)
    assert done.returncode == 0, done.stderr
    updates = [json.loads(line) for line in done.stdout.splitlines()]
    final = updates[-1]
    assert final["final"] and final["outcome"] == "LIVE", final["reason"]
    assert final["frames_received"] < 36 and len(updates) > 1
    done = _vigil("stream", str(tmp_path / "missing.mp4"), env=cli_env)
    assert done.returncode == 2
