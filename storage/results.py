"""The typed schema of persistent analyses: what a job stores and what the API reads back.

One module for every shape that lives in an analysis row's JSON columns (``results``,
``decisive``, ``thresholds``, ``models``) and in a watch-list face's ``face`` column, and the
enums of an analysis's type, state and resolution (mirrors of the proto enums of the same names).
The analysis jobs build these models; the Folders and Collections converters read them; nothing
else writes or parses that JSON.

Versioned: every stored media result carries ``"v": SCHEMA_VERSION``. Rows written before the
version existed carry none and have the shape of version 1. A newer replica's rows (a higher
``v``) are read leniently: fields this version does not know are ignored.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator

SCHEMA_VERSION = 1


class AnalysisType(StrEnum):
    LIVENESS = "LIVENESS"
    BIOMETRY = "BIOMETRY"
    BLACKLIST = "BLACKLIST"
    BEST_SHOT = "BEST_SHOT"


class AnalysisState(StrEnum):
    PROCESSING = "PROCESSING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"


class Resolution(StrEnum):
    #: A folder whose analyses are not all final (an analysis's own resolution is never this).
    PROCESSING = "PROCESSING"
    SUCCESS = "SUCCESS"
    DECLINED = "DECLINED"
    OPERATOR_REQUIRED = "OPERATOR_REQUIRED"
    FAILED = "FAILED"


FINAL_STATES = frozenset({AnalysisState.FINISHED, AnalysisState.FAILED})


class DetectedFace(Protocol):
    """What a face record is made from (the engine's ``Face``)."""

    @property
    def box(self) -> tuple[float, float, float, float]: ...

    @property
    def landmarks(self) -> np.ndarray: ...

    @property
    def score(self) -> float: ...


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


def _empty_is_none(value: Any) -> Any:
    """Rows of before the schema stored a missing face or quality as ``{}``."""
    return None if value == {} else value


class FaceRecord(_Record):
    """A detected face: box (x, y, w, h) and landmarks in pixels of the upright image."""

    box: tuple[float, float, float, float]
    landmarks: list[tuple[float, float]] = []
    score: float = 0.0

    @classmethod
    def of(cls, face: DetectedFace) -> FaceRecord:
        x, y, w, h = face.box
        return cls(
            box=(float(x), float(y), float(w), float(h)),
            landmarks=[(float(px), float(py)) for px, py in face.landmarks],
            score=float(face.score),
        )


class QualityRecord(_Record):
    value: float = 0.0
    size: float = 0.0
    sharpness: float = 0.0
    pose: float = 0.0
    exposure: float = 0.0


class FrameRecord(_Record):
    """One sampled frame of a video."""

    index: int
    time_ms: float
    face_count: int = 0
    face: FaceRecord | None = None
    score: float = 0.0
    quality: QualityRecord | None = None
    identity_distance: float = 0.0
    is_subject: bool = False

    _no_empty_face = field_validator("face", "quality", mode="before")(_empty_is_none)


class SignalRecord(_Record):
    name: str
    triggered: bool
    declines: bool
    value: float
    detail: str = ""


class VideoFacts(_Record):
    content_type: str
    codec: str
    width: int
    height: int
    rotation: int
    duration_s: float
    fps: float
    decoded_frames: int
    sampled_frames: int
    size_bytes: int
    sha256: str


class Match(_Record):
    """A watch-list face near the query (BLACKLIST)."""

    face_id: str
    person_label: str
    distance: float
    similarity: float


class MediaResult(_Record):
    """What an analysis concluded about one media (or, for BIOMETRY, one pair of media)."""

    v: int = SCHEMA_VERSION
    media_id: str
    resolution: Resolution
    other_media_id: str = ""
    score: float = 0.0
    distance: float = 0.0
    face: FaceRecord | None = None
    face_count: int = 0
    matches: list[Match] = []
    #: BEST_SHOT: the media created from this one.
    output_media_id: str = ""
    error: str = ""
    # A video's LIVENESS: the facts of the video, how frames were combined, signals, frames.
    aggregation: str = ""
    video: VideoFacts | None = None
    signals: list[SignalRecord] = []
    frames: list[FrameRecord] = []

    _no_empty_face = field_validator("face", mode="before")(_empty_is_none)

    @classmethod
    def failed(cls, media_id: str, error: str) -> MediaResult:
        """A media the analysis could not use (unreadable, no face…)."""
        return cls(media_id=media_id, resolution=Resolution.FAILED, error=error)


class ModelRef(_Record):
    name: str
    version: str
    sha256: str


class StoredResult(BaseModel):
    """The result columns of one analysis row, typed."""

    model_config = ConfigDict(frozen=True)

    results: list[MediaResult] = []
    decisive: MediaResult | None = None
    thresholds: dict[str, float] = {}
    models: list[ModelRef] = []
    error: str = ""

    def columns(self) -> dict[str, Any]:
        """The row's column values (JSON) for these results."""
        return {
            "results": [result.to_json() for result in self.results],
            "decisive": self.decisive.to_json() if self.decisive is not None else {},
            "thresholds": dict(self.thresholds),
            "models": [model.to_json() for model in self.models],
            "error": self.error[:2000],
        }

    @classmethod
    def of_columns(
        cls,
        results: list[dict[str, Any]],
        decisive: dict[str, Any],
        thresholds: dict[str, float],
        models: list[dict[str, str]],
        error: str,
    ) -> StoredResult:
        return cls(
            results=[MediaResult.model_validate(item) for item in results],
            decisive=MediaResult.model_validate(decisive) if decisive else None,
            thresholds=thresholds,
            models=[ModelRef.model_validate(item) for item in models],
            error=error,
        )


def face_record(stored: dict[str, Any]) -> FaceRecord | None:
    """A watch-list face's stored ``face`` column ({} when it came from a template)."""
    return FaceRecord.model_validate(stored) if stored else None
