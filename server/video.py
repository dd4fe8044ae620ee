"""Video liveness for the servicers and the analysis runner: settings → engine objects.

The replay memory is one per engine, shared by the Instant API, the live stream, the challenge
answers and the persistent analyses of this process; with ``VIGIL_REDIS_URL`` it lives in Redis
and every replica and worker shares it (``server/shared_state.py``).
"""

from __future__ import annotations

import json
import weakref

from vigil.inference.engine import Engine
from vigil.inference.media import sniff_kind
from vigil.inference.video.decode import VideoLimits, VideoSampling
from vigil.inference.video.liveness import VideoConfig, VideoLiveness
from vigil.inference.video.replay import ReplayMemory
from vigil.inference.video.signals import SignalPolicy
from vigil.inference.video.stream import StreamConfig
from vigil.inference.video.types import Capture
from vigil.server.metrics import CACHE_ENTRIES
from vigil.server.settings import Settings
from vigil.server.shared_state import SharedReplayMemory
from vigil.v1 import video_pb2

_MEMORIES: weakref.WeakKeyDictionary[Engine, ReplayMemory] = weakref.WeakKeyDictionary()


def replay_memory_for(engine: Engine, settings: Settings | None = None) -> ReplayMemory:
    """The engine's replay memory, made on first use with the settings' bounds
    (``VIGIL_REPLAY_MAX_MEDIA``, ``VIGIL_REPLAY_MAX_FRAMES``; in Redis, ``VIGIL_REPLAY_TTL_S``);
    sizes of this process' memory in ``vigil_cache_entries``."""
    memory = _MEMORIES.get(engine)
    if memory is not None:
        return memory
    made: ReplayMemory
    if settings is None:
        made = ReplayMemory()
    elif settings.redis_url:
        made = SharedReplayMemory(
            settings.redis_url,
            settings.redis_prefix,
            settings.replay_ttl_s,
            settings.replay_max_media,
            settings.replay_max_frames,
        )
    else:
        made = ReplayMemory(settings.replay_max_media, settings.replay_max_frames)
    _MEMORIES[engine] = made
    CACHE_ENTRIES.labels("replay_media").set_function(lambda: made.media_count)
    CACHE_ENTRIES.labels("replay_frames").set_function(lambda: made.frame_count)
    return made


def video_config(settings: Settings) -> VideoConfig:
    return VideoConfig(
        limits=VideoLimits(
            max_bytes=settings.max_video_bytes,
            max_duration_s=settings.max_video_duration_s,
            max_side=settings.max_video_side,
            max_frames=settings.max_video_frames,
        ),
        sampling=VideoSampling(count=settings.video_sample_frames, fps=settings.video_sample_fps),
        policy=SignalPolicy(
            replay=settings.decline_on_replay,
            virtual_camera=settings.decline_on_virtual_camera,
            timing=settings.decline_on_timing,
            subject_change=settings.decline_on_subject_change,
        ),
        min_face_frames=settings.video_min_face_frames,
    )


def stream_config(settings: Settings) -> StreamConfig:
    return StreamConfig(
        min_frames=settings.stream_min_frames,
        max_frames=settings.stream_max_frames,
        max_seconds=settings.stream_max_seconds,
        no_face_frames=settings.stream_no_face_frames,
    )


def video_liveness(engine: Engine, settings: Settings) -> VideoLiveness:
    return VideoLiveness(engine, video_config(settings), replay_memory_for(engine, settings))


def is_video(data: bytes) -> bool:
    kind = sniff_kind(data[:64])
    return kind is not None and kind[0] == "VIDEO"


def capture_of(message: video_pb2.CaptureInfo) -> Capture:
    return Capture(
        camera_label=message.camera_label[:200],
        device=message.device[:200],
        timestamps_ms=list(message.frame_timestamps_ms)[:10_000],
    )


#: The media meta key that keeps an upload's CaptureInfo (JSON) for its LIVENESS analyses.
CAPTURE_META_KEY = "vigil_capture"


def capture_meta(message: video_pb2.CaptureInfo) -> dict[str, str]:
    """An upload's CaptureInfo as media meta; nothing when the client said nothing."""
    capture = capture_of(message)
    if capture == Capture():
        return {}
    value = {
        "camera_label": capture.camera_label,
        "device": capture.device,
        "frame_timestamps_ms": capture.timestamps_ms,
    }
    return {CAPTURE_META_KEY: json.dumps(value, separators=(",", ":"))}


def capture_from_meta(meta: dict[str, str]) -> Capture:
    """The Capture kept with a media by :func:`capture_meta` (empty when there is none)."""
    raw = meta.get(CAPTURE_META_KEY)
    if not raw:
        return Capture()
    value = json.loads(raw)
    return Capture(
        camera_label=str(value.get("camera_label", "")),
        device=str(value.get("device", "")),
        timestamps_ms=[float(t) for t in value.get("frame_timestamps_ms", [])],
    )
