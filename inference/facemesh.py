"""MediaPipe FaceMesh pre- and post-processing: a square crop around the tracked face's box in,
468 landmarks in image pixels and a face-present score out (pure numpy/OpenCV; the engine runs
the model through its batcher)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from vigil.inference.catalog import FACEMESH

INPUT_SIDE = FACEMESH.inputs[0].shape[1] or 192
LANDMARKS = 468


@dataclass(frozen=True)
class MeshCrop:
    """The model's input for one face and where it came from in the image."""

    tensor: np.ndarray  # (192, 192, 3) float32 RGB 0..1
    origin: tuple[float, float]  # the crop's top-left corner in image pixels
    scale: float  # image pixels per crop pixel


@dataclass(frozen=True)
class FaceMesh:
    """468 landmarks (x, y in image pixels; z in the same pixel scale, relative depth) and the
    model's face-present probability."""

    points: np.ndarray  # (468, 3) float32
    presence: float


def mesh_crop(
    bgr: np.ndarray,
    box: tuple[float, float, float, float],
    scale: float = FACEMESH.thresholds["crop_scale"],
) -> MeshCrop:
    """A square crop of side ``scale`` × the box's longer side, centred on the box, resized to
    192×192 in one affine warp (outside the image: black, as MediaPipe pads)."""
    x, y, w, h = box
    side = max(w, h) * scale
    left, top = x + w / 2 - side / 2, y + h / 2 - side / 2
    per_pixel = side / INPUT_SIDE
    matrix = np.array(
        [[1 / per_pixel, 0, -left / per_pixel], [0, 1 / per_pixel, -top / per_pixel]],
        dtype=np.float64,
    )
    crop = cv2.warpAffine(
        bgr,
        matrix,
        (INPUT_SIDE, INPUT_SIDE),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )
    rgb = cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)
    tensor = np.ascontiguousarray(rgb, dtype=np.float32) / 255.0
    return MeshCrop(tensor, (float(left), float(top)), float(per_pixel))


def mesh_from_outputs(row: dict[str, np.ndarray], crop: MeshCrop) -> FaceMesh:
    """One batch row of the model's outputs → landmarks in image pixels and a probability."""
    points = np.asarray(row["output_mesh"], dtype=np.float32).reshape(LANDMARKS, 3) * crop.scale
    points[:, 0] += crop.origin[0]
    points[:, 1] += crop.origin[1]
    # the converted graph ends in a sigmoid: 1.0 on the faces under ../shared/data, 8e-5 on noise
    presence = float(np.asarray(row["output_faceflag"]).reshape(-1)[0])
    return FaceMesh(points, presence)
