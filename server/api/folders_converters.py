"""Rows of the persistent API ↔ protobuf messages, and request validation for it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vigil.inference.errors import InvalidArgument, PermissionDenied
from vigil.server.api.converters import chosen_threshold, face_message, timestamp
from vigil.server.api.video_converters import (
    frame_record_message,
    signal_record_message,
    video_facts_message,
)
from vigil.storage import analyses
from vigil.storage.analyses import NewAnalysis
from vigil.storage.results import AnalysisState, AnalysisType, MediaResult, Resolution
from vigil.storage.tables import Analysis, Folder, Media
from vigil.v1 import common_pb2, folders_pb2


def enum_name(enum: Any, prefix: str, value: int, field: str) -> str:
    """The bare name of an enum value (``RESOLUTION_SUCCESS`` → ``SUCCESS``); unknown → error."""
    if value not in enum.values():
        raise InvalidArgument(
            f"{field} {value} is not a known value; use one of {', '.join(enum.keys())}"
        )
    return str(enum.Name(value)).removeprefix(prefix)


# ---- the mirrored enums (vigil.storage.results ↔ vigil.v1) -------------------------------------


def resolution_value(name: str | None) -> folders_pb2.Resolution.ValueType:
    if not name:
        return folders_pb2.RESOLUTION_UNSPECIFIED
    return folders_pb2.Resolution.Value(f"RESOLUTION_{Resolution(name)}")


def analysis_type_value(name: str) -> folders_pb2.AnalysisType.ValueType:
    return folders_pb2.AnalysisType.Value(f"ANALYSIS_TYPE_{AnalysisType(name)}")


def analysis_state_value(name: str) -> folders_pb2.AnalysisState.ValueType:
    return folders_pb2.AnalysisState.Value(f"ANALYSIS_STATE_{AnalysisState(name)}")


def analysis_requests(
    requests: Sequence[folders_pb2.AnalysisRequest], may_choose_threshold: bool
) -> list[NewAnalysis]:
    """Validate AnalysisRequest messages into analyses to queue. A threshold of the caller's own
    is refused (PERMISSION_DENIED) unless ``may_choose_threshold``, and must lie in its range."""
    if not requests:
        raise InvalidArgument("analyses is empty: ask for at least one analysis")
    parsed = []
    for index, request in enumerate(requests):
        kind = enum_name(
            folders_pb2.AnalysisType, "ANALYSIS_TYPE_", request.type, f"analyses[{index}].type"
        )
        if kind == "UNSPECIFIED":
            raise InvalidArgument(f"analyses[{index}].type is required ({', '.join(AnalysisType)})")
        params: dict[str, Any] = {}
        if kind == AnalysisType.BLACKLIST:
            if not request.collection:
                raise InvalidArgument(f"analyses[{index}]: BLACKLIST needs a collection")
            params["collection"] = request.collection
        elif request.collection:
            raise InvalidArgument(f"analyses[{index}]: collection applies to BLACKLIST only")
        if request.threshold:
            field = f"analyses[{index}].threshold"
            if not may_choose_threshold:
                raise PermissionDenied(
                    f"{field}: a SAFE (front-end) credential may not choose a threshold; the "
                    "server's applies (leave it 0)"
                )
            if kind == AnalysisType.BEST_SHOT:
                raise InvalidArgument(f"{field}: BEST_SHOT decides nothing; leave it 0")
            liveness = kind == AnalysisType.LIVENESS
            params["threshold"] = chosen_threshold(request.threshold, liveness, field)
        parsed.append(NewAnalysis(AnalysisType(kind), params))
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


def media_result(result: MediaResult) -> folders_pb2.MediaResult:
    return folders_pb2.MediaResult(
        media_id=result.media_id,
        other_media_id=result.other_media_id,
        resolution=resolution_value(result.resolution),
        score=result.score,
        distance=result.distance,
        face=face_message(result.face) if result.face is not None else None,
        face_count=result.face_count,
        matches=[folders_pb2.CollectionMatch(**match.model_dump()) for match in result.matches],
        output_media_id=result.output_media_id,
        error=result.error,
        video=video_facts_message(result.video) if result.video is not None else None,
        aggregation=result.aggregation,
        signals=[signal_record_message(s) for s in result.signals],
        frames=[frame_record_message(f) for f in result.frames],
    )


def analysis_message(analysis: Analysis) -> folders_pb2.Analysis:
    stored = analyses.stored_result(analysis)
    processing = analysis.state == AnalysisState.PROCESSING
    return folders_pb2.Analysis(
        id=analysis.id,
        folder_id=analysis.folder_id,
        type=analysis_type_value(analysis.type),
        state=analysis_state_value(analysis.state),
        resolution=resolution_value(Resolution.PROCESSING if processing else analysis.resolution),
        results=[media_result(r) for r in stored.results],
        thresholds=stored.thresholds,
        models=[common_pb2.ModelRef(**m.model_dump()) for m in stored.models],
        error=stored.error,
        attempts=analysis.attempts,
        collection=analysis.params.get("collection", ""),
        created_at=timestamp(analysis.created_at),
        finished_at=timestamp(analysis.finished_at),
        processing_ms=analysis.processing_ms,
        decisive=media_result(stored.decisive) if stored.decisive is not None else None,
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
