"""Active liveness end to end: challenges issued by the server, answered with videos synthesised
from the real photos (tests/gesture_videos.py says how; there are no recorded gesture videos),
judged by the server's own FaceMesh, embedding and liveness models.

What the synthetic videos exercise: smile, turn left/right, tilt up/down and move closer are read
by FaceMesh as such. The blink is not: FaceMesh's eye landmarks stay open on the photos with the
eyelids painted closed (eye aspect ratio within its still-video spread), so blinks are tested on
landmark sequences only (tests/test_gestures.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import cv2
import grpc
import jwt
import numpy as np
import pytest
from sqlmodel import Session

from tests.conftest import FACES, ServerThread
from tests.gesture_videos import Still, analyse_still, gesture_frames
from tests.test_folders_api import LIVENESS, run, upload
from tests.videos import encode, motion_frames
from vigil.storage.tables import Challenge, utcnow
from vigil.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    challenges_pb2,
    challenges_pb2_grpc,
    common_pb2,
    folders_pb2_grpc,
    video_pb2,
)
from vigil.v1 import folders_pb2 as fp

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
    stub: challenges_pb2_grpc.ChallengesStub,
    *allowed: challenges_pb2.Gesture.ValueType,
    count: int = 2,
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
    first: challenges_pb2.Gesture.ValueType,
    second: challenges_pb2.Gesture.ValueType,
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


# ---- what an answer must not get away with ---------------------------------------------------


def reasons(verdict: challenges_pb2.ChallengeVerdict) -> dict[str, bool]:
    return {
        **{NAMES[g.gesture]: g.passed for g in verdict.gestures},
        **{c.name: c.passed for c in verdict.checks},
    }


def test_a_still_photo_as_video_fails_every_gesture(
    stub: challenges_pb2_grpc.ChallengesStub, stills: dict[str, Still]
) -> None:
    """Each photo framed as a selfie, filmed still (a small sway, sensor noise) for 4 s."""
    pairs = [
        (G.GESTURE_SMILE, G.GESTURE_MOVE_CLOSER),
        (G.GESTURE_TURN_LEFT, G.GESTURE_TILT_UP),
        (G.GESTURE_TURN_RIGHT, G.GESTURE_TILT_DOWN),
    ]
    for photo in ("obama", "biden"):
        for pair in pairs:
            challenge = create(stub, *pair)
            frames = gesture_frames(
                stills[photo], [("neutral", 4.0)], seed=200 + sum(pair) + 50 * (photo == "biden")
            )
            verdict = answer(stub, challenge, encode(frames))
            assert not verdict.passed and verdict.resolution == "DECLINED"
            assert [g.passed for g in verdict.gestures] == [False, False], explain(verdict)
            assert verdict.gestures[0].reason  # what the signal reached, and what it needed
            assert all(c.passed for c in verdict.checks if c.name != "replay"), explain(verdict)


def test_a_face_cut_by_the_frame_cannot_answer(stub: challenges_pb2_grpc.ChallengesStub) -> None:
    """The photo fitted with the forehead cut by the frame's top (FaceMesh then reads pose jumps
    of 20° and more): its frames give no gesture samples, and the answer is declined."""
    challenge = create(stub, G.GESTURE_TILT_UP, G.GESTURE_TILT_DOWN)
    cut = encode(motion_frames(FACES / "biden.jpg", 45, 360, 480, seed=1))
    verdict = answer(stub, challenge, cut)
    assert not verdict.passed
    faces = next(c for c in verdict.checks if c.name == "single_face")
    assert not faces.passed and "inside the frame" in faces.detail, explain(verdict)


def test_gestures_out_of_order_fail(
    stub: challenges_pb2_grpc.ChallengesStub, stills: dict[str, Still]
) -> None:
    challenge = create(stub, G.GESTURE_SMILE, G.GESTURE_MOVE_CLOSER)
    verdict = answer(stub, challenge, performing(stills["obama"], order(challenge)[::-1], seed=3))
    assert not verdict.passed
    # the first asked gesture is found (performed second); the other then never follows it
    assert [g.passed for g in verdict.gestures] == [True, False], explain(verdict)


def test_a_late_gesture_fails(
    stub: challenges_pb2_grpc.ChallengesStub, stills: dict[str, Still]
) -> None:
    challenge = create(stub, G.GESTURE_SMILE, G.GESTURE_TURN_RIGHT)
    late = performing(stills["obama"], order(challenge), seed=4, lead=5.5)
    verdict = answer(stub, challenge, late)
    assert not verdict.passed
    assert not verdict.gestures[0].passed
    assert "after its 5.0 s window" in verdict.gestures[0].reason, explain(verdict)


def test_a_face_switch_mid_video_fails(
    stub: challenges_pb2_grpc.ChallengesStub, stills: dict[str, Still]
) -> None:
    challenge = create(stub, G.GESTURE_SMILE, G.GESTURE_TURN_RIGHT)
    first, second = order(challenge)
    frames = gesture_frames(stills["obama"], [("neutral", 0.8), (first, 1.2), ("neutral", 0.6)])
    frames += gesture_frames(stills["biden"], [(second, 1.2), ("neutral", 0.6)], seed=1)
    verdict = answer(stub, challenge, encode(frames))
    assert not verdict.passed
    identity = next(c for c in verdict.checks if c.name == "identity")
    assert not identity.passed and "another person" in identity.detail, explain(verdict)


def test_single_use_replay_and_the_signed_verdict(
    server: ServerThread,
    stub: challenges_pb2_grpc.ChallengesStub,
    stills: dict[str, Still],
) -> None:
    """An answer passes once: the same challenge answered again is refused, and the same video
    answering another challenge (same gestures, same order) is declined as a replay. The signed
    verdict carries the challenge's nonce and the frames' hash."""
    challenge = create(stub, G.GESTURE_TURN_RIGHT, G.GESTURE_MOVE_CLOSER)
    video = performing(stills["obama"], order(challenge), seed=5)
    verdict = answer(stub, challenge, video)
    assert verdict.passed, explain(verdict)

    with server.channel(server.admin_key) as channel:
        jwks = auth_pb2_grpc.VerdictsStub(channel).GetPublicKeys(auth_pb2.GetPublicKeysRequest())
    jwk = json.loads(jwks.jwks_json)["keys"][0]
    claims = jwt.decode(
        verdict.verdict_token, jwt.PyJWK(jwk).key, algorithms=["EdDSA"], issuer="vigil"
    )
    assert claims["typ"] == "challenge_verdict" and claims["challenge"] == challenge.id
    assert claims["nonce"] == challenge.nonce and claims["resolution"] == "SUCCESS"
    assert claims["frames_sha256"] == verdict.frames_sha256 and len(verdict.frames_sha256) == 64

    with pytest.raises(grpc.RpcError) as again:
        answer(stub, challenge, video)
    assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "already answered" in (again.value.details() or "")
    assert stub.GetChallenge(G.GetChallengeRequest(challenge_id=challenge.id)).answered

    other = create(stub, G.GESTURE_TURN_RIGHT, G.GESTURE_MOVE_CLOSER)
    for _ in range(20):  # the server picks the order; wait for the same one
        if list(other.gestures) == list(challenge.gestures):
            break
        other = create(stub, G.GESTURE_TURN_RIGHT, G.GESTURE_MOVE_CLOSER)
    assert list(other.gestures) == list(challenge.gestures)
    replayed = answer(stub, other, video)
    assert not replayed.passed and reasons(replayed)["replay"] is False, explain(replayed)
    assert all(g.passed for g in replayed.gestures)  # the gestures alone would have passed
    replay_claims = jwt.decode(
        replayed.verdict_token, jwt.PyJWK(jwk).key, algorithms=["EdDSA"], issuer="vigil"
    )
    assert replay_claims["nonce"] == other.nonce != claims["nonce"]
    assert replay_claims["resolution"] == "DECLINED"


def test_an_expired_challenge_is_refused(
    server: ServerThread, stub: challenges_pb2_grpc.ChallengesStub, stills: dict[str, Still]
) -> None:
    challenge = create(stub, G.GESTURE_SMILE, G.GESTURE_MOVE_CLOSER)

    def expire(session: Session) -> None:
        row = session.get(Challenge, challenge.id)
        assert row is not None
        row.expires_at = utcnow() - timedelta(seconds=1)
        session.add(row)
        session.commit()

    server.call(lambda: server.vigil.app.db(expire))
    with pytest.raises(grpc.RpcError) as refused:
        answer(stub, challenge, performing(stills["obama"], order(challenge), seed=6))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "expired" in (refused.value.details() or "")


def test_another_company_can_neither_read_nor_answer(
    server: ServerThread, stub: challenges_pb2_grpc.ChallengesStub
) -> None:
    challenge = create(stub, G.GESTURE_SMILE, G.GESTURE_MOVE_CLOSER)
    video = encode(motion_frames(FACES / "obama.jpg", 20, 360, 480, seed=7))
    with server.channel(server.new_key("SERVICE", company="active-liveness-other")) as channel:
        other = challenges_pb2_grpc.ChallengesStub(channel)
        for call in (
            lambda: other.GetChallenge(G.GetChallengeRequest(challenge_id=challenge.id)),
            lambda: answer(other, challenge, video),
        ):
            with pytest.raises(grpc.RpcError) as hidden:
                call()
            assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
    assert not stub.GetChallenge(G.GetChallengeRequest(challenge_id=challenge.id)).answered


def test_bad_requests_are_refused_precisely(stub: challenges_pb2_grpc.ChallengesStub) -> None:
    for request, words in [
        (G.CreateChallengeRequest(allowed=[G.GESTURE_UNSPECIFIED, G.GESTURE_SMILE]), "value 0"),
        (G.CreateChallengeRequest(allowed=[G.GESTURE_SMILE]), "at least 2"),
        (G.CreateChallengeRequest(count=4), "count is 4"),
    ]:
        with pytest.raises(grpc.RpcError) as bad:
            stub.CreateChallenge(request)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert words in (bad.value.details() or ""), bad.value.details()
    challenge = create(stub, G.GESTURE_SMILE, G.GESTURE_MOVE_CLOSER)
    with pytest.raises(grpc.RpcError) as empty:
        stub.AnswerChallenge(G.AnswerChallengeRequest(challenge_id=challenge.id))
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as photo:
        answer(stub, challenge, (FACES / "obama.jpg").read_bytes())
    assert photo.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # a malformed answer does not use the challenge up
    assert not stub.GetChallenge(G.GetChallengeRequest(challenge_id=challenge.id)).answered
    with pytest.raises(grpc.RpcError) as unknown:
        stub.GetChallenge(G.GetChallengeRequest(challenge_id="0" * 32))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_safe_key_sees_the_gestures_to_perform_but_only_the_resolution(
    server: ServerThread, stills: dict[str, Still]
) -> None:
    key = server.new_key("SERVICE", result_mode="SAFE", company="active-liveness")
    with server.channel(key) as channel:
        safe = challenges_pb2_grpc.ChallengesStub(channel)
        challenge = create(safe, G.GESTURE_SMILE, G.GESTURE_MOVE_CLOSER)
        assert len(challenge.gestures) == 2 and challenge.nonce and challenge.expires_at.seconds
        verdict = answer(safe, challenge, performing(stills["obama"], order(challenge), seed=8))
    assert verdict.passed and verdict.resolution == "SUCCESS" and verdict.verdict_token
    assert not verdict.gestures and not verdict.checks
    assert verdict.liveness_score == 0 and not verdict.frames_sha256


# ---- streamed answers ---------------------------------------------------------------------------


def streamed(
    challenge_id: str, frames: list[np.ndarray], fps: int = 15, paced: bool = True
) -> Iterator[challenges_pb2.StreamAnswerRequest]:
    """The challenge id, then each frame as JPEG with its capture time (at the camera's pace when
    ``paced``, else as fast as the channel takes them)."""
    yield G.StreamAnswerRequest(challenge_id=challenge_id)
    started = time.monotonic()
    for i, bgr in enumerate(frames):
        if paced:
            time.sleep(max(0.0, started + i / fps - time.monotonic()))
        ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        frame = video_pb2.StreamFrame(encoded=jpeg.tobytes(), capture_time_ms=1000.0 * i / fps)
        yield G.StreamAnswerRequest(frame=frame)


def test_a_streamed_answer_passes_and_a_fast_replay_does_not(
    stub: challenges_pb2_grpc.ChallengesStub, stills: dict[str, Still]
) -> None:
    challenge = create(stub, G.GESTURE_SMILE, G.GESTURE_TURN_RIGHT)
    script = [("neutral", 0.8)] + [(g, 1.2) for g in order(challenge)] + [("neutral", 0.4)]
    frames = gesture_frames(stills["obama"], script, seed=9)
    verdict = stub.StreamAnswer(streamed(challenge.id, frames), timeout=120)
    assert verdict.passed, explain(verdict)
    assert verdict.frames_analysed == len(frames)
    pace = next(c for c in verdict.checks if c.name == "pace")
    assert pace.passed

    # the same capture sent as fast as possible: 3.8 s of frames arrive in well under that
    again = create(stub, G.GESTURE_SMILE, G.GESTURE_TURN_RIGHT)
    frames = gesture_frames(stills["obama"], [("neutral", 0.8)] + [(g, 1.2) for g in order(again)]
                            + [("neutral", 0.4)], seed=10)  # fmt: skip
    fast = stub.StreamAnswer(streamed(again.id, frames, paced=False), timeout=120)
    assert not fast.passed
    assert reasons(fast)["pace"] is False, explain(fast)

    with pytest.raises(grpc.RpcError) as used:
        stub.StreamAnswer(streamed(challenge.id, frames[:3], paced=False), timeout=60)
    assert used.value.code() == grpc.StatusCode.FAILED_PRECONDITION


# ---- the persistent API: Oz's gesture tags -------------------------------------------------------


def test_a_gesture_tag_makes_liveness_check_that_gesture(
    server: ServerThread, key: str, stills: dict[str, Still]
) -> None:
    """``video_selfie_smile`` on a video that smiles: SUCCESS with a passed ``gesture_smile``
    signal; ``video_selfie_zoom`` on the same kind of video (no zoom): DECLINED by
    ``gesture_move_closer``; ``video_selfie_blank`` asks for no gesture."""
    smiling = encode(gesture_frames(stills["obama"], [("neutral", 0.8), ("smile", 1.2),
                                                      ("neutral", 0.6)], seed=11))  # fmt: skip
    also_smiling = encode(gesture_frames(stills["obama"], [("neutral", 0.8), ("smile", 1.2),
                                                           ("neutral", 0.6)], seed=12))  # fmt: skip
    with server.channel(key) as channel:
        folders = folders_pb2_grpc.FoldersStub(channel)
        outcome = {}
        for tag, video in [("video_selfie_smile", smiling), ("video_selfie_zoom", also_smiling)]:
            folder = folders.CreateFolder(fp.CreateFolderRequest())
            upload(folders, (), folder.id, video, [tag])
            outcome[tag] = run(folders, (), folder.id, LIVENESS)[fp.ANALYSIS_TYPE_LIVENESS]

    passed = outcome["video_selfie_smile"]
    assert passed.resolution == fp.RESOLUTION_SUCCESS, passed
    signal = next(s for s in passed.results[0].signals if s.name == "gesture_smile")
    assert not signal.triggered and "smile from" in signal.detail

    missing = outcome["video_selfie_zoom"]
    assert missing.resolution == fp.RESOLUTION_DECLINED
    (result,) = missing.results
    signal = next(s for s in result.signals if s.name == "gesture_move_closer")
    assert signal.triggered and signal.declines and "size reached" in signal.detail
    assert "declined by gesture_move_closer" in result.error


def test_a_stream_must_start_with_its_challenge_once(
    stub: challenges_pb2_grpc.ChallengesStub, stills: dict[str, Still]
) -> None:
    frames = gesture_frames(stills["obama"], [("neutral", 0.2)], seed=13)
    ok, jpeg = cv2.imencode(".jpg", frames[0])
    assert ok
    frame = G.StreamAnswerRequest(frame=video_pb2.StreamFrame(encoded=jpeg.tobytes()))
    first, second = (
        create(stub, G.GESTURE_SMILE, G.GESTURE_MOVE_CLOSER),
        create(stub, G.GESTURE_SMILE, G.GESTURE_MOVE_CLOSER),
    )
    twice = [G.StreamAnswerRequest(challenge_id=c.id) for c in (first, second)]
    for messages, words in [
        ([frame], "first message must carry the challenge_id"),
        (twice, "first message, once"),
        ([], "no challenge_id"),
    ]:
        with pytest.raises(grpc.RpcError) as bad:
            stub.StreamAnswer(iter(messages), timeout=30)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert words in (bad.value.details() or ""), bad.value.details()
    # the second id was refused before it was consumed
    assert not stub.GetChallenge(G.GetChallengeRequest(challenge_id=second.id)).answered
