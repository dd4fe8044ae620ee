"""Typed results of the SDK, converted from the protobuf replies (shared by sync and asyncio)."""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

# Face is defined in faces (video_results uses it too) and is part of this module's API.
from vigil.client.faces import Face as Face
from vigil.client.video_results import VideoDetail, video_detail
from vigil.v1 import common_pb2, instant_pb2

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


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


def _jsonable(value: object) -> object:
    """``value`` with bytes (a best shot's JPEG) as base64, in dicts and lists too."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def as_json(result: DataclassInstance) -> dict[str, Any]:
    """A result as a JSON-ready dict (what ``vigil ... --json`` prints)."""
    return {name: _jsonable(value) for name, value in asdict(result).items()}
