"""Check the TensorRT backend on a real GPU: build, compare with ONNX Runtime CPU, measure.

For every model of the catalog and every precision asked (fp32, fp16): build the engine (or read
it from ``--cache``), run it on inputs made from the sample photos, compare its outputs with ONNX
Runtime's CPU provider on the same inputs within a tolerance per model kind and precision, then
measure items per second at each batch size (YuNet: images per second at 640 px, its batch is
1). Prints one table and, with ``--json``, writes the numbers. Exit status 1 when a comparison
fails, 2 when TensorRT, cuda-python, a GPU or the models are missing.

Run it through ``scripts/gpu_check.sh`` inside an NGC TensorRT container. The comparison rules
and the report are plain Python, tested on CPU (tests/test_tensorrt.py).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: Outputs may differ from ONNX Runtime fp32 by at most this, as the relative error
#: ``max|trt - ort| / max|ort|`` over each output (TF32 is off for fp32 engines, so fp32 is
#: kernel-order rounding only; fp16 carries ~3 significant digits through a deep network).
RELATIVE_TOLERANCE = {"fp32": 1e-3, "fp16": 3e-2}
#: Embeddings are compared by the L2 distance of each row (the unit of the match threshold,
#: 0.6): the GPU tests' limits.
EMBEDDING_TOLERANCE = {"fp32": 0.01, "fp16": 0.05}
DEFAULT_BATCHES = (1, 32, 128)


@dataclass(frozen=True)
class Comparison:
    output: str
    metric: str
    value: float
    limit: float

    @property
    def ok(self) -> bool:
        return math.isfinite(self.value) and self.value <= self.limit


@dataclass
class ModelReport:
    model: str
    precision: str
    load_s: float
    comparisons: list[Comparison]
    #: batch → items per second (faces, or images for the detector)
    throughput: dict[int, float]
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and all(c.ok for c in self.comparisons)


def compare(
    output: str, reference: np.ndarray, candidate: np.ndarray, precision: str, embedding: bool
) -> Comparison:
    """How far ``candidate`` is from ``reference`` for one output, against its tolerance."""
    if reference.shape != candidate.shape:
        return Comparison(output, f"shape {candidate.shape} != {reference.shape}", math.inf, 0.0)
    ref = reference.astype(np.float64)
    got = candidate.astype(np.float64)
    if embedding:
        flat = (got - ref).reshape(len(ref), -1)
        value = float(np.linalg.norm(flat, axis=1).max()) if len(ref) else 0.0
        return Comparison(output, "max L2 distance", value, EMBEDDING_TOLERANCE[precision])
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    error = float(np.abs(got - ref).max()) if ref.size else 0.0
    value = error / scale if scale > 0 else error
    return Comparison(output, "max relative error", value, RELATIVE_TOLERANCE[precision])


def items_per_second(items: int, seconds: float) -> float:
    return items / seconds if seconds > 0 else 0.0


def format_report(reports: Sequence[ModelReport], batches: Sequence[int]) -> str:
    """One line per model and precision: the worst comparison, load time, rates per batch."""
    header = ["model", "precision", "check", "worst (limit)", "load s"]
    header += [f"b{b}/s" for b in batches]
    rows = [header]
    for report in reports:
        worst = max(
            report.comparisons,
            key=lambda c: c.value / c.limit if c.limit else math.inf,
            default=None,
        )
        check = "ERROR" if report.error else ("ok" if report.ok else "FAIL")
        detail = report.error or (f"{worst.value:.2e} ({worst.limit:.0e})" if worst else "-")
        row = [report.model, report.precision, check, detail, f"{report.load_s:.1f}"]
        row += [f"{report.throughput[b]:.0f}" if b in report.throughput else "-" for b in batches]
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


# --------------------------------------------------------------------------- on the GPU


def _photos(data_dir: Path, limit: int = 8) -> list[np.ndarray]:
    import cv2

    photos = []
    for path in sorted(data_dir.rglob("*")):
        if path.suffix.lower() in {".jpg", ".jpeg", ".png"}:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is not None:
                photos.append(image)
        if len(photos) >= limit:
            break
    if not photos:  # still a meaningful numeric check, on a fixed pattern
        rng = np.random.default_rng(0)
        photos = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)]
    return photos


def _model_inputs(spec: Any, photos: list[np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """``batch`` rows for ``spec``'s single input, made from the photos (cycled)."""
    import cv2

    from vigil.inference.detector import prepare

    (tensor,) = spec.inputs
    shape = tensor.shape
    if any(d is None for d in shape[1:]):  # the detector: dynamic H/W, batch 1
        return {tensor.name: prepare(photos[0], 640)[0]}
    channels_last = shape[-1] == 3
    height, width = (shape[1], shape[2]) if channels_last else (shape[2], shape[3])
    unit = "0..1" in spec.preprocessing
    rows = []
    for i in range(batch):
        image = cv2.resize(photos[i % len(photos)], (width, height)).astype(np.float32)
        image = image / 255.0 if unit else image
        rows.append(image if channels_last else image.transpose(2, 0, 1))
    return {tensor.name: np.ascontiguousarray(np.stack(rows))}


def _rate(infer: Callable[[], object], items: int, seconds: float, threads: int) -> float:
    """Items per second with ``threads`` callers running ``infer`` for ``seconds``."""
    infer()  # warm
    done = [0] * threads
    stop = time.perf_counter() + seconds

    def worker(slot: int) -> None:
        while time.perf_counter() < stop:
            infer()
            done[slot] += 1

    started = time.perf_counter()
    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return items_per_second(sum(done) * items, time.perf_counter() - started)


def check_model(
    spec: Any,
    path: Path,
    precision: str,
    photos: list[np.ndarray],
    batches: Sequence[int],
    cache: Path,
    seconds: float,
) -> ModelReport:
    import onnxruntime as ort

    from vigil.inference.backends.base import BackendOptions
    from vigil.inference.backends.tensorrt import TensorRTBackend
    from vigil.inference.catalog import DLIB_RESNET

    detector = spec.fixed_batch
    options = BackendOptions(
        cache_dir=cache,
        precision=precision,
        streams=2,
        max_batch_size=1 if detector else max(batches),
        detect_max_side=640,
    )
    started = time.perf_counter()
    model = TensorRTBackend().load(spec, path, options)
    report = ModelReport(spec.name, precision, time.perf_counter() - started, [], {})
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        probe = _model_inputs(spec, photos, 1 if detector else 8)
        names = [o.name for o in session.get_outputs()]
        reference = dict(zip(names, session.run(None, probe), strict=True))
        outputs = model.infer(probe)
        embedding = spec.name == DLIB_RESNET.name
        for name in sorted(reference):
            report.comparisons.append(
                compare(name, reference[name], outputs[name], precision, embedding)
            )
        for batch in (1,) if detector else batches:
            inputs = _model_inputs(spec, photos, batch)
            run = functools.partial(model.infer, inputs)
            report.throughput[batch] = _rate(run, batch, seconds, 2)
    finally:
        model.unload()
    return report


def main(argv: Sequence[str] | None = None) -> int:
    root = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=Path(os.environ.get("VIGIL_MODELS", "")))
    parser.add_argument("--data", type=Path, default=root.parent / "shared" / "data")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "fp16"])
    parser.add_argument("--batches", nargs="+", type=int, default=list(DEFAULT_BATCHES))
    parser.add_argument("--seconds", type=float, default=2.0, help="per rate measured")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/vigil-gpu-check-engines"))
    parser.add_argument("--json", type=Path, help="write the reports there")
    args = parser.parse_args(argv)
    models_dir = args.models if str(args.models) else root.parent / "shared" / "models"

    from vigil.inference.catalog import DEFAULT_MODELS

    try:
        import tensorrt

        print(f"TensorRT {tensorrt.__version__}", flush=True)
    except ImportError as exc:
        print(f"gpu_check: TensorRT is missing ({exc}); run inside an NGC TensorRT container")
        return 2
    missing = [s.file for s in DEFAULT_MODELS if not (models_dir / s.file).is_file()]
    if missing:
        print(f"gpu_check: models missing in {models_dir}: {', '.join(missing)}")
        return 2
    photos = _photos(args.data)
    reports: list[ModelReport] = []
    for spec in DEFAULT_MODELS:
        for precision in args.precisions:
            print(f"{spec.name} {precision}: building / loading", flush=True)
            try:
                report = check_model(
                    spec,
                    models_dir / spec.file,
                    precision,
                    photos,
                    args.batches,
                    args.cache,
                    args.seconds,
                )
            except Exception as exc:  # report it and go on with the other engines
                report = ModelReport(spec.name, precision, 0.0, [], {}, error=repr(exc)[:200])
            reports.append(report)
            print(format_report([report], args.batches).splitlines()[1], flush=True)
    print()
    print(format_report(reports, args.batches))
    if args.json:
        args.json.write_text(
            json.dumps([asdict(r) | {"ok": r.ok} for r in reports], indent=2, default=str)
        )
    if any(r.error for r in reports):
        return 2 if all(r.error for r in reports) else 1
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
