"""A second, closer look for small faces in large photos: detector-sized tiles at a higher scale.

The first pass sees a whole photo at ``VIGIL_DETECT_MAX_SIDE`` pixels: in a 6000×8000 photo a
face of 160 px is 13 detector pixels, under what YuNet finds (about 16). When the first pass
finds no face, or only small ones, the photo is looked at again at up to ``ZOOM``× the first
pass's scale (never above full resolution, nor closer than needed to see a face of
``SMALLEST_FACE_PX``), cut into overlapping tiles of the detector's size; the number of tiles is
capped (``VIGIL_DETECT_MAX_TILES``), the scale lowered until they fit.
Tiles overlap by a quarter of their side, so any face up to that size lies whole in one tile;
faces cut by an inner tile edge are dropped (their whole self is in the neighbouring tile, or
was found by the first pass).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from vigil.inference.types import Face

#: How much closer than the first pass the second looks, at most.
ZOOM = 4.0
#: The closer look aims to see a face this small (full pixels) at ``FOUND_DETECTOR_PX``, and
#: looks no closer than that: in a 1800×2400 photo it then needs 4 tiles, not 20.
SMALLEST_FACE_PX = 48.0
#: Detector pixels from which YuNet finds a pasted face in every position measured (it finds
#: most from 16; benchmarks/decode_accuracy.py).
FOUND_DETECTOR_PX = 20.0
#: A face under this many detector pixels in the first pass counts as small: a smaller face may
#: have been missed beside it, and its landmarks are coarse. YuNet finds pasted faces from about
#: 16 detector pixels (benchmarks/decode_accuracy.py); 32 leaves a margin.
SMALL_FACE_DETECTOR_PX = 32.0
#: The second pass is worth its cost only if it looks at least this much closer.
MIN_GAIN = 1.5
#: Faces overlapping more than this (intersection over union) are one face.
SAME_FACE_IOU = 0.3


@dataclass(frozen=True)
class TilePlan:
    """The second pass: the image scaled by ``scale`` to ``size`` (w, h), cut into ``tiles``
    (x, y, w, h in scaled pixels)."""

    scale: float
    size: tuple[int, int]
    tiles: list[tuple[int, int, int, int]]


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    """Evenly spread tile starts covering ``length``, neighbours overlapping by ≥ ``overlap``."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def grid(size: tuple[int, int], tile: int) -> list[tuple[int, int, int, int]]:
    width, height = size
    overlap = tile // 4
    return [
        (x, y, min(tile, width), min(tile, height))
        for y in _starts(height, tile, overlap)
        for x in _starts(width, tile, overlap)
    ]


def plan(
    width: int, height: int, first_factor: float, tile: int, max_tiles: int
) -> TilePlan | None:
    """The second pass for a ``width``×``height`` image whose first pass ran at 1/``first_factor``
    scale; ``None`` when it is off (``max_tiles`` 0) or would look barely closer."""
    first_scale = 1.0 / first_factor
    scale = min(1.0, ZOOM * first_scale, FOUND_DETECTOR_PX / SMALLEST_FACE_PX)
    while max_tiles > 0 and scale >= MIN_GAIN * first_scale:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        tiles = grid(size, tile)
        if len(tiles) <= max_tiles:
            return TilePlan(scale, size, tiles)
        scale *= 0.9
    return None


def needs_second_look(faces: list[Face], first_factor: float) -> bool:
    """No face, or none large enough in the first pass to be sure nothing was missed."""
    largest = max((min(f.box[2], f.box[3]) for f in faces), default=0.0)
    return largest / first_factor < SMALL_FACE_DETECTOR_PX


def _cut(face: Face, tile: tuple[int, int, int, int], size: tuple[int, int]) -> bool:
    """The face touches an edge of the tile that is not an edge of the image."""
    x, y, w, h = face.box
    tx, ty, tw, th = tile
    margin = 2.0
    return (
        (tx > 0 and x <= margin)
        or (ty > 0 and y <= margin)
        or (tx + tw < size[0] and x + w >= tw - margin)
        or (ty + th < size[1] and y + h >= th - margin)
    )


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def search(
    scaled: np.ndarray,
    tiles_plan: TilePlan,
    find: Callable[[np.ndarray], list[Face]],
    full_size: tuple[int, int],
) -> list[Face]:
    """Faces of every tile of ``scaled`` (the image at ``tiles_plan.scale``), in full-image
    pixels, one per face (best score kept where tiles overlap). ``find``: a tile's faces in its
    own pixels, unclipped."""
    found: list[Face] = []
    back = 1.0 / tiles_plan.scale
    width, height = full_size
    for tile in tiles_plan.tiles:
        tx, ty, tw, th = tile
        for face in find(scaled[ty : ty + th, tx : tx + tw]):
            if _cut(face, tile, tiles_plan.size):
                continue
            x, y, w, h = face.box
            x0, y0 = max(0.0, (x + tx) * back), max(0.0, (y + ty) * back)
            x1, y1 = min(float(width), (x + tx + w) * back), min(float(height), (y + ty + h) * back)
            found.append(
                Face(
                    box=(x0, y0, max(0.0, x1 - x0), max(0.0, y1 - y0)),
                    landmarks=((face.landmarks + np.array([tx, ty], np.float32)) * back).astype(
                        np.float32
                    ),
                    score=face.score,
                )
            )
    found.sort(key=lambda f: f.score, reverse=True)
    kept: list[Face] = []
    for face in found:
        if all(_iou(face.box, other.box) <= SAME_FACE_IOU for other in kept):
            kept.append(face)
    return kept


def merge(first: list[Face], closer: list[Face]) -> list[Face]:
    """The closer look's faces (finer landmarks), and the first pass's faces it did not see
    (faces too large for a tile), largest first."""
    extra = [f for f in first if all(_iou(f.box, c.box) <= SAME_FACE_IOU for c in closer)]
    faces = closer + extra
    faces.sort(key=lambda f: f.area, reverse=True)
    return faces


def scale_image(bgr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``bgr`` brought to ``size``: area averaging when shrinking (no aliasing of small faces)."""
    if (bgr.shape[1], bgr.shape[0]) == size:
        return bgr
    shrinking = size[0] < bgr.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(bgr, size, interpolation=interpolation)
