"""The video decoder (limits, sampling, rotation, bad inputs) and the pure functions behind a
video verdict (aggregation, identity tracking, timing and virtual-camera checks, replay memory),
on videos encoded here from the real photos."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest

from tests.conftest import FACES, read
from tests.videos import (
    audio_only_mp4,
    encode,
    huge_mp4,
    motion_frames,
    ten_hours_mp4,
)
from vigil.inference.errors import InvalidMedia, MediaTooLarge, UnsupportedMedia
from vigil.inference.video.decode import (
    VideoLimits,
    VideoSampling,
    decode_video,
    decode_video_chunks,
)
from vigil.inference.video.replay import ReplayMemory, frame_hash
from vigil.inference.video.signals import (
    SignalPolicy,
    TimingCheck,
    capture_signals,
    identity_check,
    interquartile_mean,
    subject_changed,
    timing_check,
    virtual_camera,
)

LIMITS = VideoLimits()
SAMPLING = VideoSampling(count=8)


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    return motion_frames(FACES / "obama.jpg", 30, width=240, height=320, seed=3)


@pytest.fixture(scope="module")
def mp4(frames: list[np.ndarray]) -> bytes:
    return encode(frames, fps=15)


@pytest.mark.parametrize(
    ("fmt", "codec", "content_type"),
    [
        ("mp4", "libx264", "video/mp4"),
        ("mov", "libx264", "video/quicktime"),
        ("webm", "libvpx", "video/webm"),
        ("webm", "libvpx-vp9", "video/webm"),
    ],
)
def test_containers_and_codecs_decode_and_sample_evenly(
    frames: list[np.ndarray], fmt: str, codec: str, content_type: str
) -> None:
    video = decode_video(encode(frames, fmt, codec), LIMITS, SAMPLING)
    info = video.info
    assert (info.content_type, info.width, info.height) == (content_type, 240, 320)
    assert info.decoded_frames == 30 and info.duration_s == pytest.approx(2.0, abs=0.1)
    assert len(video.frames) == 8
    # the middles of eight equal slices of 2 s: frames 1, 5, 9, ... 29 at 15 fps
    times = [f.time_s for f in video.frames]
    assert times == sorted(times) and times[0] < 0.2 and times[-1] > 1.8
    assert np.diff([f.index for f in video.frames]).min() >= 3
    assert all(f.image.bgr.shape == (320, 240, 3) for f in video.frames)
    assert video.duplicate_ratio == 0.0  # sensor noise: no two frames alike


def test_sampling_cost_is_bounded_by_count_or_fps(frames: list[np.ndarray]) -> None:
    data = encode(frames, fps=15)
    assert len(decode_video(data, LIMITS, VideoSampling(count=50)).frames) == 30
    assert len(decode_video(data, LIMITS, VideoSampling(count=12, fps=2.0)).frames) == 4
    assert len(decode_video(data, LIMITS, VideoSampling(count=3, fps=30.0)).frames) == 3


def test_rotation_metadata_is_honoured(frames: list[np.ndarray]) -> None:
    sideways = [np.ascontiguousarray(np.rot90(f)) for f in frames]  # stored 320×240
    video = decode_video(encode(sideways, rotation=-90), LIMITS, SAMPLING)
    assert (video.info.width, video.info.height, video.info.rotation) == (240, 320, 90)
    diff = np.abs(video.frames[0].image.bgr.astype(int) - frames[1].astype(int)).mean()
    assert diff < 12  # upright again (compression and noise aside)


def test_chunked_stream_decodes_the_same(mp4: bytes) -> None:
    chunks = [mp4[i : i + 4096] for i in range(0, len(mp4), 4096)]
    whole = decode_video(mp4, LIMITS, SAMPLING)
    streamed = decode_video_chunks(iter(chunks), LIMITS, SAMPLING)
    assert streamed.info.sha256 == whole.info.sha256
    assert [f.index for f in streamed.frames] == [f.index for f in whole.frames]


def test_chunked_stream_stops_at_the_byte_limit_and_on_a_non_video(mp4: bytes) -> None:
    def chunks() -> Iterator[bytes]:
        yield mp4[:1000]
        raise AssertionError("read past the limit")

    with pytest.raises(MediaTooLarge):
        decode_video_chunks(chunks(), VideoLimits(max_bytes=500), SAMPLING)
    jpeg = read(FACES / "obama.jpg")
    with pytest.raises(UnsupportedMedia):
        decode_video_chunks(iter([jpeg[:64], jpeg[64:]]), LIMITS, SAMPLING)


BAD: dict[str, tuple[Callable[[bytes], bytes], type[InvalidMedia], str]] = {
    "empty": (lambda mp4: b"", InvalidMedia, "empty"),
    "truncated": (lambda mp4: mp4[: len(mp4) // 2], InvalidMedia, "truncated"),
    "header only": (lambda mp4: mp4[:40], InvalidMedia, "corrupt or truncated"),
    "no video stream": (lambda mp4: audio_only_mp4(), InvalidMedia, "no video stream (audio)"),
    "10 hours": (lambda mp4: ten_hours_mp4(), MediaTooLarge, "declares 36001.0 s"),
    "8K": (lambda mp4: huge_mp4(), MediaTooLarge, "7680×4320"),
    "a JPEG": (lambda mp4: read(FACES / "obama.jpg"), UnsupportedMedia, "not a video"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_videos_are_refused_precisely(mp4: bytes, case: str) -> None:
    make, error, words = BAD[case]
    with pytest.raises(error) as info:
        decode_video(make(mp4), LIMITS, SAMPLING)
    assert words in info.value.message


def test_frame_limit_is_checked_on_the_header(mp4: bytes) -> None:
    with pytest.raises(MediaTooLarge, match="declares 30 frames"):
        decode_video(mp4, VideoLimits(max_frames=20), SAMPLING)


def test_duplicate_frames_are_counted() -> None:
    still = motion_frames(FACES / "obama.jpg", 1, width=240, height=320)[0]
    video = decode_video(encode([still] * 20), LIMITS, SAMPLING)
    assert video.duplicate_ratio > 0.5  # the encoder refreshes some; most decode identical


def test_interquartile_mean_ignores_a_quarter_of_outliers() -> None:
    assert interquartile_mean([0.9] * 6 + [0.0, 0.0]) == pytest.approx(0.9)
    assert interquartile_mean([0.1] * 6 + [1.0, 1.0]) == pytest.approx(0.1)
    assert interquartile_mean([0.2, 0.8]) == pytest.approx(0.5)
    assert interquartile_mean([]) == 0.0


def test_identity_check_finds_the_other_person() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 0.1, 128), rng.normal(0, 0.1, 128)
    same = [a + rng.normal(0, 0.01, 128) for _ in range(8)]
    check = identity_check(same, 0.6)
    assert check.outliers == 0 and not subject_changed(check)
    switched = same[:4] + [b + rng.normal(0, 0.01, 128) for _ in range(4)]
    check = identity_check(switched, 0.6)
    assert check.outliers == 4 and subject_changed(check)
    one_glitch = [*same, b]
    assert not subject_changed(identity_check(one_glitch, 0.6))


def judged(timestamps_ms: list[float]) -> TimingCheck:
    """``timing_check`` of enough timestamps to judge."""
    check = timing_check(timestamps_ms)
    assert check is not None
    return check


def test_timing_checks() -> None:
    assert timing_check([0.0, 33.3]) is None  # too few to judge
    exact = [i * 1000 / 30 for i in range(30)]
    assert judged(exact).regular
    rng = np.random.default_rng(1)
    camera = list(np.cumsum(33.3 + rng.normal(0, 1.5, 30)))
    check = timing_check(camera)
    assert check is not None and not check.regular and not check.irregular
    assert judged([*camera[:10], camera[9], *camera[10:]]).irregular
    gap = camera[:15] + [t + 2000 for t in camera[15:]]
    assert judged(gap).irregular


def test_virtual_cameras_and_emulators_are_named() -> None:
    assert virtual_camera("OBS Virtual Camera", "") == "obs virtual"
    assert virtual_camera("ManyCam Video Source", "") == "manycam"
    assert virtual_camera("", "Android SDK built for x86 (emulator)") == "emulator"
    assert virtual_camera("FaceTime HD Camera", "MacBookPro18,1") is None
    policy = SignalPolicy(timing=False)
    signals = {
        s.name: s
        for s in capture_signals(policy, "OBS Virtual Camera", "", [i * 40.0 for i in range(20)], 0)
    }
    assert signals["virtual_camera"].declines
    assert signals["timing_regular"].triggered and not signals["timing_regular"].declines
    assert not signals["duplicate_frames"].triggered


def test_replay_memory_flags_other_origins_only(frames: list[np.ndarray]) -> None:
    memory = ReplayMemory(max_media=2, max_frames=16)
    assert memory.check_media("a" * 64, "req-1") is None
    assert memory.check_media("a" * 64, "req-1") is None  # the same stored media re-analysed
    assert memory.check_media("a" * 64, "req-2") == "req-1"
    hashes = [frame_hash(f) for f in frames[:8]]
    assert memory.check_frames(hashes, "req-1").matched == 0
    noisy = [frame_hash(np.clip(f.astype(int) + 3, 0, 255).astype(np.uint8)) for f in frames[:8]]
    replay = memory.check_frames(noisy, "req-2")
    assert replay.share == 1.0 and replay.origin == "req-1"
    other = motion_frames(FACES / "biden.jpg", 8, width=240, height=320)
    assert memory.check_frames([frame_hash(f) for f in other], "req-3").matched == 0
    memory.check_media("b" * 64, "x")
    memory.check_media("c" * 64, "y")  # LRU of two: "a" is forgotten
    assert memory.check_media("a" * 64, "z") is None


def test_reencoded_video_has_the_same_frame_hashes(frames: list[np.ndarray]) -> None:
    memory = ReplayMemory()
    first = decode_video(encode(frames, "mp4", "libx264"), LIMITS, SAMPLING)
    again = decode_video(encode(frames, "webm", "libvpx-vp9"), LIMITS, SAMPLING)
    assert first.info.sha256 != again.info.sha256
    memory.check_frames([frame_hash(f.image.bgr) for f in first.frames], "one")
    replay = memory.check_frames([frame_hash(f.image.bgr) for f in again.frames], "two")
    assert replay.share >= 0.75
