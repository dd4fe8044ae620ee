"""The persistent analyses' video paths: LIVENESS on a video, and a video's best shot for
BIOMETRY (its embedding) and BEST_SHOT (a new JPEG image media).

Results are JSON for the ``results`` column: the per-frame detail, the signals and the video's
facts ride along with the usual fields (see ``video_converters.video_result_fields``).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np

from vigil.inference.errors import VigilError
from vigil.inference.video.decode import VideoInfo
from vigil.inference.video.liveness import VideoLiveness
from vigil.inference.video.types import BestShot, FrameResult
from vigil.server.api.folders_converters import face_json
from vigil.storage.tables import Media


def frame_json(frame: FrameResult) -> dict[str, Any]:
    return {
        "index": frame.index,
        "time_ms": frame.time_s * 1000.0,
        "face_count": frame.face_count,
        "face": face_json(frame.face) if frame.face is not None else {},
        "score": frame.score or 0.0,
        "quality": {**asdict(frame.quality), "value": frame.quality.value} if frame.quality else {},
        "identity_distance": frame.identity_distance or 0.0,
        "is_subject": frame.is_subject,
    }


def video_json(info: VideoInfo, sampled: int) -> dict[str, Any]:
    keys = ("content_type", "codec", "width", "height", "rotation", "duration_s", "fps")
    facts = {key: getattr(info, key) for key in keys}
    return {
        **facts,
        "decoded_frames": info.decoded_frames,
        "sampled_frames": sampled,
        "size_bytes": info.size_bytes,
        "sha256": info.sha256,
    }


async def video_liveness_result(
    video: VideoLiveness, media: Media, data: bytes, threshold: float
) -> dict[str, Any]:
    """LIVENESS of one video: SUCCESS when live at ``threshold`` and no signal declines."""
    result: dict[str, Any] = {"media_id": media.id}
    try:
        verdict = await video.analyze(data, origin=media.id)
    except VigilError as exc:
        return {**result, "resolution": "DECLINED", "error": exc.message}
    live = verdict.score >= threshold and not verdict.declined_by
    best = verdict.best_shot
    error = f"declined by {', '.join(verdict.declined_by)}" if verdict.declined_by else ""
    assert verdict.info is not None
    return {
        **result,
        "resolution": "SUCCESS" if live else "DECLINED",
        "score": verdict.score,
        "face": face_json(best.face) if best is not None else {},
        "face_count": verdict.face_count,
        "error": error,
        "aggregation": verdict.aggregation,
        "video": video_json(verdict.info, len(verdict.frames)),
        "signals": [asdict(s) for s in verdict.signals],
        "frames": [frame_json(f) for f in verdict.frames],
    }


async def video_best(
    video: VideoLiveness, data: bytes
) -> tuple[BestShot, np.ndarray, dict[str, Any]]:
    """The video's best shot, the subject's embedding in it, and its face as JSON."""
    best, frame, _ = await video.best_of(data)
    assert frame.embedding is not None
    return best, frame.embedding, face_json(best.face)
