"""Plain results of the engine, independent of gRPC."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Face:
    """A detected face in pixels of the upright image: box (x, y, w, h) and 5 landmarks (x, y)."""

    box: tuple[float, float, float, float]
    landmarks: np.ndarray  # shape (5, 2), float32
    score: float

    @property
    def area(self) -> float:
        return self.box[2] * self.box[3]


@dataclass
class Timings:
    """Milliseconds per stage of one request."""

    decode_ms: float = 0.0
    detect_ms: float = 0.0
    align_ms: float = 0.0
    liveness_ms: float = 0.0
    embed_ms: float = 0.0
    queue_ms: float = 0.0
    total_ms: float = 0.0

    def add(self, other: Timings) -> None:
        for name in vars(self):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass(frozen=True)
class LivenessScore:
    """The ensemble's verdict on one face: mean real probability and each member's."""

    score: float
    per_model: dict[str, float]


@dataclass(frozen=True)
class Subject:
    """The subject of an image (its largest face) and how many faces the image holds."""

    face: Face
    face_count: int
    content_type: str
    width: int
    height: int
    timings: Timings = field(default_factory=Timings)
