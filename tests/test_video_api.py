"""Video liveness through the real server: the Instant API on videos made from the real photos,
the live stream (verdict before the end, no face, a client that disconnects), replay and
injection signals, bad videos, and the persistent analyses on a video."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import TypedDict, Unpack

import cv2
import grpc
import numpy as np
import pytest

from tests.conftest import FACES, SPOOF, ServerThread
from tests.videos import audio_only_mp4, encode, huge_mp4, motion_frames, ten_hours_mp4
from vigil.server.video import replay_memory_for
from vigil.v1 import common_pb2, instant_pb2, instant_pb2_grpc, video_pb2

FRAMES = 36  # 2.4 s at 15 fps, 480×640 portrait

Stub = instant_pb2_grpc.InstantStub
Clips = dict[str, list[np.ndarray]]


class Capture(TypedDict, total=False):
    """The capture metadata a test sends with a video."""

    camera_label: str
    frame_timestamps_ms: list[float]


@pytest.fixture(scope="module")
def clips() -> Clips:
    obama = motion_frames(FACES / "obama.jpg", FRAMES, seed=1)
    biden = motion_frames(FACES / "biden.jpg", FRAMES, seed=2)
    return {
        "live": obama,
        "print": motion_frames(SPOOF / "image_F1.jpg", FRAMES, seed=3),
        "screen": motion_frames(SPOOF / "image_F2.jpg", FRAMES, seed=4),
        "switch": obama[: FRAMES // 2] + biden[FRAMES // 2 :],
        "empty": [np.full((640, 480, 3), 60 + i, np.uint8) for i in range(FRAMES)],
    }


@pytest.fixture(scope="module")
def videos(clips: Clips) -> dict[str, bytes]:
    return {name: encode(frames) for name, frames in clips.items()}


@pytest.fixture(autouse=True)
def fresh_replay_memory(server: ServerThread) -> None:
    """Every test starts with a replica that has seen nothing (replay is tested on purpose)."""
    replay_memory_for(server.vigil.engine).clear()


def check(stub: Stub, data: bytes, **capture: Unpack[Capture]) -> instant_pb2.LivenessResponse:
    request = instant_pb2.LivenessRequest(
        image=common_pb2.Media(data=data), capture=video_pb2.CaptureInfo(**capture)
    )
    return stub.CheckLiveness(request, timeout=60)


def signals(reply: instant_pb2.LivenessResponse) -> dict[str, video_pb2.LivenessSignal]:
    return {s.name: s for s in reply.signals}


def test_live_video_is_live_with_detail_and_best_shot(stub: Stub, videos: dict[str, bytes]) -> None:
    reply = check(stub, videos["live"])
    assert reply.live and reply.score > 0.9 and reply.aggregation == "interquartile_mean"
    video = reply.video
    assert (video.content_type, video.codec, video.width, video.height) == (
        "video/mp4",
        "h264",
        480,
        640,
    )
    assert video.decoded_frames == FRAMES and video.sampled_frames == len(reply.frames) == 12
    assert all(f.is_subject and f.score > 0.5 and f.quality.value > 0 for f in reply.frames)
    assert {m.model.name for m in reply.models} == {"minifasnet-v2", "minifasnet-v1se"}
    assert not any(s.triggered for s in reply.signals)
    assert set(signals(reply)) == {
        "subject_changed",
        "replay_media",
        "replay_frames",
        "virtual_camera",
        "duplicate_frames",
    }
    best = reply.best_shot
    image = cv2.imdecode(np.frombuffer(best.jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    assert image.shape == (640, 480, 3) and (best.width, best.height) == (480, 640)
    assert best.frame_index in {f.index for f in reply.frames}
    assert reply.face.box.width > 100 and best.quality > 0


@pytest.mark.parametrize("name", ["print", "screen"])
def test_spoof_sample_videos_are_spoof(stub: Stub, videos: dict[str, bytes], name: str) -> None:
    reply = check(stub, videos[name])
    assert not reply.live and reply.score < 0.5, f"{name}: score {reply.score:.3f}"
    assert not any(s.declines for s in reply.signals)  # judged by the models, not a signal


def test_webm_and_rotated_mov_are_read(stub: Stub, clips: Clips) -> None:
    webm = check(stub, encode(clips["live"], "webm", "libvpx-vp9"))
    assert webm.live and webm.video.content_type == "video/webm" and webm.video.codec == "vp9"
    sideways = [np.ascontiguousarray(np.rot90(f)) for f in clips["live"]]
    replay_memory_for_all_clear = check(
        stub, encode(sideways, "mov", rotation=-90), camera_label="x"
    )
    mov = replay_memory_for_all_clear
    assert mov.video.content_type == "video/quicktime" and mov.video.rotation == 90
    assert (mov.video.width, mov.video.height) == (480, 640)
    # the same frames as the WebM, re-encoded: a replay of frames
    assert signals(mov)["replay_frames"].triggered and not mov.live


def test_person_switch_is_declined(stub: Stub, videos: dict[str, bytes]) -> None:
    reply = check(stub, videos["switch"])
    changed = signals(reply)["subject_changed"]
    assert changed.triggered and changed.declines and not reply.live
    assert reply.score > 0.5  # both faces are live: the signal declines it
    subjects = [f.is_subject for f in reply.frames]
    assert 3 <= subjects.count(False) <= 9


def test_resubmitted_video_is_flagged_as_replay(stub: Stub, videos: dict[str, bytes]) -> None:
    first = check(stub, videos["live"])
    assert first.live and not signals(first)["replay_media"].triggered
    again = check(stub, videos["live"])
    replay = signals(again)
    assert replay["replay_media"].triggered and replay["replay_media"].declines
    assert replay["replay_frames"].triggered and not again.live


def test_capture_metadata_signals(stub: Stub, videos: dict[str, bytes]) -> None:
    regular = [i * 1000 / 15 for i in range(FRAMES)]
    reply = check(
        stub, videos["live"], camera_label="OBS Virtual Camera", frame_timestamps_ms=regular
    )
    found = signals(reply)
    assert found["virtual_camera"].declines and not reply.live
    assert found["timing_regular"].triggered and not found["timing_regular"].declines
    assert "obs virtual" in found["virtual_camera"].detail


def test_video_without_a_face_is_no_face(stub: Stub, videos: dict[str, bytes]) -> None:
    with pytest.raises(grpc.RpcError) as info:
        check(stub, videos["empty"])
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no face in any of the 12 sampled frames" in (info.value.details() or "")


BAD: dict[str, tuple[Callable[[bytes], bytes], grpc.StatusCode, str]] = {
    "zero bytes": (lambda live: b"", grpc.StatusCode.INVALID_ARGUMENT, "image.data is required"),
    "truncated MP4": (
        lambda live: live[: len(live) // 2],
        grpc.StatusCode.INVALID_ARGUMENT,
        "corrupt or truncated MP4",
    ),
    "no video stream": (
        lambda live: audio_only_mp4(),
        grpc.StatusCode.INVALID_ARGUMENT,
        "no video stream (audio)",
    ),
    "10-hour duration": (
        lambda live: ten_hours_mp4(),
        grpc.StatusCode.INVALID_ARGUMENT,
        "declares 36001.0 s",
    ),
    "8K": (lambda live: huge_mp4(), grpc.StatusCode.INVALID_ARGUMENT, "7680×4320"),
    "ftyp then garbage": (
        lambda live: live[:32] + bytes(range(256)) * 40,
        grpc.StatusCode.INVALID_ARGUMENT,
        "corrupt or truncated MP4",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_videos_get_a_precise_status(stub: Stub, videos: dict[str, bytes], case: str) -> None:
    make, code, words = BAD[case]
    with pytest.raises(grpc.RpcError) as info:
        check(stub, make(videos["live"]))
    assert info.value.code() == code and words in (info.value.details() or "")
    assert stub.GetServerInfo(instant_pb2.GetServerInfoRequest(), timeout=5).version


def test_extension_and_declared_type_are_not_trusted(stub: Stub, clips: Clips) -> None:
    webm = encode(clips["live"][:20], "webm", "libvpx")  # "selfie.mp4" that is really WebM/VP8
    request = instant_pb2.LivenessRequest(
        image=common_pb2.Media(data=webm, content_type="video/mp4")
    )
    reply = stub.CheckLiveness(request, timeout=60)
    assert reply.video.content_type == "video/webm" and reply.video.codec == "vp8" and reply.live


# ---- the live stream --------------------------------------------------------------------------


def jpeg(frame: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def play(
    frames: list[np.ndarray], fps: float = 15.0, sent: list[int] | None = None
) -> Iterator[video_pb2.StreamLivenessRequest]:
    """The stream's messages at the camera's pace, stamped with a camera clock's capture times
    (the nominal time plus a sensor's jitter of about a millisecond)."""
    capture = video_pb2.CaptureInfo(camera_label="FaceTime HD Camera")
    yield video_pb2.StreamLivenessRequest(start=video_pb2.StreamStart(capture=capture))
    jitter = np.random.default_rng(len(frames)).normal(0.0, 1.0, len(frames))
    started = time.monotonic()
    for i, frame in enumerate(frames):
        time.sleep(max(0.0, started + i / fps - time.monotonic()))
        if sent is not None:
            sent.append(i)
        stamp = (started + i / fps) * 1000 + jitter[i]
        message = video_pb2.StreamFrame(encoded=jpeg(frame), capture_time_ms=stamp)
        yield video_pb2.StreamLivenessRequest(frame=message)


def test_stream_gives_a_verdict_before_the_video_ends(stub: Stub, clips: Clips) -> None:
    sent: list[int] = []
    updates = list(stub.StreamLiveness(play(clips["live"], sent=sent), timeout=60))
    final = updates[-1]
    assert final.final and sum(u.final for u in updates) == 1
    assert final.outcome == video_pb2.STREAM_OUTCOME_LIVE, final.reason
    assert final.frames_received < FRAMES and len(sent) < FRAMES  # the camera was still running
    assert final.frames_with_face >= 8 and final.score > 0.5 and final.best_shot.jpeg
    assert len(final.frames) == final.frames_processed
    assert final.frames_processed + final.frames_skipped <= final.frames_received
    running = updates[:-1]
    assert running and all(u.outcome == video_pb2.STREAM_OUTCOME_PENDING for u in running)
    assert [u.frames_processed for u in running] == sorted(u.frames_processed for u in running)
    assert not [s for s in final.signals if s.triggered], final.signals


def test_stream_of_a_spoof_is_spoof(stub: Stub, clips: Clips) -> None:
    final = list(stub.StreamLiveness(play(clips["screen"]), timeout=60))[-1]
    assert final.outcome == video_pb2.STREAM_OUTCOME_SPOOF and final.score < 0.5


def test_stream_without_a_face_ends_clearly(stub: Stub, clips: Clips) -> None:
    started = time.monotonic()
    updates = list(stub.StreamLiveness(play(clips["empty"], fps=30), timeout=60))
    final = updates[-1]
    assert final.final and final.outcome == video_pb2.STREAM_OUTCOME_NO_FACE
    assert final.frames_with_face == 0 and final.reason
    assert time.monotonic() - started < 10


def test_stream_ended_by_the_client_early_is_inconclusive(stub: Stub, clips: Clips) -> None:
    final = list(stub.StreamLiveness(play(clips["live"][:2]), timeout=60))[-1]
    assert final.outcome == video_pb2.STREAM_OUTCOME_INCONCLUSIVE
    assert "the client ended the stream" in final.reason


def test_stream_accepts_raw_frames_and_refuses_a_bad_one(stub: Stub, clips: Clips) -> None:
    def raw(frames: list[np.ndarray]) -> Iterator[video_pb2.StreamLivenessRequest]:
        for i, frame in enumerate(frames):
            rgb = np.ascontiguousarray(frame[:, :, ::-1])
            pixels = video_pb2.RawFrame(
                data=rgb.tobytes(), width=480, height=640, format=video_pb2.RawFrame.FORMAT_RGB24
            )
            stamp = i * 66.7 + (i % 3) * 1.3
            yield video_pb2.StreamLivenessRequest(
                frame=video_pb2.StreamFrame(raw=pixels, capture_time_ms=stamp)
            )

    updates = list(stub.StreamLiveness(raw(clips["live"][:30]), timeout=60))
    assert updates[-1].outcome == video_pb2.STREAM_OUTCOME_LIVE
    bad = video_pb2.RawFrame(
        data=b"\0" * 10, width=480, height=640, format=video_pb2.RawFrame.FORMAT_BGR24
    )
    request = video_pb2.StreamLivenessRequest(frame=video_pb2.StreamFrame(raw=bad))
    with pytest.raises(grpc.RpcError) as info:
        list(stub.StreamLiveness(iter([request]), timeout=30))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "480×640×3 expected" in (info.value.details() or "")


def _task_count() -> int:
    return len(asyncio.all_tasks())


async def _count() -> int:
    return _task_count()


def test_client_disconnect_leaves_nothing_running(
    server: ServerThread, stub: Stub, clips: Clips
) -> None:
    baseline = server.call(_count)
    call = stub.StreamLiveness(play(clips["live"] * 4, fps=15), timeout=60)
    first = next(call)
    assert not first.final
    assert server.call(_count) > baseline  # the stream's handler and reader are running
    call.cancel()
    deadline = time.monotonic() + 10
    while server.call(_count) > baseline and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.call(_count) <= baseline
    assert stub.GetServerInfo(instant_pb2.GetServerInfoRequest(), timeout=5).version
