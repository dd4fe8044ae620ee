"""Typed video results of the SDK: a video's liveness detail and the live stream's updates."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vigil.client.faces import Face
from vigil.v1 import instant_pb2, video_pb2


def _face(message: video_pb2.FrameLiveness | video_pb2.BestShot) -> Face | None:
    return Face.from_proto(message.face) if message.HasField("face") else None


@dataclass(frozen=True)
class VideoInfo:
    content_type: str
    codec: str
    width: int
    height: int
    rotation: int
    duration_s: float
    fps: float
    decoded_frames: int
    sampled_frames: int
    sha256: str

    @classmethod
    def from_proto(cls, info: video_pb2.VideoInfo) -> VideoInfo:
        return cls(
            info.content_type,
            info.codec,
            info.width,
            info.height,
            info.rotation,
            info.duration_s,
            info.fps,
            info.decoded_frames,
            info.sampled_frames,
            info.sha256,
        )


@dataclass(frozen=True)
class FrameDetail:
    index: int
    time_ms: float
    face_count: int
    face: Face | None
    score: float
    quality: float
    identity_distance: float
    is_subject: bool

    @classmethod
    def from_proto(cls, frame: video_pb2.FrameLiveness) -> FrameDetail:
        return cls(
            frame.index,
            frame.time_ms,
            frame.face_count,
            _face(frame),
            frame.score,
            frame.quality.value,
            frame.identity_distance,
            frame.is_subject,
        )


@dataclass(frozen=True)
class Signal:
    name: str
    triggered: bool
    declines: bool
    value: float
    detail: str

    @classmethod
    def from_proto(cls, signal: video_pb2.LivenessSignal) -> Signal:
        return cls(signal.name, signal.triggered, signal.declines, signal.value, signal.detail)


@dataclass(frozen=True)
class BestShot:
    jpeg: bytes = field(repr=False)
    frame_index: int
    time_ms: float
    face: Face | None
    quality: float

    @classmethod
    def from_proto(cls, best: video_pb2.BestShot) -> BestShot:
        return cls(best.jpeg, best.frame_index, best.time_ms, _face(best), best.quality)


@dataclass(frozen=True)
class VideoDetail:
    """What a video's liveness adds to :class:`LivenessResult`."""

    info: VideoInfo
    aggregation: str
    best_shot: BestShot | None
    signals: list[Signal]
    frames: list[FrameDetail]

    @property
    def declined_by(self) -> list[str]:
        return [s.name for s in self.signals if s.declines]


def video_detail(reply: instant_pb2.LivenessResponse) -> VideoDetail | None:
    """The video part of a ``LivenessResponse``; None for an image."""
    if not reply.HasField("video"):
        return None
    best = BestShot.from_proto(reply.best_shot) if reply.HasField("best_shot") else None
    return VideoDetail(
        info=VideoInfo.from_proto(reply.video),
        aggregation=reply.aggregation,
        best_shot=best,
        signals=[Signal.from_proto(s) for s in reply.signals],
        frames=[FrameDetail.from_proto(f) for f in reply.frames],
    )


@dataclass(frozen=True)
class StreamUpdate:
    """One update of the live stream; ``final`` with the verdict's ``outcome`` (LIVE, SPOOF,
    DECLINED, NO_FACE, INCONCLUSIVE; PENDING before)."""

    final: bool
    outcome: str
    reason: str
    score: float
    threshold: float
    frames_received: int
    frames_processed: int
    frames_skipped: int
    frames_with_face: int
    frame: FrameDetail | None
    signals: list[Signal]
    best_shot: BestShot | None
    frames: list[FrameDetail]

    @classmethod
    def from_proto(cls, update: video_pb2.StreamLivenessUpdate) -> StreamUpdate:
        return cls(
            final=update.final,
            outcome=video_pb2.StreamOutcome.Name(update.outcome).removeprefix("STREAM_OUTCOME_"),
            reason=update.reason,
            score=update.score,
            threshold=update.threshold,
            frames_received=update.frames_received,
            frames_processed=update.frames_processed,
            frames_skipped=update.frames_skipped,
            frames_with_face=update.frames_with_face,
            frame=FrameDetail.from_proto(update.frame) if update.HasField("frame") else None,
            signals=[Signal.from_proto(s) for s in update.signals],
            best_shot=BestShot.from_proto(update.best_shot)
            if update.HasField("best_shot")
            else None,
            frames=[FrameDetail.from_proto(f) for f in update.frames],
        )


def video_summary(result: dict[str, Any]) -> str:
    """One line on a video's liveness (what ``vigil liveness VIDEO`` adds)."""
    video = result.get("video")
    if not video:
        return ""
    info, best = video["info"], video["best_shot"] or {}
    signals = [s["name"] for s in video["signals"] if s["triggered"]]
    return (
        f"\nvideo {info['width']}x{info['height']} {info['codec']} {info['duration_s']:.1f} s, "
        f"{info['sampled_frames']} of {info['decoded_frames']} frames ({video['aggregation']}), "
        f"best shot frame {best.get('frame_index', -1)}"
        + (f", signals: {', '.join(signals)}" if signals else "")
        + (f", declined by {', '.join(video_declined(video))}" if video_declined(video) else "")
    )


def video_declined(video: dict[str, Any]) -> list[str]:
    return [s["name"] for s in video["signals"] if s["declines"]]
