"""Decoding only what is needed, and finding small faces: accuracy and cost against a full decode.

Three tables, printed and written to ``--out`` (default ``benchmarks/reports/decode_accuracy.md``):

1. **Samples** (``../shared/data/faces/*.jpg``, ``spoof/*.jpg``): today's path (full decode,
   detection, chip and crops from the full image) against the engine's (:class:`FaceFinder`:
   DCT-reduced decode for detection and liveness crops, full decode for embeddings). Embedding
   distance and liveness-score shift (the gate: ≤ 0.02 each), and decode+detect time of both.
   Also what an embedding from a reduced-decode detection would move (why embeddings keep the
   full decode).
2. **Small faces**: obama2.jpg pasted, its face ``F`` px wide, into the lower half (no face)
   of biden.jpg, blurred and enlarged to ``W``×``H`` (JPEG q90), at four positions: found
   before/after (after: as the subject, the largest face), box IoU with the pasted face,
   embedding distance to obama.jpg.
3. **Cost of a photo without a face** (the closer look runs in full) per photo size.

Times are the CPU time of the one thread that does the work (OpenCV and ONNX Runtime held to
one thread each), best of 5 (``--quick``: of 1): on a shared machine, wall-clock times measure
the neighbours.

    .venv/bin/python -m benchmarks.decode_accuracy [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from vigil.inference import align, catalog
from vigil.inference.backends import BackendOptions, LoadedModel, get_backend
from vigil.inference.decisions import distance
from vigil.inference.decode_budget import PixelBudget
from vigil.inference.detector import YuNetDetector
from vigil.inference.finder import FaceFinder, StageTimes, in_pixels_of
from vigil.inference.media import DecodedImage, ImageLimits, decode_image
from vigil.inference.models import chips_to_tensor, ensemble_real_probability
from vigil.inference.types import Face

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
MODELS = ROOT.parent / "shared" / "models"
LIMITS = ImageLimits()
MAX_TILES = 20
#: The four places the face is pasted, as fractions of the free width and height.
POSITIONS = ((0.05, 0.05), (0.5, 0.33), (0.9, 0.85), (0.2, 0.6))


def read_bgr(path: Path) -> np.ndarray:
    image = cv2.imread(str(path))
    assert image is not None, path
    return image


class Models:
    """The detector, the embedder and the liveness pair, one thread each (ONNX Runtime)."""

    def __init__(self, models_dir: Path = MODELS) -> None:
        backend = get_backend("onnxruntime")
        options = BackendOptions(intra_op_threads=1)

        def load(spec: catalog.ModelSpec) -> LoadedModel:
            return backend.load(spec, models_dir / spec.file, options)

        self.detector = YuNetDetector(load(catalog.YUNET), min_face_px=20.0)
        self.embedder = load(catalog.DLIB_RESNET)
        self.liveness = [load(catalog.MINIFASNET_V2), load(catalog.MINIFASNET_V1SE)]

    def finder(self, max_tiles: int = MAX_TILES) -> FaceFinder:
        return FaceFinder(self.detector, LIMITS, PixelBudget(0), max_tiles)

    def embedding(self, bgr: np.ndarray, face: Face) -> np.ndarray:
        chip = chips_to_tensor([align.align_chip(bgr, face.landmarks)])
        return np.asarray(self.embedder.infer({"input": chip}, alone=True)["embedding"][0])

    def live_score(self, bgr: np.ndarray, face: Face) -> float:
        logits = []
        for model in self.liveness:
            crop = align.liveness_crop(bgr, face.box, model.spec.thresholds["crop_scale"])
            logits.append(model.infer({"input": chips_to_tensor([crop])}, alone=True)["logits"][0])
        return ensemble_real_probability(logits)[0]


@dataclass
class Seen:
    """What a path saw: faces (full pixels), and the subject's embedding or liveness score."""

    faces: list[Face]
    value: np.ndarray | float | None
    seconds: float


def today(models: Models, data: bytes, what: str) -> Seen:
    """The path before this change: full decode, one detection pass, crops from the full image."""
    started = time.thread_time()
    image = decode_image(data, LIMITS)
    faces = models.detector.detect(image.bgr)
    seconds = time.thread_time() - started
    return Seen(faces, _value(models, what, image, faces), seconds)


def engine(models: Models, finder: FaceFinder, data: bytes, what: str) -> Seen:
    """The engine's path (the same FaceFinder call the engine's detector job makes)."""
    started = time.thread_time()

    def use(image: DecodedImage, faces: list[Face], times: StageTimes) -> Seen:
        seconds = time.thread_time() - started
        subject = [in_pixels_of(faces[0], image)] if faces else []
        return Seen(faces, _value(models, what, image, subject), seconds)

    return finder.find(data, None, what == "embedding", use)


def _value(models: Models, what: str, image: DecodedImage, faces: list[Face]) -> Any:
    if not faces or what == "detect":
        return None
    if what == "embedding":
        return models.embedding(image.bgr, faces[0])
    return models.live_score(image.bgr, faces[0])


def best_of(runs: int, measure: Callable[..., Seen]) -> Seen:
    seen = [measure() for _ in range(runs)]
    return min(seen, key=lambda s: s.seconds)


def samples_table(models: Models, runs: int) -> list[str]:
    finder = models.finder()
    paths = sorted((DATA / "faces").glob("*.jpg")) + sorted((DATA / "spoof").glob("*.jpg"))
    rows = [
        "| sample | size | embedding moved | liveness moved | reduced-detection embedding "
        "would move | decode+detect before (CPU ms) | after, liveness/detect (CPU ms) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for path in paths:
        data = path.read_bytes()
        full = decode_image(data, LIMITS)
        before_e = today(models, data, "embedding")
        before_l = today(models, data, "liveness")
        after_e = engine(models, finder, data, "embedding")
        after_l = engine(models, finder, data, "liveness")
        moved_e = distance(np.asarray(before_e.value), np.asarray(after_e.value))
        moved_l = abs(float(before_l.value or 0.0) - float(after_l.value or 0.0))
        # Landmarks from the liveness path's (reduced) detection, chip from the full image.
        would = distance(np.asarray(before_e.value), models.embedding(full.bgr, after_l.faces[0]))
        time_before = best_of(runs, lambda data=data: today(models, data, "detect")).seconds
        time_after = best_of(runs, lambda data=data: engine(models, finder, data, "detect")).seconds
        rows.append(
            f"| {path.parent.name}/{path.name} | {full.width}×{full.height} | {moved_e:.4f} | "
            f"{moved_l:.4f} | {would:.4f} | {time_before * 1000:.1f} | {time_after * 1000:.1f} |"
        )
    return rows


def faceless_background() -> np.ndarray:
    """The lower half of biden.jpg (suit and hands): no face is found in it at any size."""
    biden = read_bgr(DATA / "faces" / "biden.jpg")
    return np.ascontiguousarray(biden[biden.shape[0] // 2 :])


def synthetic_photo(
    width: int,
    height: int,
    face_px: float,
    where: tuple[float, float],
    source: np.ndarray,
    source_face: Face,
    background: np.ndarray,
) -> tuple[bytes, tuple[float, float, float, float]]:
    """A JPEG (q90) of ``background`` enlarged to ``width``×``height`` and blurred, with
    ``source`` pasted at ``where`` (fractions of the free space) scaled so that its face box is
    ``face_px`` wide; and that face box in the photo's pixels."""
    canvas = cv2.resize(background, (width, height), interpolation=cv2.INTER_LINEAR)
    canvas = cv2.GaussianBlur(canvas, (0, 0), max(width, height) / 400)
    scale = face_px / source_face.box[2]
    pasted = cv2.resize(source, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    ph, pw = pasted.shape[:2]
    x, y = round(where[0] * (width - pw)), round(where[1] * (height - ph))
    canvas[y : y + ph, x : x + pw] = pasted
    ok, encoded = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    sx, sy, sw, sh = source_face.box
    return encoded.tobytes(), (sx * scale + x, sy * scale + y, sw * scale, sh * scale)


def iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def small_faces_table(models: Models, sizes: list[tuple[int, int]], faces: list[int]) -> list[str]:
    finder = models.finder()
    source = read_bgr(DATA / "faces" / "obama2.jpg")
    source_face = models.detector.detect(source)[0]
    background = faceless_background()
    reference = read_bgr(DATA / "faces" / "obama.jpg")
    reference_embedding = models.embedding(reference, models.detector.detect(reference)[0])
    rows = [
        "| photo | face px | found before | found after | worst box IoU | embedding distance "
        "to obama.jpg (max) | after, embedding path (CPU ms, mean) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for width, height in sizes:
        for face_px in faces:
            before = after = 0
            ious: list[float] = []
            distances: list[float] = []
            seconds: list[float] = []
            for where in POSITIONS:
                data, truth = synthetic_photo(
                    width, height, face_px, where, source, source_face, background
                )
                old = today(models, data, "detect")
                before += any(iou(f.box, truth) > 0.5 for f in old.faces)
                new = engine(models, finder, data, "embedding")
                seconds.append(new.seconds)
                hits = [f for f in new.faces if iou(f.box, truth) > 0.5]
                if hits and new.faces[0] is hits[0]:
                    after += 1
                    ious.append(iou(hits[0].box, truth))
                    distances.append(distance(reference_embedding, np.asarray(new.value)))
            rows.append(
                f"| {width}×{height} | {face_px} | {before}/4 | {after}/4 | "
                f"{min(ious, default=0.0):.2f} | {max(distances, default=float('nan')):.3f} | "
                f"{statistics.mean(seconds) * 1000:.0f} |"
            )
    return rows


def no_face_table(models: Models, sizes: list[tuple[int, int]], runs: int) -> list[str]:
    finder = models.finder()
    background = faceless_background()
    rows = [
        "| photo without a face | before: decode+detect (CPU ms) | after (CPU ms) | extra (CPU ms) "
        "|",
        "| --- | --- | --- | --- |",
    ]
    for width, height in sizes:
        canvas = cv2.GaussianBlur(
            cv2.resize(background, (width, height)), (0, 0), max(width, height) / 400
        )
        data = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
        before = best_of(runs, lambda data=data: today(models, data, "detect")).seconds * 1000
        after = (
            best_of(runs, lambda data=data: engine(models, finder, data, "liveness")).seconds * 1000
        )
        rows.append(f"| {width}×{height} | {before:.0f} | {after:.0f} | {after - before:.0f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repeats (a smoke)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/reports/decode_accuracy.md")
    args = parser.parse_args()
    runs = 1 if args.quick else 5
    sizes = (
        [(1800, 2400), (6000, 8000)]
        if args.quick
        else [
            (1800, 2400),
            (3000, 4000),
            (4000, 6000),
            (6000, 8000),
            (8660, 5773),
        ]
    )
    face_sizes = [60, 100, 140] if args.quick else [40, 50, 60, 70, 80, 100, 120, 140, 160]
    cv2.setNumThreads(1)
    models = Models()
    sections = [
        ("Samples: the engine's path against a full decode", samples_table(models, runs)),
        ("Small faces pasted into large photos", small_faces_table(models, sizes, face_sizes)),
        ("A photo without a face: the closer look's cost", no_face_table(models, sizes, runs)),
    ]
    text = "\n\n".join(f"## {title}\n\n" + "\n".join(rows) for title, rows in sections) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(f"# Decode accuracy (benchmarks/decode_accuracy.py)\n\n{text}")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
