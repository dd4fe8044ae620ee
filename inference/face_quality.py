"""Face image quality for choosing a best shot: size, sharpness, pose and exposure, each 0..1.

The product of the parts (and of the detection score) is the frame's quality; the best shot is
the frame of the subject with the highest quality × liveness score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from vigil.inference.types import Face


@dataclass(frozen=True)
class FaceQuality:
    size: float
    sharpness: float
    pose: float
    exposure: float
    detection: float

    @property
    def value(self) -> float:
        return self.size * self.sharpness * self.pose * self.exposure * self.detection


def _face_region(bgr: np.ndarray, face: Face) -> np.ndarray:
    x, y, w, h = face.box
    height, width = bgr.shape[:2]
    x0, y0 = max(0, int(x)), max(0, int(y))
    x1, y1 = min(width, int(x + w)), min(height, int(y + h))
    region = bgr[y0:y1, x0:x1]
    if region.size == 0:
        return np.zeros((112, 112), np.uint8)
    grey = cv2.cvtColor(region, cv2.COLOR_BGR2GRAY)
    return cv2.resize(grey, (112, 112), interpolation=cv2.INTER_AREA)


def pose_score(landmarks: np.ndarray) -> float:
    """1 for a frontal, level face; falls with yaw (nose off the eyes' midline) and roll."""
    right_eye, left_eye, nose = landmarks[0], landmarks[1], landmarks[2]
    eye_vector = left_eye - right_eye
    eye_distance = float(np.linalg.norm(eye_vector)) or 1.0
    midpoint = (left_eye + right_eye) / 2
    yaw = abs(float(nose[0] - midpoint[0])) / eye_distance
    roll = abs(math.degrees(math.atan2(float(eye_vector[1]), float(eye_vector[0]))))
    return max(0.0, 1.0 - 2.0 * yaw) * max(0.0, 1.0 - roll / 45.0)


def face_quality(bgr: np.ndarray, face: Face) -> FaceQuality:
    """Blocking (OpenCV): run it in a worker thread."""
    grey = _face_region(bgr, face)
    sharp_var = float(cv2.Laplacian(grey, cv2.CV_64F).var())
    mean = float(grey.mean())
    clipped = float(np.mean((grey < 8) | (grey > 247)))
    exposure = min(1.0, max(0.0, 1.0 - (abs(mean - 128.0) - 40.0) / 88.0)) * (1.0 - clipped)
    return FaceQuality(
        size=min(1.0, math.sqrt(max(face.area, 0.0)) / 200.0),
        sharpness=sharp_var / (sharp_var + 60.0),
        pose=pose_score(face.landmarks),
        exposure=exposure,
        detection=float(face.score),
    )
