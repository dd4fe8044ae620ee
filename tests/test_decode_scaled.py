"""Decoding only what is needed: DCT-reduced JPEG decodes, and crops still as sharp as today's
(real models, real photos; today's path is a full decode, one detection, crops from it)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmarks.decode_accuracy import (
    Models,
    engine,
    faceless_background,
    read_bgr,
    synthetic_photo,
    today,
)
from tests.conftest import FACES, SPOOF, make_settings, read
from vigil.inference.decisions import distance
from vigil.inference.detector import detector_size, scale_for_detector
from vigil.inference.engine import Engine
from vigil.inference.errors import InvalidMedia
from vigil.inference.media import ImageLimits, decode_image, jpeg_reduction
from vigil.server.app import engine_config

LIMITS = ImageLimits()
SAMPLES = sorted(FACES.glob("*.jpg")) + sorted(SPOOF.glob("*.jpg"))


@pytest.fixture(scope="module")
def models(models_dir: Path) -> Models:
    return Models(models_dir)


def test_a_reduced_decode_keeps_exif_orientation() -> None:
    """The spoof samples are stored sideways (EXIF orientation 6): the half-size decode is
    upright too, and reports the full upright size."""
    image = decode_image(read(SPOOF / "image_T1.jpg"), LIMITS, reduction=2)
    assert image.bgr.shape[:2] == (320, 240)
    assert (image.width, image.height, image.reduction) == (480, 640, 2)
    full = decode_image(read(SPOOF / "image_T1.jpg"), LIMITS)
    half = cv2.resize(full.bgr, (240, 320), interpolation=cv2.INTER_AREA)
    assert np.abs(half.astype(int) - image.bgr.astype(int)).mean() < 3.0  # the same picture


def test_reduction_is_the_largest_that_leaves_the_detector_its_input() -> None:
    assert jpeg_reduction("image/jpeg", 2204, 640) == 2  # 1102 ≥ 640 > 551
    assert jpeg_reduction("image/jpeg", 8000, 640) == 8
    assert jpeg_reduction("image/jpeg", 1200, 640) == 1  # 600 < 640: today's full decode
    assert jpeg_reduction("image/png", 8000, 640) == 1  # PNG decodes in full whatever the flag


def test_a_reduced_decode_still_checks_the_header() -> None:
    data = bytearray(read(FACES / "obama.jpg"))
    with pytest.raises(InvalidMedia, match="truncated"):
        decode_image(bytes(data[: len(data) // 2]), LIMITS, reduction=2)


@pytest.mark.parametrize(
    ("width", "height"), [(2204, 970), (970, 2204), (1137, 910), (92, 112), (8660, 5773)]
)
def test_detector_size_is_what_the_full_image_gets(width: int, height: int) -> None:
    scaled, factor = scale_for_detector(np.zeros((height, width, 3), np.uint8), 640, 320)
    size, computed = detector_size(width, height, 640, 320)
    assert size == (scaled.shape[1], scaled.shape[0]) and computed == pytest.approx(factor)


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_results_stay_as_today_on_the_samples(models: Models, path: Path) -> None:
    """The gate of the issue: embedding distance and liveness score within 0.02 of today's full
    decode on every sample (embeddings keep the full decode, so they do not move at all)."""
    data = read(path)
    finder = models.finder()
    before, after = today(models, data, "embedding"), engine(models, finder, data, "embedding")
    assert distance(np.asarray(before.value), np.asarray(after.value)) <= 1e-4
    before, after = today(models, data, "liveness"), engine(models, finder, data, "liveness")
    assert abs(float(before.value or 0.0) - float(after.value or 0.0)) <= 0.02
    assert np.allclose(before.faces[0].box, after.faces[0].box, atol=0.03 * before.faces[0].box[2])


def test_large_photos_are_decoded_reduced_for_liveness_and_in_full_for_embeddings(
    models: Models,
) -> None:
    seen: dict[str, int] = {}
    finder = models.finder()
    data = read(FACES / "biden.jpg")  # 970×2204: half size still leaves the detector 1102 px
    for what, sharp in (("liveness", False), ("embedding", True)):
        seen[what] = finder.find(data, None, sharp, lambda image, faces, times: image.reduction)
    assert seen == {"liveness": 2, "embedding": 1}


def test_a_small_face_gets_its_crops_from_a_sharper_decode(models: Models) -> None:
    """A 100 px face in a 1800×2400 photo: its 2.7× crop region is 270 px, 135 at half size —
    under the 160 the 80 px crop needs, so the crops come from the full decode."""
    source = read_bgr(FACES / "obama2.jpg")
    data, _ = synthetic_photo(
        1800,
        2400,
        100,
        (0.5, 0.33),
        source,
        models.detector.detect(source)[0],
        faceless_background(),
    )
    finder = models.finder()
    reduction = finder.find(data, None, False, lambda image, faces, times: image.reduction)
    assert reduction == 1
    before, after = today(models, data, "liveness"), engine(models, finder, data, "liveness")
    assert abs(float(before.value or 0.0) - float(after.value or 0.0)) <= 0.02


async def test_the_engine_drops_the_pixels_with_the_detector_job(models_dir: Path) -> None:
    engine_ = Engine(engine_config(make_settings(models_dir, intra_op_threads=1)))
    await engine_.start()
    try:
        image, faces, timings = await engine_.detect(read(FACES / "biden.jpg"))
        assert (image.width, image.height) == (970, 2204) and image.bgr.size == 0
        assert len(faces) == 1 and timings.decode_ms > 0
        assert engine_.pixel_budget.in_flight == 0
        assert engine_.pixel_budget.peak == 485 * 1102  # the half-size decode, nothing more
    finally:
        await engine_.stop()
