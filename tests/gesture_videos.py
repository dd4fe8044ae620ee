"""Gesture videos synthesised from the real photos (there are no recorded gesture videos here).

FaceMesh is run once on the still (through ONNX Runtime and OpenCV's YuNet, the same files the
server uses) and its own landmarks place each edit:

- blink: the eye regions inpainted with the surrounding skin plus a thin lash line, for a few
  frames (the eyelids "closed");
- smile: the mouth corners pulled outward and slightly up by a smooth local warp;
- turns and tilts: the central face (nose, mouth, inner eyes) shifted sideways / up or down
  relative to the face's outline by a smooth local warp — a crop-and-shift approximation of a
  head rotation, which FaceMesh reads as yaw / pitch;
- move closer: a zoom about the face's centre.

Each gesture is eased in and out over a few frames, on top of the small natural motion and sensor
noise of ``videos.motion_frames``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from vigil.inference.facemesh import mesh_crop, mesh_from_outputs
from vigil.inference.gestures.signals import MOUTH_CORNERS

#: FaceMesh's eye contours (the rings around each eye).
RIGHT_EYE_RING = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
LEFT_EYE_RING = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
NOSE_TIP = 1


@dataclass
class Still:
    """A photo fitted to the video size and FaceMesh's landmarks on it."""

    bgr: np.ndarray
    points: np.ndarray  # (468, 3)
    box: tuple[float, float, float, float]


def analyse_still(
    photo: Path, models_dir: Path, width: int = 360, height: int = 480, mirror: bool = False
) -> Still:
    """The photo framed as a selfie camera would (the face a third of the width, centred, with
    room above and below), mirrored if asked, and FaceMesh's reading of it."""
    photo_bgr = cv2.imread(str(photo))
    assert photo_bgr is not None, photo
    if mirror:
        photo_bgr = cv2.flip(photo_bgr, 1)
    detector = cv2.FaceDetectorYN.create(
        str(models_dir / "face_detection_yunet_2026may.onnx"), "", photo_bgr.shape[1::-1]
    )
    _, found = detector.detect(photo_bgr)
    assert found is not None and len(found), photo
    fx, fy, fw, fh = (float(v) for v in found[0][:4])
    scale = width / 3 / fw
    matrix = np.array(
        [
            [scale, 0, width / 2 - (fx + fw / 2) * scale],
            [0, scale, height * 0.42 - (fy + fh / 2) * scale],
        ]
    )
    bgr = cv2.warpAffine(
        photo_bgr, matrix, (width, height), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT
    )
    detector.setInputSize((width, height))
    _, faces = detector.detect(bgr)
    assert faces is not None and len(faces), photo
    box = tuple(float(v) for v in faces[0][:4])
    session = ort.InferenceSession(
        str(models_dir / "facemesh_mediapipe.onnx"), providers=["CPUExecutionProvider"]
    )
    crop = mesh_crop(bgr, box)  # type: ignore[arg-type]
    mesh, flag, _ = session.run(None, {"input_1": crop.tensor[None]})
    result = mesh_from_outputs({"output_mesh": mesh[0], "output_faceflag": flag[0]}, crop)
    return Still(bgr, result.points, box)  # type: ignore[arg-type]


def _warp(
    bgr: np.ndarray, centres: Sequence[tuple[float, float, float, float, float]]
) -> np.ndarray:
    """A smooth local warp: each (x, y, dx, dy, radius) moves the image content near (x, y) by
    (dx, dy) with a Gaussian fall-off."""
    h, w = bgr.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    map_x, map_y = xs.copy(), ys.copy()
    for x, y, dx, dy, radius in centres:
        # backward mapping: the output at p takes the input at p − d(p)
        weight = np.exp(-((xs - x - dx) ** 2 + (ys - y - dy) ** 2) / (2 * radius**2))
        map_x -= dx * weight
        map_y -= dy * weight
    return cv2.remap(bgr, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def closed_eyes(still: Still) -> np.ndarray:
    """The still with both eyes closed: in each eye's box the skin between brow and upper lid is
    stretched down over the opening to the lower lid (the upper lid "falls"), with a faint lash
    line where the lids meet."""
    h, w = still.bgr.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    map_y = ys.copy()
    lash = []
    for ring in (RIGHT_EYE_RING, LEFT_EYE_RING):
        eye = still.points[list(ring), :2]
        left, right = float(eye[:, 0].min()), float(eye[:, 0].max())
        top, bottom = float(eye[:, 1].min()), float(eye[:, 1].max())
        opening = bottom - top
        margin = 0.25 * (right - left)
        brow = top - 1.5 * opening
        below = bottom + 0.3 * opening
        # output rows brow..below show input rows brow..top (skin above the eye), stretched
        inside = (ys >= brow) & (ys <= below)
        squashed = brow + (ys - brow) * (top - brow) / (below - brow)
        across = np.clip(np.minimum(xs - (left - margin), (right + margin) - xs) / margin, 0.0, 1.0)
        weight = np.where(inside, across, 0.0).astype(np.float32)
        map_y = map_y * (1 - weight) + squashed.astype(np.float32) * weight
        lash.append(
            ((int(left), int(below - 0.3 * opening)), (int(right), int(below - 0.3 * opening)))
        )
    out = cv2.remap(still.bgr, xs, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    for start, end in lash:
        cv2.line(out, start, end, (60, 55, 60), 1, cv2.LINE_AA)
    return out


def smiling(still: Still, amount: float = 1.0) -> np.ndarray:
    right, left = still.points[MOUTH_CORNERS[0], :2], still.points[MOUTH_CORNERS[1], :2]
    width = float(np.linalg.norm(left - right))
    shift, lift, radius = 0.22 * width * amount, 0.08 * width * amount, 0.28 * width
    return _warp(
        still.bgr,
        [
            (float(right[0]), float(right[1]), -shift, -lift, radius),
            (float(left[0]), float(left[1]), shift, -lift, radius),
        ],
    )


def turned(still: Still, dx: float, dy: float) -> np.ndarray:
    """The central face shifted by (dx, dy) × the face box's width relative to its outline."""
    nose = still.points[NOSE_TIP, :2]
    face_w = still.box[2]
    return _warp(
        still.bgr,
        [(float(nose[0]), float(nose[1]), dx * face_w, dy * face_w, 0.28 * face_w)],
    )


def zoomed(still: Still, factor: float) -> np.ndarray:
    x, y, w, h = still.box
    matrix = cv2.getRotationMatrix2D((x + w / 2, y + h / 2), 0.0, factor)
    return cv2.warpAffine(still.bgr, matrix, still.bgr.shape[1::-1], borderMode=cv2.BORDER_REFLECT)


def gesture_frame(still: Still, gesture: str, amount: float) -> np.ndarray:
    """The still showing ``gesture`` at ``amount`` (0 neutral … 1 full)."""
    if amount <= 0:
        return still.bgr
    if gesture == "blink":
        return closed_eyes(still) if amount >= 0.5 else still.bgr
    if gesture == "smile":
        return smiling(still, amount)
    if gesture == "move_closer":
        return zoomed(still, 1.0 + 0.6 * amount)
    # turn_left: the subject's nose moves toward the image's right (an unmirrored camera)
    shifts = {
        "turn_left": (0.24, 0.0),
        "turn_right": (-0.24, 0.0),
        "tilt_up": (0.0, -0.12),
        "tilt_down": (0.0, 0.12),
    }
    dx, dy = shifts[gesture]
    return turned(still, dx * amount, dy * amount)


def _noisy(
    frame: np.ndarray, rng: np.random.Generator, i: int, framing: tuple[float, float, float]
) -> np.ndarray:
    """The frame as a camera films it: this video's framing (shift and scale), a small sway,
    sensor noise."""
    h, w = frame.shape[:2]
    dx, dy, scale = framing
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), 0.0, scale)
    matrix[:, 2] += (dx + 1.5 * np.sin(i / 5), dy + 1.0 * np.cos(i / 7))
    moved = cv2.warpAffine(frame, matrix, (w, h), borderMode=cv2.BORDER_REFLECT)
    grain = rng.normal(0.0, 2.0, moved.shape)
    noisy: np.ndarray = np.clip(moved.astype(np.float32) + grain, 0, 255).astype(np.uint8)
    return noisy


def gesture_frames(
    still: Still,
    script: Sequence[tuple[str, float]],
    fps: int = 15,
    seed: int = 0,
) -> list[np.ndarray]:
    """Frames following ``script``: (gesture, seconds) steps, "neutral" for a pause. A blink
    closes the eyes for 3 frames (200 ms at 15 fps) in the middle of its step; the other gestures
    ease in over a third of the step, hold, and ease out."""
    rng = np.random.default_rng(seed)
    # each video frames the face a little differently, as two captures would
    framing = (
        float(rng.uniform(-12, 12)),
        float(rng.uniform(-10, 10)),
        float(rng.uniform(0.95, 1.05)),
    )
    frames: list[np.ndarray] = []
    for gesture, seconds in script:
        count = max(1, round(seconds * fps))
        for k in range(count):
            if gesture == "neutral":
                amount = 0.0
            elif gesture == "blink":
                middle = count // 2
                amount = 1.0 if middle - 1 <= k <= middle + 1 else 0.0
            else:
                t = k / max(1, count - 1)
                amount = float(np.clip(min(t, 1 - t) * 3, 0.0, 1.0))
            frame = gesture_frame(still, gesture, amount)
            frames.append(_noisy(frame, rng, len(frames), framing))
    return frames
