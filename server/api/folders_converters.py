"""Rows of the persistent API ↔ protobuf messages, and request validation for it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from vigil.inference.errors import InvalidArgument
from vigil.server.api.video_result_fields import video_result_fields
from vigil.storage.tables import Analysis, Folder, Media
from vigil.v1 import common_pb2, folders_pb2

ANALYSIS_TYPES = ("LIVENESS", "BIOMETRY", "BLACKLIST", "BEST_SHOT")


def timestamp(moment: datetime | None) -> Timestamp | None:
    if moment is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
    return stamp


def moment(stamp: Timestamp, present: bool) -> datetime | None:
    return stamp.ToDatetime(tzinfo=UTC) if present else None


def enum_name(enum: Any, prefix: str, value: int, field: str) -> str:
    """The bare name of an enum value (``RESOLUTION_SUCCESS`` → ``SUCCESS``); unknown → error."""
    if value not in enum.values():
        raise InvalidArgument(
            f"{field} {value} is not a known value; use one of {', '.join(enum.keys())}"
        )
    return str(enum.Name(value)).removeprefix(prefix)


def resolution_value(name: str | None) -> folders_pb2.Resolution.ValueType:
    if not name:
        return folders_pb2.RESOLUTION_UNSPECIFIED
    return folders_pb2.Resolution.Value(f"RESOLUTION_{name}")


def analysis_requests(requests: Any) -> list[dict[str, Any]]:
    """Validate AnalysisRequest messages into ``{"type", "params"}`` dicts for the repository."""
    if not requests:
        raise InvalidArgument("analyses is empty: ask for at least one analysis")
    parsed = []
    for index, request in enumerate(requests):
        kind = enum_name(
            folders_pb2.AnalysisType, "ANALYSIS_TYPE_", request.type, f"analyses[{index}].type"
        )
        if kind == "UNSPECIFIED":
            raise InvalidArgument(
                f"analyses[{index}].type is required ({', '.join(ANALYSIS_TYPES)})"
            )
        params: dict[str, Any] = {}
        if kind == "BLACKLIST":
            if not request.collection:
                raise InvalidArgument(f"analyses[{index}]: BLACKLIST needs a collection")
            params["collection"] = request.collection
        elif request.collection:
            raise InvalidArgument(f"analyses[{index}]: collection applies to BLACKLIST only")
        if request.threshold < 0:
            raise InvalidArgument(f"analyses[{index}].threshold must not be negative")
        if request.threshold:
            params["threshold"] = float(request.threshold)
        parsed.append({"type": kind, "params": params})
    return parsed


def media_info(media: Media) -> folders_pb2.MediaInfo:
    return folders_pb2.MediaInfo(
        id=media.id,
        folder_id=media.folder_id,
        tags=media.tags,
        meta=media.meta,
        content_type=media.content_type,
        declared_content_type=media.declared_content_type,
        original_name=media.original_name,
        size=media.size,
        sha256=media.sha256,
        created_at=timestamp(media.created_at),
        source_media_id=media.source_media_id or "",
    )


def _face(data: dict[str, Any]) -> common_pb2.Face | None:
    if not data:
        return None
    x, y, w, h = data["box"]
    return common_pb2.Face(
        box=common_pb2.BoundingBox(x=x, y=y, width=w, height=h),
        landmarks=[common_pb2.Point(x=px, y=py) for px, py in data.get("landmarks", [])],
        detection_score=data.get("score", 0.0),
    )


def media_result(data: dict[str, Any]) -> folders_pb2.MediaResult:
    return folders_pb2.MediaResult(
        media_id=data.get("media_id", ""),
        other_media_id=data.get("other_media_id", ""),
        resolution=resolution_value(data.get("resolution")),
        score=data.get("score", 0.0),
        distance=data.get("distance", 0.0),
        face=_face(data.get("face", {})),
        face_count=data.get("face_count", 0),
        matches=[folders_pb2.CollectionMatch(**match) for match in data.get("matches", [])],
        output_media_id=data.get("output_media_id", ""),
        error=data.get("error", ""),
        **video_result_fields(data),
    )


def analysis_message(analysis: Analysis) -> folders_pb2.Analysis:
    return folders_pb2.Analysis(
        id=analysis.id,
        folder_id=analysis.folder_id,
        type=folders_pb2.AnalysisType.Value(f"ANALYSIS_TYPE_{analysis.type}"),
        state=folders_pb2.AnalysisState.Value(f"ANALYSIS_STATE_{analysis.state}"),
        resolution=resolution_value(
            "PROCESSING" if analysis.state == "PROCESSING" else analysis.resolution
        ),
        results=[media_result(r) for r in analysis.results],
        thresholds=analysis.thresholds,
        models=[common_pb2.ModelRef(**m) for m in analysis.models],
        error=analysis.error,
        attempts=analysis.attempts,
        collection=analysis.params.get("collection", ""),
        created_at=timestamp(analysis.created_at),
        finished_at=timestamp(analysis.finished_at),
        processing_ms=analysis.processing_ms,
        decisive=media_result(analysis.decisive) if analysis.decisive else None,
    )


def folder_message(
    folder: Folder, media: list[Media] | None = None, analyses: list[Analysis] | None = None
) -> folders_pb2.Folder:
    return folders_pb2.Folder(
        id=folder.id,
        meta=folder.meta,
        created_at=timestamp(folder.created_at),
        updated_at=timestamp(folder.updated_at),
        resolution=resolution_value(folder.resolution),
        media=[media_info(m) for m in media or []],
        analyses=[analysis_message(a) for a in analyses or []],
    )


def face_json(face: Any) -> dict[str, Any]:
    """An engine ``Face`` as JSON for the results column."""
    return {
        "box": [float(v) for v in face.box],
        "landmarks": [[float(x), float(y)] for x, y in face.landmarks],
        "score": float(face.score),
    }
