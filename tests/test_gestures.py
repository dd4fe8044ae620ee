"""The gesture detectors on landmark-signal sequences (pure functions, no model), the signals on
FaceMesh's reading of the real photos, and the challenge store's single use and expiry."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlmodel import Session

from tests.conftest import FACES
from tests.gesture_videos import analyse_still, gesture_frame
from vigil.inference.backends import BackendOptions, load_models
from vigil.inference.catalog import FACEMESH
from vigil.inference.errors import FailedPrecondition, InvalidArgument, NotFound
from vigil.inference.facemesh import mesh_crop, mesh_from_outputs
from vigil.inference.gestures.detectors import (
    Gesture,
    GestureThresholds,
    Sample,
    detect_blink,
    detect_sequence,
)
from vigil.inference.gestures.signals import FrameSignals, frame_signals
from vigil.storage import challenges
from vigil.storage.db import Database, migrate
from vigil.storage.folders import ensure_company

FPS = 15
NEUTRAL = FrameSignals(ear=0.30, smile=0.70, yaw=2.0, pitch=10.0, size=80.0)
T = GestureThresholds()


def sequence(*steps: tuple[int, dict[str, float]]) -> list[Sample]:
    """Samples at 15 fps: each step is (frames, signal overrides of the neutral face)."""
    samples: list[Sample] = []
    for count, changes in steps:
        for _ in range(count):
            i = len(samples)
            samples.append(Sample(i, i / FPS, replace(NEUTRAL, **changes)))
    return samples


def run(gestures: Sequence[Gesture], samples: list[Sample], window_s: float = 5.0) -> list[bool]:
    return [g.passed for g in detect_sequence(gestures, samples, window_s, T)]


# ---- blink ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("closed_frames", "passes"), [(1, False), (2, True), (4, True), (6, True), (7, False)]
)
def test_a_blink_is_a_dip_of_100_to_400_ms(closed_frames: int, passes: bool) -> None:
    # closed frames → closure time to the first reopened frame: k/15 s (67, 133 … 467 ms)
    samples = sequence((10, {}), (closed_frames, {"ear": 0.08}), (10, {}))
    found = detect_blink(samples, 0.30, T)
    assert found.passed is passes, found.reason
    if passes:
        assert found.start_index == 10 and found.end_index == 10 + closed_frames - 1
        assert found.extreme == pytest.approx(0.08) and found.baseline == pytest.approx(0.30)


def test_a_shallow_dip_is_not_a_blink() -> None:
    samples = sequence((10, {}), (3, {"ear": 0.20}), (10, {}))  # 67 % of the baseline
    assert run([Gesture.BLINK, Gesture.SMILE], samples) == [False, False]


def test_eyes_that_stay_closed_are_not_a_blink() -> None:
    samples = sequence((10, {}), (20, {"ear": 0.05}))
    found = detect_blink(samples, 0.30, T)
    assert not found.passed and "did not reopen" in found.reason


def test_the_blink_baseline_is_the_persons_own() -> None:
    """Narrow eyes (open EAR 0.18) blinking to 0.07 pass; the same dip from 0.30 would too, but a
    fixed 0.2 cut-off would have called the narrow eyes closed throughout."""
    narrow = [replace(s, signals=replace(s.signals, ear=s.signals.ear * 0.6)) for s in
              sequence((10, {}), (3, {"ear": 0.12}), (10, {}))]  # fmt: skip
    assert run([Gesture.BLINK, Gesture.SMILE], narrow)[0] is True


# ---- smile, turns, tilts, closer --------------------------------------------------------------


@pytest.mark.parametrize(
    ("gesture", "signal", "reached", "passes"),
    [
        (Gesture.SMILE, "smile", 0.80, True),  # +14 %
        (Gesture.SMILE, "smile", 0.75, False),  # +7 %
        (Gesture.TURN_LEFT, "yaw", 16.0, True),  # +14°
        (Gesture.TURN_LEFT, "yaw", -16.0, False),  # the other way
        (Gesture.TURN_RIGHT, "yaw", -12.0, True),
        (Gesture.TURN_RIGHT, "yaw", -8.0, False),  # −10°: not far enough
        (Gesture.TILT_UP, "pitch", 20.0, True),
        (Gesture.TILT_UP, "pitch", 0.0, False),
        (Gesture.TILT_DOWN, "pitch", 0.0, True),
        (Gesture.TILT_DOWN, "pitch", 14.0, False),
        (Gesture.MOVE_CLOSER, "size", 104.0, True),  # ×1.3
        (Gesture.MOVE_CLOSER, "size", 96.0, False),  # ×1.2
    ],
)
def test_each_gesture_moves_its_signal_from_the_baseline(
    gesture: Gesture, signal: str, reached: float, passes: bool
) -> None:
    samples = sequence((10, {}), (8, {signal: reached}), (10, {}))
    found = detect_sequence([gesture], samples, 5.0, T)[0]
    assert found.passed is passes, found.reason
    assert found.baseline == pytest.approx(getattr(NEUTRAL, signal))
    if passes:
        assert (found.start_index, found.end_index) == (10, 17)
        assert found.extreme == pytest.approx(reached)
    else:
        assert found.start_index == -1 and found.reason


def test_gestures_must_come_in_the_asked_order() -> None:
    smile_then_closer = sequence(
        (8, {}), (8, {"smile": 0.85}), (8, {}), (8, {"size": 110.0}), (8, {})
    )
    assert run([Gesture.SMILE, Gesture.MOVE_CLOSER], smile_then_closer) == [True, True]
    assert run([Gesture.MOVE_CLOSER, Gesture.SMILE], smile_then_closer) == [True, False]


def test_a_gesture_after_its_window_fails_and_says_so() -> None:
    samples = sequence((8, {}), (8, {"smile": 0.85}), (90, {}), (8, {"yaw": -20.0}), (5, {}))
    results = detect_sequence([Gesture.SMILE, Gesture.TURN_RIGHT], samples, 5.0, T)
    assert [r.passed for r in results] == [True, False]
    assert "after its 5.0 s window" in results[1].reason
    assert run([Gesture.SMILE, Gesture.TURN_RIGHT], samples, window_s=8.0) == [True, True]


def test_a_still_face_passes_no_gesture() -> None:
    rng = np.random.default_rng(0)
    samples = [
        Sample(
            i,
            i / FPS,
            FrameSignals(
                ear=0.3 + rng.normal(0, 0.01),
                smile=0.7 + rng.normal(0, 0.005),
                yaw=2 + rng.normal(0, 1.0),
                pitch=10 + rng.normal(0, 1.0),
                size=80 + rng.normal(0, 0.5),
            ),
        )
        for i in range(60)
    ]
    for gesture in Gesture:
        assert not detect_sequence([gesture], samples, 5.0, T)[0].passed, gesture


def test_no_frames_fail_every_gesture() -> None:
    assert run([Gesture.SMILE, Gesture.BLINK], []) == [False, False]


# ---- the signals on FaceMesh's reading of the real photos -------------------------------------


def test_signals_of_the_real_photos(models_dir: Path) -> None:
    """Yaw changes sign with a mirror image and has the documented sense: obama2.jpg is turned
    to his right (nose toward the image's left) and reads negative."""
    photo = analyse_still(FACES / "obama2.jpg", models_dir)
    mirrored = analyse_still(FACES / "obama2.jpg", models_dir, mirror=True)
    facing = frame_signals(photo.points, 360, 480)
    flipped = frame_signals(mirrored.points, 360, 480)
    assert facing.yaw < -20 < 20 < flipped.yaw
    assert 0.1 < facing.ear < 0.4 and 0.5 < facing.smile < 1.0


# ---- the challenge store ----------------------------------------------------------------------


@pytest.fixture
def session(database_url: str) -> Iterator[Session]:
    """A migrated database of its own: SQLite and PostgreSQL."""
    db = Database(database_url)
    migrate(db.engine)
    with db.session() as opened:
        yield opened
    db.dispose()


def test_a_challenge_is_random_single_use_and_expires(session: Session) -> None:
    company = ensure_company("a", session=session).id
    other = ensure_company("b", session=session).id
    allowed = [g.value for g in Gesture]
    made = [
        challenges.create_challenge(
            allowed,
            0,
            window_ms=5000,
            ttl=timedelta(minutes=2),
            company_id=company,
            session=session,
        )
        for _ in range(30)
    ]
    assert {len(c.gestures) for c in made} == {2, 3}
    assert all(len(set(c.gestures)) == len(c.gestures) for c in made)
    assert len({tuple(c.gestures) for c in made}) > 10  # random orders
    assert len({c.nonce for c in made}) == 30 and all(len(c.nonce) == 32 for c in made)

    first = made[0]
    with pytest.raises(NotFound):
        challenges.consume(first.id, company_id=other, session=session)
    challenges.consume(first.id, company_id=company, session=session)
    with pytest.raises(FailedPrecondition) as used:
        challenges.consume(first.id, company_id=company, session=session)
    assert used.value.reason == "CHALLENGE_USED"

    late = made[1].expires_at + timedelta(seconds=1)
    with pytest.raises(FailedPrecondition) as expired:
        challenges.consume(made[1].id, company_id=company, session=session, now=late)
    assert expired.value.reason == "CHALLENGE_EXPIRED"


def test_a_narrowed_set_is_respected(session: Session) -> None:
    company = ensure_company("a", session=session).id
    for _ in range(10):
        row = challenges.create_challenge(
            ["blink", "move_closer"], 0, window_ms=5000, ttl=timedelta(minutes=1),
            company_id=company, session=session,
        )  # fmt: skip
        assert sorted(row.gestures) == ["blink", "move_closer"]
    with pytest.raises(InvalidArgument, match="at least 2"):
        challenges.create_challenge(
            ["blink"], 0, window_ms=5000, ttl=timedelta(minutes=1), company_id=company,
            session=session,
        )  # fmt: skip
    with pytest.raises(InvalidArgument, match="count is 5"):
        challenges.create_challenge(
            ["blink", "smile"], 5, window_ms=5000, ttl=timedelta(minutes=1), company_id=company,
            session=session,
        )  # fmt: skip


def test_the_default_backend_reads_the_signals_as_onnx_runtime_fp32(models_dir: Path) -> None:
    """FaceMesh on the backend ``auto`` picks (OpenVINO bf16 where the CPU has it) against ONNX
    Runtime fp32 on the real photos and a synthetic turn: the landmarks move by about a pixel,
    the signals by a small fraction of each gesture's threshold (measured: ≤ 1.03 px, yaw ≤ 0.9°,
    pitch ≤ 0.8°, EAR ≤ 0.012, smile ratio ≤ 0.01)."""
    paths = {FACEMESH.name: models_dir / FACEMESH.file}
    reference = load_models("onnxruntime", BackendOptions(precision="fp32"), [FACEMESH], paths)
    default = load_models("auto", BackendOptions(precision="auto"), [FACEMESH], paths)
    try:
        for name in ("obama", "obama2", "obama3", "biden"):
            still = analyse_still(FACES / f"{name}.jpg", models_dir)
            for image in (still.bgr, gesture_frame(still, "turn_right", 1.0)):
                crop = mesh_crop(image, still.box)
                read = []
                for loaded in (reference, default):
                    row = loaded.models[FACEMESH.name].infer({"input_1": crop.tensor[None]})
                    mesh = mesh_from_outputs({k: v[0] for k, v in row.items()}, crop)
                    read.append((mesh.points, frame_signals(mesh.points, 360, 480)))
                (ref_points, ref), (points, got) = read
                assert np.abs(ref_points[:, :2] - points[:, :2]).max() < 1.5, name
                assert abs(ref.yaw - got.yaw) < 1.5 and abs(ref.pitch - got.pitch) < 1.5, name
                assert abs(ref.ear - got.ear) < 0.02 and abs(ref.smile - got.smile) < 0.015, name
    finally:
        for loaded in (reference, default):
            for model in loaded.models.values():
                model.unload()


def test_facemesh_landmarks_land_on_the_face_in_image_pixels(models_dir: Path) -> None:
    """The crop → landmarks → image mapping: FaceMesh's eye and mouth corners sit next to YuNet's
    landmarks on the real photos, and move with the image when it is shifted and scaled."""
    import cv2
    import onnxruntime as ort

    session = ort.InferenceSession(str(models_dir / FACEMESH.file))
    detector = cv2.FaceDetectorYN.create(
        str(models_dir / "face_detection_yunet_2026may.onnx"), "", (320, 320)
    )

    def read(bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        detector.setInputSize(bgr.shape[1::-1])
        _, faces = detector.detect(bgr)
        box = tuple(float(v) for v in faces[0][:4])
        crop = mesh_crop(bgr, box)  # type: ignore[arg-type]
        mesh, flag, _ = session.run(None, {"input_1": crop.tensor[None]})
        found = mesh_from_outputs({"output_mesh": mesh[0], "output_faceflag": flag[0]}, crop)
        return found.points[:, :2], faces[0][4:14].reshape(5, 2), found.presence

    for name in ("obama.jpg", "obama3.jpg", "biden.jpg"):
        bgr = cv2.imread(str(FACES / name))
        assert bgr is not None
        points, yunet, presence = read(bgr)
        assert presence > 0.99
        eyes = [(points[33] + points[133]) / 2, (points[263] + points[362]) / 2]
        ocular = float(np.linalg.norm(eyes[1] - eyes[0]))
        near = [*eyes, points[61], points[291]]
        for mine, theirs in zip(near, [yunet[0], yunet[1], yunet[3], yunet[4]], strict=True):
            assert np.linalg.norm(mine - theirs) < 0.2 * ocular, name
        # the same photo shifted by (40, 25) px and scaled by 0.75
        matrix = np.array([[0.75, 0, 40], [0, 0.75, 25]])
        moved = cv2.warpAffine(bgr, matrix, bgr.shape[1::-1], borderMode=cv2.BORDER_REFLECT)
        expected = points * 0.75 + (40, 25)
        moved_points, _, _ = read(moved)
        assert np.median(np.linalg.norm(moved_points - expected, axis=1)) < 0.03 * ocular, name


def test_noise_is_not_a_face(models_dir: Path) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(str(models_dir / FACEMESH.file))
    noise = np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)
    crop = mesh_crop(noise, (50.0, 50.0, 150.0, 150.0))
    mesh, flag, _ = session.run(None, {"input_1": crop.tensor[None]})
    found = mesh_from_outputs({"output_mesh": mesh[0], "output_faceflag": flag[0]}, crop)
    assert found.presence < 0.01 and found.points.shape == (468, 3)


def test_two_answers_racing_for_one_challenge_one_wins(database_url: str) -> None:
    """Eight threads consume the same challenge at once, each in its own session: exactly one
    succeeds, the others are told it was already answered."""
    db = Database(database_url)
    migrate(db.engine)
    try:
        with db.session() as session:
            company = ensure_company("race", session=session).id
            row = challenges.create_challenge(
                ["smile", "blink"], 2, window_ms=5000, ttl=timedelta(minutes=1),
                company_id=company, session=session,
            )  # fmt: skip
        barrier = threading.Barrier(8)

        def answer() -> str:
            with db.session() as session:
                barrier.wait()
                try:
                    challenges.consume(row.id, company_id=company, session=session)
                except FailedPrecondition as exc:
                    return exc.reason
                return "won"

        with ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(lambda _: answer(), range(8)))
        assert sorted(outcomes) == ["CHALLENGE_USED"] * 7 + ["won"]
    finally:
        db.dispose()
