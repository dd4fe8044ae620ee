"""Plain results of video liveness (independent of gRPC): frames, best shot, verdict."""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from vigil.inference.decisions import is_live
from vigil.inference.errors import InvalidMedia
from vigil.inference.face_quality import FaceQuality
from vigil.inference.media import DecodedImage
from vigil.inference.types import Face, Timings
from vigil.inference.video.decode import VideoInfo
from vigil.inference.video.signals import Signal

AGGREGATION = "interquartile_mean"


@dataclass(frozen=True)
class Capture:
    """What a capture client may say about its camera (all optional)."""

    camera_label: str = ""
    device: str = ""
    timestamps_ms: list[float] = field(default_factory=list)


@dataclass
class FrameResult:
    index: int
    time_s: float
    face_count: int = 0
    face: Face | None = None
    score: float | None = None
    per_model: dict[str, float] = field(default_factory=dict)
    quality: FaceQuality | None = None
    embedding: np.ndarray | None = field(default=None, repr=False)
    identity_distance: float | None = None
    is_subject: bool = False
    hash: np.ndarray | None = field(default=None, repr=False)
    image: DecodedImage | None = field(default=None, repr=False)

    @property
    def rank(self) -> float:
        """What the best shot maximises: face quality × liveness."""
        if self.quality is None or self.score is None:
            return -1.0
        return self.quality.value * self.score


@dataclass(frozen=True)
class BestShot:
    index: int
    time_s: float
    face: Face
    quality: float
    jpeg: bytes
    width: int
    height: int


@dataclass
class VideoVerdict:
    score: float
    #: The liveness threshold the verdict was given at (the server's).
    threshold: float
    frames: list[FrameResult]
    signals: list[Signal]
    best_shot: BestShot | None
    info: VideoInfo | None
    timings: Timings
    face_count: int
    aggregation: str = AGGREGATION

    @property
    def declined_by(self) -> list[str]:
        return [s.name for s in self.signals if s.declines]

    def live_at(self, threshold: float) -> bool:
        """Live at ``threshold``: the score passes and no signal declines."""
        return is_live(self.score, threshold) and not self.declined_by

    @property
    def live(self) -> bool:
        return self.live_at(self.threshold)


def encode_jpeg(bgr: np.ndarray, quality: int = 92) -> bytes:
    ok, buffer = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise InvalidMedia("the best frame could not be encoded as JPEG")
    return buffer.tobytes()
