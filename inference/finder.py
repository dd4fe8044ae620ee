"""Decode only what is needed, find the faces (looking closer for small ones), and hand the
caller pixels sharp enough for its crops — all inside the decoded-pixel budget.

- **Detection** needs ``VIGIL_DETECT_MAX_SIDE`` pixels: a larger JPEG is decoded at 1/2, 1/4 or
  1/8 scale (libjpeg's DCT scaling) while that leaves at least the detector's input, and brought
  to the very input size its full decode would get.
- **Embeddings** (``sharp``) keep today's full decode: dlib's embedding moves about 0.05 per
  pixel of landmark jitter, and detecting on a DCT-reduced decode moved the landmarks of the
  2–3 MP samples by 0.3–0.6 px and their embeddings by 0.035–0.048 (benchmarks/decode_accuracy.py),
  over the 0.02 the accuracy gate allows.
- **Liveness crops** come from the reduced decode when the 2.7× crop region still spans
  ``CROP_SOURCE_PX`` of its pixels (the 80 px crop is then still a ≥2× reduction, as from the
  full image); otherwise the image is decoded again at the scale that gives it.
- **Small faces**: see :mod:`vigil.inference.tiling`.

Each decode holds its pixels in the :class:`PixelBudget` from before it starts until its arrays
are dropped; steps release before they acquire again, so no job holds pixels while it waits.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from vigil.inference import metrics, tiling
from vigil.inference.decode_budget import PixelBudget
from vigil.inference.detector import YuNetDetector, detector_size
from vigil.inference.media import (
    DecodedImage,
    ImageLimits,
    decode_probed,
    jpeg_reduction,
    probe,
    reduced_side,
)
from vigil.inference.types import Face

T = TypeVar("T")

#: The 2.7× liveness crop region must span this many source pixels (twice the 80 px crop).
CROP_SOURCE_PX = 160.0
#: The liveness crops' smaller scale (MiniFASNetV2's 2.7; V1SE's 4.0 region is larger).
_CROP_SCALE = 2.7


@dataclass
class StageTimes:
    decode_s: float = 0.0
    detect_s: float = 0.0


def in_pixels_of(face: Face, image: DecodedImage) -> Face:
    """``face`` (full-image pixels) in the pixels of ``image``'s possibly reduced decode."""
    if image.reduction == 1:
        return face
    shrink = 1.0 / image.reduction
    x, y, w, h = face.box
    return Face(
        box=(x * shrink, y * shrink, w * shrink, h * shrink),
        landmarks=face.landmarks * shrink,
        score=face.score,
    )


class FaceFinder:
    """Decode, detect (two passes when needed), and run ``use`` on the pixels and faces."""

    def __init__(
        self,
        detector: YuNetDetector,
        limits: ImageLimits,
        budget: PixelBudget,
        max_tiles: int,
        alone: Callable[[], bool] = lambda: False,
    ) -> None:
        self.detector = detector
        self.limits = limits
        self.budget = budget
        self.max_tiles = max_tiles
        self.alone = alone

    def find(
        self,
        data: bytes,
        deadline: float | None,
        sharp: bool,
        use: Callable[[DecodedImage, list[Face], StageTimes], T],
    ) -> T:
        """``use(image, faces, times)`` with faces in full-image pixels, largest first, and
        ``image`` a decode sharp enough for the crops (full when ``sharp``), still held."""
        times = StageTimes()
        kind, width, height = probe(data, self.limits)
        longer = max(width, height)
        size, factor = detector_size(width, height, self.detector.max_side, self.detector.min_side)
        first = 1 if sharp else jpeg_reduction(kind, longer, max(size))
        closer = tiling.plan(width, height, factor, self.detector.max_side, self.max_tiles)
        closer_reduction = (
            1 if closer is None else min(first, jpeg_reduction(kind, longer, max(closer.size)))
        )
        # When the closer look can use this decode, its scaled copy is held from the start.
        closer_px = closer.size[0] * closer.size[1] if closer and closer_reduction == first else 0

        with self._decoded(data, kind, width, height, first, closer_px, deadline, times) as image:
            faces = self._first_pass(image, times)
            look_closer = closer is not None and tiling.needs_second_look(faces, factor)
            if look_closer and closer_px:
                assert closer is not None
                faces = self._second_pass(image, faces, closer, times)
                look_closer = False
            if not look_closer:
                crops = self._crop_reduction(kind, image, faces, sharp)
                if crops == image.reduction:
                    return use(image, faces, times)
        if look_closer:
            assert closer is not None
            closer_px = closer.size[0] * closer.size[1]
            reduction = closer_reduction
            with self._decoded(
                data, kind, width, height, reduction, closer_px, deadline, times
            ) as image:
                faces = self._second_pass(image, faces, closer, times)
                crops = self._crop_reduction(kind, image, faces, sharp)
                if crops == image.reduction:
                    return use(image, faces, times)
        with self._decoded(data, kind, width, height, crops, 0, deadline, times) as image:
            return use(image, faces, times)

    @contextlib.contextmanager
    def _decoded(
        self,
        data: bytes,
        kind: str,
        width: int,
        height: int,
        reduction: int,
        extra_px: int,
        deadline: float | None,
        times: StageTimes,
    ) -> Iterator[DecodedImage]:
        pixels = reduced_side(width, reduction) * reduced_side(height, reduction) + extra_px
        with self.budget.hold(pixels, deadline):
            started = time.perf_counter()
            image = decode_probed(data, kind, width, height, reduction)
            times.decode_s += time.perf_counter() - started
            yield image

    def _first_pass(self, image: DecodedImage, times: StageTimes) -> list[Face]:
        started = time.perf_counter()
        faces = self.detector.detect(
            image.bgr, alone=self.alone(), full_size=(image.width, image.height)
        )
        times.detect_s += time.perf_counter() - started
        return faces

    def _second_pass(
        self, image: DecodedImage, faces: list[Face], closer: tiling.TilePlan, times: StageTimes
    ) -> list[Face]:
        started = time.perf_counter()
        metrics.SECOND_PASS.inc()
        # The plan was made from the header's sides; EXIF orientation may have swapped them.
        size = closer.size
        if (image.width > image.height) != (size[0] > size[1]) and size[0] != size[1]:
            size = (size[1], size[0])
            closer = tiling.TilePlan(closer.scale, size, tiling.grid(size, self.detector.max_side))
        scaled = tiling.scale_image(image.bgr, size)
        alone = self.alone()
        found = tiling.search(
            scaled,
            closer,
            lambda tile: self.detector.raw_faces(tile, alone),
            (image.width, image.height),
        )
        del scaled
        minimum = self.detector.min_face_px
        found = [f for f in found if min(f.box[2], f.box[3]) >= minimum]
        times.detect_s += time.perf_counter() - started
        return tiling.merge(faces, found)

    def _crop_reduction(
        self, kind: str, image: DecodedImage, faces: list[Face], sharp: bool
    ) -> int:
        """The reduction the crops of ``faces[0]`` need: ``image``'s own when enough."""
        if sharp:
            return 1
        if not faces or image.reduction == 1:
            return image.reduction
        region = _CROP_SCALE * min(faces[0].box[2], faces[0].box[3])
        needed = jpeg_reduction(kind, round(region), round(CROP_SOURCE_PX))
        return min(needed, image.reduction)
