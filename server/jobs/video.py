"""The persistent analyses' video paths: LIVENESS on a video, and a video's best shot for
BIOMETRY (its embedding) and BEST_SHOT (a new JPEG image media).

A video's LIVENESS result carries, beside the usual fields, the video's facts, how its frames
were combined, the signals and the per-frame detail (``vigil.storage.results.MediaResult``).
"""

from __future__ import annotations

import numpy as np

from vigil.inference.errors import VigilError
from vigil.inference.video.liveness import VideoLiveness
from vigil.inference.video.types import BestShot
from vigil.server.records import frame_record, signal_record, video_facts
from vigil.server.video import capture_from_meta
from vigil.storage.results import FaceRecord, MediaResult, Resolution
from vigil.storage.tables import Media


async def video_liveness_result(
    video: VideoLiveness, media: Media, data: bytes, threshold: float
) -> MediaResult:
    """LIVENESS of one video: SUCCESS when live at ``threshold`` and no signal declines. The
    capture metadata uploaded with the video feeds its virtual-camera and timing signals."""
    try:
        verdict = await video.analyze(
            data, capture_from_meta(media.meta), origin=media.id, admit=False
        )
    except VigilError as exc:
        return MediaResult(media_id=media.id, resolution=Resolution.DECLINED, error=exc.message)
    best = verdict.best_shot
    error = f"declined by {', '.join(verdict.declined_by)}" if verdict.declined_by else ""
    assert verdict.info is not None
    return MediaResult(
        media_id=media.id,
        resolution=Resolution.SUCCESS if verdict.live_at(threshold) else Resolution.DECLINED,
        score=verdict.score,
        face=FaceRecord.of(best.face) if best is not None else None,
        face_count=verdict.face_count,
        error=error,
        aggregation=verdict.aggregation,
        video=video_facts(verdict.info, len(verdict.frames)),
        signals=[signal_record(s) for s in verdict.signals],
        frames=[frame_record(f) for f in verdict.frames],
    )


async def video_best(video: VideoLiveness, data: bytes) -> tuple[BestShot, np.ndarray, FaceRecord]:
    """The video's best shot, the subject's embedding in it, and its face."""
    best, frame, _ = await video.best_of(data)
    assert frame.embedding is not None
    return best, frame.embedding, FaceRecord.of(best.face)
