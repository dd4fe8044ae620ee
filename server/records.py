"""Engine results → the typed result records (``vigil.storage.results``), in one place.

The persistent analyses store these records; the Instant API converts the same records to its
replies, so a face, a frame, a signal or a video's facts has one shape everywhere.
"""

from __future__ import annotations

from vigil.inference.face_quality import FaceQuality
from vigil.inference.video.decode import VideoInfo
from vigil.inference.video.signals import Signal
from vigil.inference.video.types import FrameResult
from vigil.storage.results import (
    FaceRecord,
    FrameRecord,
    QualityRecord,
    SignalRecord,
    VideoFacts,
)


def quality_record(quality: FaceQuality | None) -> QualityRecord | None:
    if quality is None:
        return None
    return QualityRecord(
        value=quality.value,
        size=quality.size,
        sharpness=quality.sharpness,
        pose=quality.pose,
        exposure=quality.exposure,
    )


def frame_record(frame: FrameResult) -> FrameRecord:
    return FrameRecord(
        index=frame.index,
        time_ms=frame.time_s * 1000.0,
        face_count=frame.face_count,
        face=FaceRecord.of(frame.face) if frame.face is not None else None,
        score=frame.score or 0.0,
        quality=quality_record(frame.quality),
        identity_distance=frame.identity_distance or 0.0,
        is_subject=frame.is_subject,
    )


def signal_record(signal: Signal) -> SignalRecord:
    return SignalRecord(
        name=signal.name,
        triggered=signal.triggered,
        declines=signal.declines,
        value=signal.value,
        detail=signal.detail,
    )


def video_facts(info: VideoInfo, sampled: int) -> VideoFacts:
    return VideoFacts(
        content_type=info.content_type,
        codec=info.codec,
        width=info.width,
        height=info.height,
        rotation=info.rotation,
        duration_s=info.duration_s,
        fps=info.fps,
        decoded_frames=info.decoded_frames,
        sampled_frames=sampled,
        size_bytes=info.size_bytes,
        sha256=info.sha256,
    )
