"""Typed results of the SDK, converted from the protobuf replies (shared by sync and asyncio)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vigil.v1 import common_pb2, instant_pb2

if TYPE_CHECKING:
    from vigil.client.video_results import VideoDetail


@dataclass(frozen=True)
class Face:
    box: tuple[float, float, float, float]
    landmarks: list[tuple[float, float]]
    detection_score: float

    @classmethod
    def from_proto(cls, face: common_pb2.Face) -> Face:
        b = face.box
        return cls(
            box=(b.x, b.y, b.width, b.height),
            landmarks=[(p.x, p.y) for p in face.landmarks],
            detection_score=face.detection_score,
        )


@dataclass(frozen=True)
class Template:
    values: list[float]
    model: str
    model_version: str

    def to_proto(self) -> common_pb2.Template:
        return common_pb2.Template(
            values=self.values, model=self.model, model_version=self.model_version
        )

    @classmethod
    def from_proto(cls, template: common_pb2.Template) -> Template:
        return cls(list(template.values), template.model, template.model_version)


def _timings(timings: common_pb2.Timings) -> dict[str, float]:
    return {f.name: getattr(timings, f.name) for f in timings.DESCRIPTOR.fields}


@dataclass(frozen=True)
class DetectResult:
    faces: list[Face]
    width: int
    height: int
    content_type: str
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_proto(cls, reply: instant_pb2.DetectResponse) -> DetectResult:
        return cls(
            faces=[Face.from_proto(f) for f in reply.faces],
            width=reply.image.width,
            height=reply.image.height,
            content_type=reply.image.content_type,
            timings=_timings(reply.timings),
        )


@dataclass(frozen=True)
class LivenessResult:
    live: bool
    score: float
    threshold: float
    face: Face
    face_count: int
    model_scores: dict[str, float]
    timings: dict[str, float] = field(default_factory=dict)
    #: Videos: the video, best shot, signals and per-frame detail; None for an image.
    video: VideoDetail | None = None

    @classmethod
    def from_proto(cls, reply: instant_pb2.LivenessResponse) -> LivenessResult:
        from vigil.client.video_results import video_detail  # imports this module

        return cls(
            live=reply.live,
            score=reply.score,
            threshold=reply.threshold,
            face=Face.from_proto(reply.face),
            face_count=reply.face_count,
            model_scores={m.model.name: m.real_probability for m in reply.models},
            timings=_timings(reply.timings),
            video=video_detail(reply),
        )


@dataclass(frozen=True)
class TemplateResult:
    template: Template
    face: Face
    face_count: int
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_proto(cls, reply: instant_pb2.TemplateResponse) -> TemplateResult:
        return cls(
            template=Template.from_proto(reply.template),
            face=Face.from_proto(reply.face),
            face_count=reply.face_count,
            timings=_timings(reply.timings),
        )


@dataclass(frozen=True)
class VerifyResult:
    match: bool
    similarity: float
    distance: float
    distance_threshold: float
    metric: str
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_proto(cls, reply: instant_pb2.VerifyResponse) -> VerifyResult:
        return cls(
            match=reply.match,
            similarity=reply.similarity,
            distance=reply.distance,
            distance_threshold=reply.distance_threshold,
            metric=reply.metric,
            timings=_timings(reply.timings),
        )


def as_json(result: Any) -> dict[str, Any]:
    """A result as a JSON-ready dict (what ``vigil ... --json`` prints)."""
    import base64
    from dataclasses import asdict

    def safe(value: Any) -> Any:  # bytes (a best shot's JPEG) as base64
        if isinstance(value, bytes):
            return base64.b64encode(value).decode()
        if isinstance(value, dict):
            return {k: safe(v) for k, v in value.items()}
        if isinstance(value, list):
            return [safe(v) for v in value]
        return value

    return safe(asdict(result))
