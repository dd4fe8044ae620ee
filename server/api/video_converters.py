"""Video verdicts, frames, signals and stream updates → protobuf messages.

Frames, signals and a video's facts go through their typed records (``vigil.server.records``),
the same ones a persistent analysis stores, so each has one converter to protobuf here.
"""

from __future__ import annotations

from vigil.inference.engine import LIVENESS_MODELS
from vigil.inference.video.stream import Outcome, StreamResult, StreamSession
from vigil.inference.video.types import BestShot, FrameResult, VideoVerdict
from vigil.server.api import converters as conv
from vigil.server.records import frame_record, signal_record, video_facts
from vigil.storage.results import FrameRecord, QualityRecord, SignalRecord, VideoFacts
from vigil.v1 import instant_pb2, video_pb2

OUTCOMES = {
    Outcome.PENDING: video_pb2.STREAM_OUTCOME_PENDING,
    Outcome.LIVE: video_pb2.STREAM_OUTCOME_LIVE,
    Outcome.SPOOF: video_pb2.STREAM_OUTCOME_SPOOF,
    Outcome.DECLINED: video_pb2.STREAM_OUTCOME_DECLINED,
    Outcome.NO_FACE: video_pb2.STREAM_OUTCOME_NO_FACE,
    Outcome.INCONCLUSIVE: video_pb2.STREAM_OUTCOME_INCONCLUSIVE,
}


def quality_message(quality: QualityRecord | None) -> video_pb2.FaceQuality | None:
    if quality is None:
        return None
    return video_pb2.FaceQuality(**quality.model_dump())


def frame_record_message(frame: FrameRecord) -> video_pb2.FrameLiveness:
    return video_pb2.FrameLiveness(
        index=frame.index,
        time_ms=frame.time_ms,
        face_count=frame.face_count,
        face=conv.face_message(frame.face) if frame.face is not None else None,
        score=frame.score,
        quality=quality_message(frame.quality),
        identity_distance=frame.identity_distance,
        is_subject=frame.is_subject,
    )


def signal_record_message(signal: SignalRecord) -> video_pb2.LivenessSignal:
    return video_pb2.LivenessSignal(**signal.model_dump())


def video_facts_message(facts: VideoFacts) -> video_pb2.VideoInfo:
    return video_pb2.VideoInfo(**facts.model_dump())


def frame_message(frame: FrameResult) -> video_pb2.FrameLiveness:
    return frame_record_message(frame_record(frame))


def best_shot_message(best: BestShot | None) -> video_pb2.BestShot | None:
    if best is None:
        return None
    return video_pb2.BestShot(
        jpeg=best.jpeg,
        frame_index=best.index,
        time_ms=best.time_s * 1000.0,
        face=conv.face_message(best.face),
        quality=best.quality,
        width=best.width,
        height=best.height,
    )


def video_liveness_response(verdict: VideoVerdict) -> instant_pb2.LivenessResponse:
    best = verdict.best_shot
    with_face = [f for f in verdict.frames if f.face is not None]
    subject = best.face if best is not None else with_face[0].face
    members = {
        spec.name: sum(f.per_model.get(spec.name, 0.0) for f in with_face) / len(with_face)
        for spec in LIVENESS_MODELS
    }
    info = verdict.info
    assert info is not None and subject is not None
    return instant_pb2.LivenessResponse(
        live=verdict.live,
        score=verdict.score,
        threshold=verdict.threshold,
        face=conv.face_message(subject),
        face_count=verdict.face_count,
        models=[
            instant_pb2.LivenessModelScore(
                model=conv.model_ref(spec), real_probability=members[spec.name]
            )
            for spec in LIVENESS_MODELS
        ],
        image=conv.image_info(info.content_type, info.width, info.height),
        timings=conv.timings_message(verdict.timings),
        video=video_facts_message(video_facts(info, len(verdict.frames))),
        best_shot=best_shot_message(best),
        signals=[signal_record_message(signal_record(s)) for s in verdict.signals],
        aggregation=verdict.aggregation,
        frames=[frame_message(f) for f in verdict.frames],
    )


def stream_update(
    session: StreamSession, frame: FrameResult | None = None, result: StreamResult | None = None
) -> video_pb2.StreamLivenessUpdate:
    update = video_pb2.StreamLivenessUpdate(
        final=result is not None,
        outcome=OUTCOMES[result.outcome if result else Outcome.PENDING],
        reason=result.reason if result else "",
        score=session.score,
        threshold=session.video.threshold,
        frames_received=session.received,
        frames_processed=len(session.frames),
        frames_skipped=session.skipped,
        frames_with_face=len(session.with_face),
        frame=frame_message(frame) if frame is not None else None,
        timings=conv.timings_message(session.timings),
    )
    if result is not None:
        update.frames.extend(frame_message(f) for f in session.frames)
        if result.verdict is not None:
            update.signals.extend(
                signal_record_message(signal_record(s)) for s in result.verdict.signals
            )
            best = best_shot_message(result.verdict.best_shot)
            if best is not None:
                update.best_shot.CopyFrom(best)
    return update
