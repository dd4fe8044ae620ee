"""Challenges: storage rows and answer verdicts ↔ protobuf."""

from __future__ import annotations

from collections.abc import Iterable

from vigil.inference.errors import InvalidArgument
from vigil.inference.gestures.detectors import Gesture
from vigil.inference.gestures.verify import AnswerVerdict
from vigil.server.api.converters import timestamp
from vigil.storage.tables import Challenge
from vigil.v1 import challenges_pb2

_TO_PROTO: dict[Gesture, challenges_pb2.Gesture.ValueType] = {
    Gesture.BLINK: challenges_pb2.GESTURE_BLINK,
    Gesture.SMILE: challenges_pb2.GESTURE_SMILE,
    Gesture.TURN_LEFT: challenges_pb2.GESTURE_TURN_LEFT,
    Gesture.TURN_RIGHT: challenges_pb2.GESTURE_TURN_RIGHT,
    Gesture.TILT_UP: challenges_pb2.GESTURE_TILT_UP,
    Gesture.TILT_DOWN: challenges_pb2.GESTURE_TILT_DOWN,
    Gesture.MOVE_CLOSER: challenges_pb2.GESTURE_MOVE_CLOSER,
}
_FROM_PROTO = {value: gesture for gesture, value in _TO_PROTO.items()}


def gestures_of(values: Iterable[int]) -> list[Gesture]:
    """Proto gesture values → gestures; INVALID_ARGUMENT for unspecified or unknown ones."""
    gestures = []
    for value in values:
        gesture = _FROM_PROTO.get(value)  # type: ignore[call-overload]
        if gesture is None:
            raise InvalidArgument(
                f"allowed holds gesture value {value}; use GESTURE_BLINK … GESTURE_MOVE_CLOSER"
            )
        gestures.append(gesture)
    return gestures


def parse_gesture_setting(text: str) -> list[Gesture]:
    """``VIGIL_CHALLENGE_GESTURES``: comma-separated names; ValueError naming a bad one."""
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    known = {g.value for g in Gesture}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(
            f"VIGIL_CHALLENGE_GESTURES names {unknown}; known gestures: {sorted(known)}"
        )
    return [Gesture(name) for name in names]


def challenge_message(row: Challenge) -> challenges_pb2.Challenge:
    return challenges_pb2.Challenge(
        id=row.id,
        nonce=row.nonce,
        gestures=[_TO_PROTO[Gesture(name)] for name in row.gestures],
        gesture_window_ms=row.gesture_window_ms,
        created_at=timestamp(row.created_at),
        expires_at=timestamp(row.expires_at),
        answered=row.consumed_at is not None,
        resolution=row.outcome or "",
    )


def verdict_message(challenge_id: str, verdict: AnswerVerdict) -> challenges_pb2.ChallengeVerdict:
    return challenges_pb2.ChallengeVerdict(
        challenge_id=challenge_id,
        passed=verdict.passed,
        resolution="SUCCESS" if verdict.passed else "DECLINED",
        gestures=[
            challenges_pb2.GestureResult(
                gesture=_TO_PROTO[g.gesture],
                passed=g.passed,
                signal=g.signal,
                baseline=g.baseline,
                extreme=g.extreme,
                threshold=g.threshold,
                start_frame=g.start_index,
                end_frame=g.end_index,
                start_s=g.start_s,
                end_s=g.end_s,
                reason=g.reason,
            )
            for g in verdict.gestures
        ],
        checks=[
            challenges_pb2.AnswerCheck(name=c.name, passed=c.passed, detail=c.detail)
            for c in verdict.checks
        ],
        liveness_score=verdict.liveness_score,
        liveness_threshold=verdict.liveness_threshold,
        frames_analysed=verdict.frames_analysed,
        frames_sha256=verdict.frames_sha256,
    )
