"""The typed result schema and the decisions: what is stored reads back the same, rows written
before the schema was versioned still read, the enums mirror the contract's, and "live" and
"match" are decided at their thresholds."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from vigil.inference.decisions import distance, is_live, is_match, similarity
from vigil.inference.types import Face
from vigil.server.api.folders_converters import (
    analysis_state_value,
    analysis_type_value,
    resolution_value,
)
from vigil.storage.results import (
    SCHEMA_VERSION,
    AnalysisState,
    AnalysisType,
    FaceRecord,
    FrameRecord,
    Match,
    MediaResult,
    ModelRef,
    Resolution,
    StoredResult,
)
from vigil.v1 import folders_pb2

# A LIVENESS result of a video as version 0 wrote it (no "v"; missing faces as {}).
UNVERSIONED_VIDEO: dict[str, Any] = {
    "media_id": "m1",
    "resolution": "DECLINED",
    "score": 0.31,
    "face": {"box": [10.0, 20.0, 30.0, 40.0], "landmarks": [[1, 2]] * 5, "score": 0.9},
    "face_count": 1,
    "error": "declined by replay_frames",
    "aggregation": "interquartile_mean",
    "video": {
        "content_type": "video/mp4",
        "codec": "h264",
        "width": 480,
        "height": 640,
        "rotation": 0,
        "duration_s": 2.0,
        "fps": 25.0,
        "decoded_frames": 50,
        "sampled_frames": 2,
        "size_bytes": 1000,
        "sha256": "ab" * 32,
    },
    "signals": [
        {"name": "replay_frames", "triggered": True, "declines": True, "value": 1.0, "detail": ""}
    ],
    "frames": [
        {
            "index": 0,
            "time_ms": 0.0,
            "face_count": 0,
            "face": {},
            "score": 0.0,
            "quality": {},
            "identity_distance": 0.0,
            "is_subject": False,
        },
        {
            "index": 25,
            "time_ms": 1000.0,
            "face_count": 1,
            "face": {"box": [1, 2, 3, 4], "landmarks": [], "score": 0.8},
            "score": 0.31,
            "quality": {
                "value": 0.5,
                "size": 1,
                "sharpness": 1,
                "pose": 1,
                "exposure": 1,
                "detection": 0.5,
            },
            "identity_distance": 0.1,
            "is_subject": True,
        },
    ],
}


def test_an_unversioned_row_reads_as_version_1() -> None:
    result = MediaResult.model_validate(UNVERSIONED_VIDEO)
    assert result.v == SCHEMA_VERSION == 1
    assert result.resolution is Resolution.DECLINED
    assert result.face is not None and result.face.box == (10.0, 20.0, 30.0, 40.0)
    assert result.frames[0].face is None and result.frames[0].quality is None
    assert result.frames[1].quality is not None and result.frames[1].quality.value == 0.5
    assert result.video is not None and result.video.sampled_frames == 2
    assert [s.name for s in result.signals] == ["replay_frames"]


def test_what_is_stored_reads_back_the_same() -> None:
    face = FaceRecord(box=(1.0, 2.0, 3.0, 4.0), landmarks=[(1.5, 2.5)] * 5, score=0.99)
    pair = MediaResult(
        media_id="a",
        other_media_id="b",
        resolution=Resolution.OPERATOR_REQUIRED,
        distance=0.62,
        score=similarity(0.62, 0.6),
        face=face,
    )
    hit = Match(face_id="f", person_label="p", distance=0.3, similarity=0.75)
    listed = MediaResult(media_id="c", resolution=Resolution.DECLINED, matches=[hit], face=face)
    stored = StoredResult(
        results=[pair, listed, MediaResult.failed("d", "no face")],
        decisive=pair,
        thresholds={"distance": 0.6, "grey_zone": 0.05},
        models=[ModelRef(name="dlib-resnet", version="v1", sha256="0" * 64)],
        error="",
    )
    columns = stored.columns()
    assert all(item["v"] == SCHEMA_VERSION for item in columns["results"])
    assert "face" not in columns["results"][2]  # nothing invented for a failed media
    again = StoredResult.of_columns(
        columns["results"], columns["decisive"], columns["thresholds"], columns["models"], ""
    )
    assert again == stored


def test_a_newer_rows_unknown_fields_are_ignored_and_bad_rows_refused() -> None:
    newer = {**UNVERSIONED_VIDEO, "v": SCHEMA_VERSION + 1, "gesture": {"name": "blink"}}
    assert MediaResult.model_validate(newer).v == SCHEMA_VERSION + 1
    with pytest.raises(ValidationError):
        MediaResult.model_validate({"media_id": "m", "resolution": "MAYBE"})
    with pytest.raises(ValidationError):
        FrameRecord.model_validate({"time_ms": 0.0})


def test_a_face_record_is_made_from_the_engines_face() -> None:
    landmarks = np.arange(10, dtype=np.float32).reshape(5, 2)
    # a numpy score, as the engine's are at run time: the record must make it a float
    record = FaceRecord.of(Face((1.0, 2.0, 3.0, 4.0), landmarks, np.float32(0.5)))  # type: ignore[arg-type]
    assert record.box == (1.0, 2.0, 3.0, 4.0)
    assert record.landmarks == [(0.0, 1.0), (2.0, 3.0), (4.0, 5.0), (6.0, 7.0), (8.0, 9.0)]
    assert type(record.score) is float and record.score == 0.5


def test_the_enums_mirror_the_contracts() -> None:
    def names(enum: Any, prefix: str) -> set[str]:
        return {v.name.removeprefix(prefix) for v in enum.DESCRIPTOR.values} - {"UNSPECIFIED"}

    assert names(folders_pb2.AnalysisType, "ANALYSIS_TYPE_") == set(AnalysisType)
    assert names(folders_pb2.AnalysisState, "ANALYSIS_STATE_") == set(AnalysisState)
    assert names(folders_pb2.Resolution, "RESOLUTION_") == set(Resolution)
    for kind in AnalysisType:
        assert folders_pb2.AnalysisType.Name(analysis_type_value(kind)) == f"ANALYSIS_TYPE_{kind}"
    for state in AnalysisState:
        assert analysis_state_value(state) == folders_pb2.AnalysisState.Value(
            f"ANALYSIS_STATE_{state}"
        )
    for resolution in Resolution:
        assert resolution_value(resolution) == folders_pb2.Resolution.Value(
            f"RESOLUTION_{resolution}"
        )
    assert resolution_value(None) == folders_pb2.RESOLUTION_UNSPECIFIED


def test_live_and_match_are_decided_at_their_thresholds() -> None:
    assert is_live(0.5, 0.5) and not is_live(0.4999, 0.5)
    assert is_match(0.5999, 0.6) and not is_match(0.6, 0.6)
    assert similarity(0.6, 0.6) == 0.5  # the threshold lands at exactly 0.5
    assert similarity(0.0, 0.6) == 1.0 and similarity(5.0, 0.6) == 0.0
    for d in (0.1, 0.3, 0.59, 0.61, 0.9):
        assert similarity(d, 0.6) == pytest.approx(max(0.0, 1 - d / 1.2))
        assert (similarity(d, 0.6) > 0.5) == is_match(d, 0.6)
    a = np.array([3.0, 0.0], dtype=np.float32)
    b = np.array([0.0, 4.0], dtype=np.float32)
    assert distance(a, b) == 5.0 and type(distance(a, b)) is float
