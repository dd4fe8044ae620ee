"""Geometry on faces: the 5-point chip for the embedding model and the liveness crops."""

from __future__ import annotations

import cv2
import numpy as np

#: Where dlib's 150×150 chip puts YuNet's five landmarks (MODELS.md).
DLIB_TEMPLATE_150 = np.array(
    [[42.74, 44.02], [100.72, 43.74], [71.20, 74.71], [47.64, 101.24], [96.59, 100.97]],
    dtype=np.float32,
)


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The least-squares similarity (Umeyama) mapping ``source`` points onto ``target``; 2×3."""
    src = source.astype(np.float64)
    dst = target.astype(np.float64)
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    covariance = dst_c.T @ src_c / len(src)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    rotation = u @ sign @ vt
    variance = (src_c**2).sum() / len(src)
    scale = float(np.trace(np.diag(singular) @ sign) / variance)
    translation = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, translation[:, None]]).astype(np.float32)


def align_chip(bgr: np.ndarray, landmarks: np.ndarray, size: int = 150) -> np.ndarray:
    """The RGB face chip the embedding model expects, warped from the full-resolution image."""
    matrix = similarity_transform(landmarks, DLIB_TEMPLATE_150 * (size / 150.0))
    chip = cv2.warpAffine(
        bgr, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    return cv2.cvtColor(chip, cv2.COLOR_BGR2RGB)


def scaled_box(
    box: tuple[float, float, float, float], scale: float, width: int, height: int
) -> tuple[int, int, int, int]:
    """Silent-Face's crop: the box scaled about its centre (shrunk to fit), shifted inside.

    Returns (x0, y0, x1, y1) inclusive pixel bounds, as the reference implementation computes them.
    """
    x, y, box_w, box_h = box
    box_w, box_h = max(box_w, 1.0), max(box_h, 1.0)
    scale = min((height - 1) / box_h, (width - 1) / box_w, scale)
    new_w, new_h = box_w * scale, box_h * scale
    cx, cy = x + box_w / 2, y + box_h / 2
    x0, y0 = cx - new_w / 2, cy - new_h / 2
    x1, y1 = cx + new_w / 2, cy + new_h / 2
    if x0 < 0:
        x1, x0 = x1 - x0, 0
    if y0 < 0:
        y1, y0 = y1 - y0, 0
    if x1 > width - 1:
        x0, x1 = x0 - (x1 - width + 1), width - 1
    if y1 > height - 1:
        y0, y1 = y0 - (y1 - height + 1), height - 1
    return int(x0), int(y0), int(x1), int(y1)


def liveness_crop(
    bgr: np.ndarray, box: tuple[float, float, float, float], scale: float, size: int = 80
) -> np.ndarray:
    """The BGR crop MiniFASNet expects: the box scaled by ``scale``, clamped, resized to size²."""
    height, width = bgr.shape[:2]
    x0, y0, x1, y1 = scaled_box(box, scale, width, height)
    region = bgr[y0 : y1 + 1, x0 : x1 + 1]
    return cv2.resize(region, (size, size))
