"""Per-frame gesture signals from FaceMesh's 468 landmarks (pure numpy/OpenCV).

Landmark indices are MediaPipe's canonical mesh's. "Right" and "left" are the subject's own: the
subject's right eye is on the image's left in an unmirrored camera image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

#: Eye contours for the eye aspect ratio: outer corner, inner corner, two upper and two lower lid
#: points facing each other (p1..p6 of Soukupová & Čech's EAR).
RIGHT_EYE = (33, 133, 160, 158, 144, 153)
LEFT_EYE = (263, 362, 387, 385, 373, 380)
MOUTH_CORNERS = (61, 291)
#: Outer eye corners: the inter-ocular distance that normalises the mouth width and measures size.
OUTER_EYE_CORNERS = (33, 263)

#: solvePnP's model: nose tip, chin, eye outer corners, mouth corners, in a generic head's
#: millimetres (x to the subject's left, y up, z toward the camera) — the common six-point model.
POSE_LANDMARKS = (1, 152, 33, 263, 61, 291)
POSE_MODEL = np.array(
    [
        (0.0, 0.0, 0.0),
        (0.0, -63.6, -12.5),
        (-43.3, 32.7, -26.0),
        (43.3, 32.7, -26.0),
        (-28.9, -28.9, -24.1),
        (28.9, -28.9, -24.1),
    ],
    dtype=np.float64,
)


@dataclass(frozen=True)
class FrameSignals:
    """What one frame's landmarks say."""

    #: Mean eye aspect ratio of both eyes (open ≈ 0.25–0.35, closed below ≈ 0.1).
    ear: float
    #: Mouth width / inter-ocular distance.
    smile: float
    #: Head yaw in degrees, positive when the subject turns to their left.
    yaw: float
    #: Head pitch in degrees, positive when the subject tilts their head up.
    pitch: float
    #: Inter-ocular distance in pixels (the face's size in the image).
    size: float


def _distance(points: np.ndarray, a: int, b: int) -> float:
    return float(np.linalg.norm(points[a, :2] - points[b, :2]))


def eye_aspect_ratio(points: np.ndarray, eye: tuple[int, ...]) -> float:
    outer, inner, up1, up2, low1, low2 = eye
    width = _distance(points, outer, inner)
    if width <= 0:
        return 0.0
    return (_distance(points, up1, low1) + _distance(points, up2, low2)) / (2.0 * width)


def head_pose(points: np.ndarray, width: int, height: int) -> tuple[float, float]:
    """(yaw, pitch) in degrees from solvePnP on six landmarks, a pinhole camera whose focal length
    is the image width (no calibration is known; the detectors use changes, not absolute angles)."""
    image_points = points[list(POSE_LANDMARKS), :2].astype(np.float64)
    focal = float(max(width, height))
    camera = np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]], dtype=np.float64)
    ok, rvec, _ = cv2.solvePnP(
        POSE_MODEL, image_points, camera, np.zeros(4), flags=cv2.SOLVEPNP_SQPNP
    )
    if not ok:
        return 0.0, 0.0
    rotation, _ = cv2.Rodrigues(rvec)
    # The model's axes in camera coordinates (camera: x right, y down, z forward).
    model_x, model_y = rotation[:, 0], rotation[:, 1]
    # Yaw: how far the model's left-pointing axis turns toward the camera's depth; pitch: how far
    # its up-pointing axis turns away from the camera.
    yaw = math.degrees(math.atan2(model_x[2], model_x[0]))
    pitch = math.degrees(math.atan2(model_y[2], -model_y[1]))
    return yaw, pitch


def frame_signals(points: np.ndarray, width: int, height: int) -> FrameSignals:
    """The gesture signals of one face's 468 landmarks (image pixels)."""
    ocular = _distance(points, *OUTER_EYE_CORNERS)
    ear = (eye_aspect_ratio(points, RIGHT_EYE) + eye_aspect_ratio(points, LEFT_EYE)) / 2.0
    smile = _distance(points, *MOUTH_CORNERS) / ocular if ocular > 0 else 0.0
    yaw, pitch = head_pose(points, width, height)
    return FrameSignals(ear, smile, yaw, pitch, ocular)
