"""The peer: the ``face_recognition`` library (dlib: HOG detector, 68-point shape predictor, the
same ResNet embedding) doing what vigil's Instant API does, on the same image bytes.

A request is: decode the bytes (PIL, EXIF orientation applied, scaled to at most 640 px on the
longer side — vigil detects at that size too), ``face_locations`` (HOG, the library's default),
``face_encodings`` of the largest face, and for verification ``face_distance`` against the other
image's encoding. Throughput uses a pool of 2 processes (dlib's detector is single-threaded);
latency is one request at a time in this process.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import os
import statistics
import sys
import time
import types
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAX_SIDE = 640
Item = tuple[bytes, ...]


def _shim_pkg_resources() -> None:
    """``face_recognition_models`` imports ``pkg_resources`` (gone from setuptools >= 81) only for
    ``resource_filename``; give it that one function instead of pinning an old setuptools."""
    if "pkg_resources" not in sys.modules and importlib.util.find_spec("pkg_resources") is None:
        shim = types.ModuleType("pkg_resources")

        def resource_filename(package: str, resource: str) -> str:
            module = sys.modules.get(package) or importlib.import_module(package)
            return os.path.join(os.path.dirname(module.__file__ or ""), resource)

        shim.__dict__["resource_filename"] = resource_filename
        sys.modules["pkg_resources"] = shim


def load_library() -> Any:
    """Import ``face_recognition``, or raise ImportError with the install line."""
    _shim_pkg_resources()
    try:
        for name in ("dlib", "face_recognition_models"):
            importlib.import_module(name)
    except ImportError as exc:
        raise ImportError(
            f"{exc.name} is not installed: pip install dlib-bin face-recognition-models && "
            "pip install --no-deps face_recognition"
        ) from exc
    import face_recognition

    return face_recognition


def _rgb(data: bytes) -> np.ndarray:
    # Pillow comes with the bench extra (matplotlib's dependency), not with the dev tools, and
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as image:
        upright = ImageOps.exif_transpose(image).convert("RGB")
    upright.thumbnail((MAX_SIDE, MAX_SIDE))
    return np.asarray(upright)


def encode(data: bytes) -> np.ndarray:
    """The largest face's 128-d encoding, as face_recognition computes it."""
    fr = load_library()
    rgb = _rgb(data)
    boxes = fr.face_locations(rgb)  # HOG, upsample once (the library's defaults)
    if not boxes:
        raise RuntimeError("face_recognition found no face in a benchmark image")
    largest = max(boxes, key=lambda b: (b[2] - b[0]) * (b[1] - b[3]))
    encoding: np.ndarray = fr.face_encodings(rgb, known_face_locations=[largest])[0]
    return encoding


def answer(workload: str, item: Item) -> float:
    """One request: an encoding (template), or the distance of a pair (verify)."""
    fr = load_library()
    if workload == "verify":
        a, b = (encode(data) for data in item)
        fr.compare_faces([a], b, tolerance=0.6)
        return float(fr.face_distance([a], b)[0])
    return float(encode(item[0])[0])


def _warm(_: int) -> None:
    load_library()


@dataclass
class PeerResult:
    workload: str
    #: Requests per second with 2 worker processes.
    throughput: float
    latency_p50_ms: float
    latency_samples_ms: list[float] = field(default_factory=list)


def _throughput(
    pool: ProcessPoolExecutor, workload: str, items: Sequence[Item], seconds: float, in_flight: int
) -> float:
    done, position = 0, 0
    pending: set[Future[float]] = set()
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        while len(pending) < in_flight and time.perf_counter() < deadline:
            pending.add(pool.submit(answer, workload, items[position % len(items)]))
            position += 1
        if not pending:
            break
        finished, pending = wait(pending, return_when=FIRST_COMPLETED)
        for future in finished:
            future.result()
            if time.perf_counter() <= deadline:
                done += 1
    return done / seconds


def measure(
    items_by_workload: dict[str, list[Item]],
    seconds: float,
    rounds: int = 2,
    processes: int = 2,
    progress: Callable[[str], None] = print,
) -> list[PeerResult]:
    """Throughput with a process pool and single-request latency, per workload."""
    load_library()
    results = []
    with ProcessPoolExecutor(processes) as pool:
        list(pool.map(_warm, range(processes)))
        for workload, items in items_by_workload.items():
            rate = _throughput(pool, workload, items, seconds, in_flight=2 * processes)
            progress(f"peer: {workload:8} {rate:.2f} req/s with {processes} processes")
            answer(workload, items[0])  # warm-up
            samples = []
            for _ in range(rounds):
                for item in items:
                    begun = time.perf_counter()
                    answer(workload, item)
                    samples.append((time.perf_counter() - begun) * 1000)
            p50 = statistics.median(samples)
            progress(f"peer: {workload:8} single request p50 {p50:.0f} ms")
            results.append(PeerResult(workload, rate, p50, samples))
    return results
