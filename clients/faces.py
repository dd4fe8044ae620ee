"""A detected face as the SDK returns it: shared by the image results (``results``) and the video
results (``video_results``). It imports nothing else from the SDK, so that those two modules import
one way only (``results`` → ``video_results`` → ``faces``)."""

from __future__ import annotations

from dataclasses import dataclass

from vigil.v1 import common_pb2


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
