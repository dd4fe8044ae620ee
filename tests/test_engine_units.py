"""Units of the engine on the real models and photos: decoding, detection, alignment, catalog."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from tests.conftest import FACES, SHARED, SPOOF, read
from vigil.inference import align, catalog
from vigil.inference.backends import BackendOptions, get_backend
from vigil.inference.backends.onnxruntime import OrtModel
from vigil.inference.detector import YuNetDetector, scale_for_detector
from vigil.inference.errors import InvalidMedia, MediaTooLarge, ModelError, UnsupportedMedia
from vigil.inference.media import ImageLimits, decode_image, probe, sniff
from vigil.inference.models import chips_to_tensor
from vigil.server.settings import Settings

LIMITS = ImageLimits()


@pytest.fixture(scope="module")
def detector(models_dir: Path) -> YuNetDetector:
    model = get_backend("onnxruntime").load(
        catalog.YUNET, models_dir / catalog.YUNET.file, BackendOptions(intra_op_threads=1)
    )
    return YuNetDetector(model)


@pytest.mark.parametrize(
    "path", sorted(FACES.glob("*")) + sorted(SPOOF.glob("*.jpg")), ids=lambda p: p.name
)
def test_detector_agrees_with_opencv_reference(detector: YuNetDetector, path: Path) -> None:
    image = decode_image(read(path), LIMITS)
    faces = detector.detect(image.bgr)
    scaled, factor = scale_for_detector(image.bgr, detector.max_side, detector.min_side)
    reference = cv2.FaceDetectorYN.create(
        str(SHARED / "models" / catalog.YUNET.file),
        "",
        (scaled.shape[1], scaled.shape[0]),
        0.8,
        0.3,
    )
    _, found = reference.detect(scaled)
    assert found is not None and len(faces) == len(found) == 1
    assert np.allclose(np.array(faces[0].box), found[0, :4] * factor, atol=0.5)
    assert np.allclose(faces[0].landmarks.reshape(-1), found[0, 4:14] * factor, atol=0.5)


@pytest.mark.parametrize(
    ("width", "height", "max_side"),
    [
        (2333, 1434, 640),
        (1434, 2333, 640),
        (1137, 910, 640),
        (641, 480, 640),
        (92, 112, 640),
        (640, 480, 640),
        (1280, 960, 640),
        (5121, 3001, 640),
        (3001, 5121, 640),
    ],
)
def test_detector_scaling_maps_points_back_to_the_image(
    width: int, height: int, max_side: int
) -> None:
    """A bright square placed in the image is found, through the factor, where it was put: the
    halvings (an odd last row or column dropped, not the first) and the bilinear rest keep pixel
    centres aligned. Along the shorter side the size is rounded, so the factor is off by up to
    half a detector pixel over the whole side."""
    image = np.zeros((height, width, 3), np.uint8)
    cx, cy = round(width * 0.63), round(height * 0.41)
    image[cy - 4 : cy + 5, cx - 4 : cx + 5] = 255
    scaled, factor = scale_for_detector(image, max_side, 320)
    assert 320 <= max(scaled.shape[:2]) <= max_side
    grey = scaled[:, :, 0].astype(np.float64)
    ys, xs = np.indices(grey.shape)
    found = np.array([(xs * grey).sum(), (ys * grey).sum()]) / grey.sum()
    # Pixel centres: detector pixel i covers image pixels around (i + 0.5) * factor - 0.5.
    error = np.abs((found + 0.5) * factor - 0.5 - [cx, cy])
    longer, shorter = (0, 1) if width >= height else (1, 0)
    assert error[longer] <= 0.5 + 0.05 * factor, error
    assert error[shorter] <= 0.5 + 0.25 * factor, error


@pytest.mark.parametrize(("width", "height"), [(2560, 1), (1, 2560), (32, 16384)])
def test_detector_scaling_survives_needle_thin_images(width: int, height: int) -> None:
    scaled, factor = scale_for_detector(np.zeros((height, width, 3), np.uint8), 256, 160)
    assert min(scaled.shape[:2]) >= 1 and max(scaled.shape[:2]) <= 256
    assert max(height, width) / factor == pytest.approx(max(scaled.shape[:2]), rel=0.01)


def test_exif_orientation_is_honoured(detector: YuNetDetector) -> None:
    """The spoof samples are stored sideways with EXIF orientation 6; upright they are portrait."""
    image = decode_image(read(SPOOF / "image_T1.jpg"), LIMITS)
    assert (image.width, image.height) == (480, 640)
    raw = cv2.imdecode(
        np.frombuffer(read(SPOOF / "image_T1.jpg"), np.uint8),
        cv2.IMREAD_IGNORE_ORIENTATION | cv2.IMREAD_COLOR,
    )
    assert raw is not None
    assert raw.shape[:2] == (480, 640)  # stored landscape
    assert len(detector.detect(image.bgr)) == 1


def test_similarity_transform_recovers_a_known_transform() -> None:
    angle, scale, shift = np.deg2rad(12.0), 1.7, np.array([30.0, -12.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    source = align.DLIB_TEMPLATE_150 * 2.0 + 5.0
    target = (scale * (rotation @ source.T)).T + shift
    matrix = align.similarity_transform(source, target)
    mapped = (matrix[:, :2] @ source.T).T + matrix[:, 2]
    assert np.allclose(mapped, target, atol=1e-3)


def test_chip_puts_the_landmarks_on_the_template(detector: YuNetDetector) -> None:
    image = decode_image(read(FACES / "obama.jpg"), LIMITS)
    face = detector.detect(image.bgr)[0]
    matrix = align.similarity_transform(face.landmarks, align.DLIB_TEMPLATE_150)
    mapped = (matrix[:, :2] @ face.landmarks.T).T + matrix[:, 2]
    assert np.abs(mapped - align.DLIB_TEMPLATE_150).max() < 6.0  # five points, four parameters
    chip = align.align_chip(image.bgr, face.landmarks)
    assert chip.shape == (150, 150, 3) and chip.dtype == np.uint8


def test_liveness_crop_box_stays_inside_the_image() -> None:
    x0, y0, x1, y1 = align.scaled_box((10, 10, 100, 120), 4.0, 480, 640)
    assert (x0, y0) == (0, 0) and (x1 - x0, y1 - y0) == (400, 480)  # shifted, not clipped
    # A box that cannot grow 4x inside the image is scaled as far as it fits.
    x0, y0, x1, y1 = align.scaled_box((100, 100, 200, 200), 4.0, 480, 640)
    assert 0 <= x0 < x1 <= 479 and 0 <= y0 < y1 <= 639
    assert x1 - x0 == pytest.approx(479, abs=1)
    x0, y0, x1, y1 = align.scaled_box((200, 300, 50, 50), 2.7, 480, 640)
    assert (x1 - x0, y1 - y0) == pytest.approx((135, 135), abs=1)
    assert (x0 + x1) / 2 == pytest.approx(225, abs=1)


def test_sniffing_ignores_names_and_declarations() -> None:
    assert sniff(read(FACES / "astronaut.png")) == "image/png"
    assert sniff(read(FACES / "obama.jpg")) == "image/jpeg"
    assert sniff(b"GIF89a" + b"\0" * 20) == "image/gif"
    assert sniff(b"II*\x00" + b"\0" * 20) == "image/tiff"
    assert sniff(b"\0\0\0\x18ftypheic" + b"\0" * 20) == "image/heic"
    assert sniff(b"hello world") is None


def test_decompression_bomb_is_refused_from_the_header() -> None:
    _, png = cv2.imencode(".png", np.zeros((64, 64, 3), np.uint8))
    data = bytearray(png.tobytes())
    data[16:24] = (30000).to_bytes(4, "big") * 2  # IHDR width and height
    with pytest.raises(MediaTooLarge, match="30000×30000"):
        probe(bytes(data), LIMITS)


def test_truncated_jpeg_is_refused() -> None:
    data = read(FACES / "obama.jpg")
    with pytest.raises(InvalidMedia, match="truncated"):
        decode_image(data[: len(data) // 2], LIMITS)


def test_unsupported_types_are_named() -> None:
    _, gif = cv2.imencode(".gif", np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(UnsupportedMedia, match="GIF"):
        decode_image(gif.tobytes(), LIMITS)


def test_catalog_install_verifies_every_hash(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    shutil.copytree(SHARED / "models", mirror)
    target = tmp_path / "models"
    installed = catalog.install(target, str(mirror))
    assert sorted(p.name for p in installed) == sorted(s.file for s in catalog.DEFAULT_MODELS)
    assert set(catalog.verify_installed(target)) == {s.name for s in catalog.DEFAULT_MODELS}
    # A corrupt installed file is reported at start-up with the file's name.
    victim = target / catalog.DLIB_RESNET.file
    victim.write_bytes(victim.read_bytes()[:-10])
    with pytest.raises(ModelError, match=r"dlib_face_recognition_resnet_model_v1\.onnx is corrupt"):
        catalog.verify_installed(target)
    # A corrupt mirror copy is refused and leaves no file (nor temp file) behind.
    victim.unlink()
    (mirror / catalog.DLIB_RESNET.file).chmod(0o644)
    (mirror / catalog.DLIB_RESNET.file).write_bytes(b"not a model")
    with pytest.raises(ModelError, match="sha256"):
        catalog.install(target, str(mirror))
    assert not victim.exists()
    assert not [p for p in target.iterdir() if p.name.endswith(".part")]


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"missing.*vigil models install"):
        catalog.verify_installed(tmp_path)


def test_the_cpu_backend_answers_the_same_with_one_thread_or_several(
    detector: YuNetDetector, models_dir: Path
) -> None:
    """On the CPU a model holds a one-thread session for calls beside others and a wide one for a
    call alone; the ``alone`` hint changes speed only, never the template."""
    embedder = get_backend("onnxruntime").load(
        catalog.DLIB_RESNET,
        models_dir / catalog.DLIB_RESNET.file,
        BackendOptions(intra_op_threads=2),
    )
    assert isinstance(embedder, OrtModel)  # typed as the backends' LoadedModel
    assert embedder.narrow is not None and embedder.narrow is not embedder.session
    image = decode_image(read(FACES / "obama.jpg"), LIMITS)
    face = detector.detect(image.bgr)[0]
    chip = chips_to_tensor([align.align_chip(image.bgr, face.landmarks)])
    wide = embedder.infer({"input": chip}, alone=True)["embedding"]
    narrow = embedder.infer({"input": chip}, alone=False)["embedding"]
    np.testing.assert_allclose(wide, narrow, atol=1e-5)
    single = get_backend("onnxruntime").load(
        catalog.DLIB_RESNET, models_dir / catalog.DLIB_RESNET.file, BackendOptions(1)
    )
    assert isinstance(single, OrtModel)
    assert single.narrow is None  # one thread configured: one session
    np.testing.assert_allclose(single.infer({"input": chip})["embedding"], wide, atol=1e-5)
    embedder.unload()
    with pytest.raises(ModelError, match="unloaded"):
        embedder.infer({"input": chip}, alone=False)


@pytest.mark.parametrize(("name", "value"), [("detect_max_side", 0), ("detect_min_side", 0)])
def test_detector_sizes_that_cannot_work_are_refused_at_startup(name: str, value: int) -> None:
    overrides: dict[str, Any] = {name: value}
    with pytest.raises(ValidationError, match=name):
        Settings(**overrides)
