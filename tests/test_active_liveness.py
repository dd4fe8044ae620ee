"""Active liveness end to end: challenges issued by the server, answered with videos synthesised
from the real photos (tests/gesture_videos.py says how; there are no recorded gesture videos),
judged by the server's own FaceMesh, embedding and liveness models.

What the synthetic videos exercise: smile, turn left/right, tilt up/down and move closer are read
by FaceMesh as such. The blink is not: FaceMesh's eye landmarks stay open on the photos with the
eyelids painted closed (eye aspect ratio within its still-video spread), so blinks are tested on
landmark sequences only (tests/test_gestures.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import FACES, ServerThread
from tests.gesture_videos import Still, analyse_still, gesture_frames
from tests.videos import encode
from vigil.v1 import (
    challenges_pb2,
    challenges_pb2_grpc,
    common_pb2,
)

G = challenges_pb2
NAMES = {
    G.GESTURE_BLINK: "blink",
    G.GESTURE_SMILE: "smile",
    G.GESTURE_TURN_LEFT: "turn_left",
    G.GESTURE_TURN_RIGHT: "turn_right",
    G.GESTURE_TILT_UP: "tilt_up",
    G.GESTURE_TILT_DOWN: "tilt_down",
    G.GESTURE_MOVE_CLOSER: "move_closer",
}


@pytest.fixture(scope="module")
def stills(models_dir: Path) -> dict[str, Still]:
    return {
        "obama": analyse_still(FACES / "obama.jpg", models_dir),
        "obama_mirrored": analyse_still(FACES / "obama.jpg", models_dir, mirror=True),
        "biden": analyse_still(FACES / "biden.jpg", models_dir),
    }


@pytest.fixture(scope="module")
def key(server: ServerThread) -> str:
    return server.new_key("SERVICE", company="active-liveness")


@pytest.fixture(scope="module")
def stub(server: ServerThread, key: str) -> Iterator[challenges_pb2_grpc.ChallengesStub]:
    with server.channel(key) as channel:
        yield challenges_pb2_grpc.ChallengesStub(channel)


def create(
    stub: challenges_pb2_grpc.ChallengesStub, *allowed: int, count: int = 2
) -> challenges_pb2.Challenge:
    return stub.CreateChallenge(G.CreateChallengeRequest(allowed=allowed, count=count))


def performing(
    still: Still, gestures: list[str], seed: int, pause: float = 0.6, lead: float = 0.8
) -> bytes:
    """A clip: neutral for ``lead`` s, then each gesture (1.2 s) with a pause after it."""
    script: list[tuple[str, float]] = [("neutral", lead)]
    for gesture in gestures:
        script += [(gesture, 1.2), ("neutral", pause)]
    return encode(gesture_frames(still, script, seed=seed))


def answer(
    stub: challenges_pb2_grpc.ChallengesStub, challenge: challenges_pb2.Challenge, video: bytes
) -> challenges_pb2.ChallengeVerdict:
    return stub.AnswerChallenge(
        G.AnswerChallengeRequest(challenge_id=challenge.id, video=common_pb2.Media(data=video)),
        timeout=120,
    )


def order(challenge: challenges_pb2.Challenge) -> list[str]:
    return [NAMES[g] for g in challenge.gestures]


def explain(verdict: challenges_pb2.ChallengeVerdict) -> str:
    return "; ".join(
        [
            f"{NAMES[g.gesture]}: {g.passed} {g.reason} (extreme {g.extreme:.3f})"
            for g in verdict.gestures
        ]
        + [f"{c.name}: {c.passed} {c.detail}" for c in verdict.checks]
    )


POSITIVE = [
    ("obama", G.GESTURE_SMILE, G.GESTURE_MOVE_CLOSER),
    ("obama", G.GESTURE_TURN_RIGHT, G.GESTURE_TILT_UP),
    ("obama_mirrored", G.GESTURE_TURN_LEFT, G.GESTURE_TILT_DOWN),
    ("biden", G.GESTURE_SMILE, G.GESTURE_TURN_RIGHT),
]


@pytest.mark.parametrize(("photo", "first", "second"), POSITIVE)
def test_a_synthetic_answer_in_the_asked_order_passes(
    stub: challenges_pb2_grpc.ChallengesStub,
    stills: dict[str, Still],
    photo: str,
    first: int,
    second: int,
) -> None:
    challenge = create(stub, first, second)
    assert sorted(challenge.gestures) == sorted([first, second])
    assert len(challenge.nonce) == 32 and challenge.gesture_window_ms == 5000
    verdict = answer(
        stub, challenge, performing(stills[photo], order(challenge), seed=first * 10 + second)
    )
    assert verdict.passed, explain(verdict)
    assert verdict.resolution == "SUCCESS"
    for result in verdict.gestures:
        assert result.passed and 0 <= result.start_frame <= result.end_frame, explain(verdict)
    starts = [r.start_s for r in verdict.gestures]
    assert starts == sorted(starts)
    assert {c.name for c in verdict.checks} == {
        "timing",
        "single_face",
        "identity",
        "replay",
        "liveness",
    }
