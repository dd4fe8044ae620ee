"""A video LIVENESS result (JSON in the results column) → the MediaResult's video fields."""

from __future__ import annotations

from typing import Any

from vigil.v1 import common_pb2, video_pb2

_QUALITY_KEYS = ("value", "size", "sharpness", "pose", "exposure")


def _face(data: dict[str, Any]) -> common_pb2.Face | None:
    if not data:
        return None
    x, y, w, h = data["box"]
    return common_pb2.Face(
        box=common_pb2.BoundingBox(x=x, y=y, width=w, height=h),
        landmarks=[common_pb2.Point(x=px, y=py) for px, py in data.get("landmarks", [])],
        detection_score=data.get("score", 0.0),
    )


def _frame(data: dict[str, Any]) -> video_pb2.FrameLiveness:
    quality = {k: v for k, v in (data.get("quality") or {}).items() if k in _QUALITY_KEYS}
    return video_pb2.FrameLiveness(
        index=data["index"],
        time_ms=data["time_ms"],
        face_count=data["face_count"],
        face=_face(data.get("face", {})),
        score=data["score"],
        quality=video_pb2.FaceQuality(**quality) if quality else None,
        identity_distance=data["identity_distance"],
        is_subject=data["is_subject"],
    )


def video_result_fields(data: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for ``folders_pb2.MediaResult``; empty for images."""
    if "video" not in data:
        return {}
    return {
        "video": video_pb2.VideoInfo(**data["video"]),
        "aggregation": data.get("aggregation", ""),
        "signals": [video_pb2.LivenessSignal(**s) for s in data.get("signals", [])],
        "frames": [_frame(f) for f in data.get("frames", [])],
    }
