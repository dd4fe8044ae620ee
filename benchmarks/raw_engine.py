"""The raw engine ceiling: the same models and pre/post-processing, called in-process with ONNX
Runtime directly — no gRPC, no asyncio, no batcher. What this machine can do with these models.

Besides ONNX Runtime fp32 (the reference, sessions made here), it measures each other CPU
runtime of :data:`RUNTIMES` that runs here (OpenVINO f32, and bf16 where the CPU has it),
loaded through vigil's own backend (``load_models``: its compiled models and its choice of the
detector's runtime) and called in-process just the same.

Per request it runs exactly the server's stages with the inference package's pure functions
(decode_image → detector.prepare → YuNet → detector.decode/rescale → align → per-face models), on
sessions made here with the server's session options. Throughput runs the per-face models at their
best batch size (measured first) over chunks of requests, with a few threading layouts (pipelines
in parallel × intra-op threads), and keeps the best. Latency runs one request at a time.
"""

from __future__ import annotations

import dataclasses
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from vigil.inference import align
from vigil.inference.backends import (
    REFERENCE,
    BackendOptions,
    Choice,
    LoadedModel,
    load_models,
    runs_here,
)
from vigil.inference.catalog import DLIB_RESNET, MINIFASNET_V1SE, MINIFASNET_V2, YUNET, ModelSpec
from vigil.inference.decisions import distance
from vigil.inference.detector import decode, prepare, rescale
from vigil.inference.media import ImageLimits, decode_image
from vigil.inference.models import chips_to_tensor, ensemble_real_probability
from vigil.inference.types import Face

LIMITS = ImageLimits()
BATCH_CANDIDATES = (1, 8, 16, 32, 64)
#: (pipelines in parallel, intra-op threads per session call).
LAYOUTS = ((1, 2), (2, 1), (2, 2))

Item = tuple[bytes, ...]
#: The raw ceilings measured, the reference first: every CPU backend/precision vigil can run.
RUNTIMES = (REFERENCE, Choice("openvino", "fp32"), Choice("openvino", "bf16"))
RAW_SPECS = (YUNET, DLIB_RESNET, MINIFASNET_V2, MINIFASNET_V1SE)


def runtimes_here(without_bf16: bool = False) -> list[Choice]:
    """The runtimes of :data:`RUNTIMES` this machine runs (``without_bf16``: as if it had no
    native bf16, the stand-in for such CPUs)."""
    return [
        runtime
        for runtime in RUNTIMES
        if runs_here(runtime) and not (without_bf16 and runtime.precision == "bf16")
    ]


def make_session(path: Path, intra_op_threads: int) -> ort.InferenceSession:
    """A session with the server's options (sequential, no spinning, all graph optimisations)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


class Models:
    """The four models on one runtime, each ``run`` returning the first output (YuNet: all, by
    name). ONNX Runtime: sessions made here; other runtimes: vigil's backend (with 2 threads its
    ``alone`` model, with 1 its one-thread-per-call model)."""

    def __init__(
        self, models_dir: Path, intra_op_threads: int, runtime: Choice = REFERENCE
    ) -> None:
        self.intra_op_threads = intra_op_threads
        self.runtime = runtime
        self.sessions: dict[str, ort.InferenceSession] = {}
        self.loaded: dict[str, LoadedModel] = {}
        if runtime == REFERENCE:
            self.sessions = {
                spec.name: make_session(models_dir / spec.file, intra_op_threads)
                for spec in RAW_SPECS
            }
        else:
            options = BackendOptions(
                intra_op_threads=intra_op_threads,
                precision=runtime.precision,
                cache_dir=models_dir.parent / "engines",
            )
            paths = {spec.name: models_dir / spec.file for spec in RAW_SPECS}
            loaded = load_models(runtime.backend, options, RAW_SPECS, paths)
            assert loaded.choice == runtime, f"{runtime} loaded as {loaded.choice}"
            self.loaded = loaded.models

    def infer(self, spec: ModelSpec, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every output of ``spec`` by name."""
        if self.loaded:
            # One thread: the backend's one-thread-per-call model (a stream per core), so that
            # pipelines side by side run side by side, as ONNX Runtime's one-thread sessions do.
            return self.loaded[spec.name].infer(feeds, alone=self.intra_op_threads > 1)
        session = self.sessions[spec.name]
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, feeds), strict=True))

    def run(self, spec: ModelSpec, tensor: np.ndarray) -> np.ndarray:
        return self.infer(spec, {spec.inputs[0].name: tensor})[spec.outputs[0].name]

    def detect(self, data: bytes) -> tuple[np.ndarray, Face]:
        """Decode and detect; the subject (largest face) as the server picks it."""
        bgr = decode_image(data, LIMITS).bgr
        tensor, factor = prepare(bgr, 640)
        outputs = self.infer(YUNET, {"input": tensor})
        faces = [
            rescale(f, factor, bgr.shape[1], bgr.shape[0])
            for f in decode(outputs, tensor.shape[2:], 0.8, 0.3)
        ]
        faces = [f for f in faces if min(f.box[2], f.box[3]) >= 20.0]
        if not faces:
            raise RuntimeError("no face found in a benchmark image")
        return bgr, max(faces, key=lambda f: f.area)

    def embed(self, subjects: Sequence[tuple[np.ndarray, Face]]) -> np.ndarray:
        chips = [align.align_chip(bgr, face.landmarks) for bgr, face in subjects]
        return self.run(DLIB_RESNET, chips_to_tensor(chips))

    def liveness(self, subjects: Sequence[tuple[np.ndarray, Face]]) -> list[float]:
        logits = []
        for spec in (MINIFASNET_V2, MINIFASNET_V1SE):
            scale = spec.thresholds["crop_scale"]
            crops = [align.liveness_crop(bgr, face.box, scale) for bgr, face in subjects]
            logits.append(self.run(spec, chips_to_tensor(crops)))
        return [
            ensemble_real_probability([logits[0][i], logits[1][i]])[0] for i in range(len(subjects))
        ]

    def process(self, workload: str, items: Sequence[Item]) -> int:
        """Answer a chunk of requests, per-face models batched over the chunk; returns requests."""
        subjects = [self.detect(data) for item in items for data in item]
        if workload == "liveness":
            self.liveness(subjects)
        else:
            embeddings = self.embed(subjects)
            if workload == "verify":
                for i in range(0, len(embeddings), 2):
                    distance(embeddings[i], embeddings[i + 1])
        return len(items)


@dataclass
class RawResult:
    workload: str
    #: Requests per second (images/s, or verifications/s), best layout.
    throughput: float
    best_layout: str
    #: Faces per batch in the throughput run.
    batch_size: int
    #: Median single-request latency in ms, best variant.
    latency_p50_ms: float
    latency_variant: str
    throughput_by_layout: dict[str, float] = field(default_factory=dict)
    latency_by_variant: dict[str, float] = field(default_factory=dict)
    #: The runtime and precision (``str`` of a :class:`Choice`): "onnxruntime fp32", ...
    runtime: str = str(REFERENCE)


def best_batch_size(
    models: Models, spec: ModelSpec, seconds: float = 0.4, rounds: int = 2
) -> tuple[int, dict[int, float]]:
    """Faces/s of ``spec`` alone at each candidate batch size (best of interleaved rounds, as the
    shared machine is noisy); the best size and the table."""
    side = spec.inputs[0].shape[2]
    assert side is not None, f"{spec.name} has a dynamic input size"
    rng = np.random.default_rng(0)
    tensors = {
        size: rng.uniform(0, 255, (size, 3, side, side)).astype(np.float32)
        for size in BATCH_CANDIDATES
    }
    rates: dict[int, float] = dict.fromkeys(BATCH_CANDIDATES, 0.0)
    for _ in range(rounds):
        for size, tensor in tensors.items():
            models.run(spec, tensor)
            done, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                models.run(spec, tensor)
                done += size
            rates[size] = max(rates[size], done / (time.perf_counter() - started))
    return max(rates, key=lambda s: rates[s]), rates


def _layout_name(parallel: int, threads: int) -> str:
    return f"{parallel} pipeline(s) x {threads} intra-op thread(s)"


def _throughput(
    models: Models, workload: str, items: Sequence[Item], chunk: int, parallel: int, seconds: float
) -> float:
    """Requests/s with ``parallel`` threads each answering chunks until ``seconds`` have passed."""
    lock = threading.Lock()
    position = [0]
    done = [0]
    deadline = time.perf_counter() + seconds

    def work() -> None:
        while time.perf_counter() < deadline:
            with lock:
                start = position[0]
                position[0] += chunk
            batch = [items[(start + i) % len(items)] for i in range(chunk)]
            finished = models.process(workload, batch)
            with lock:
                done[0] += finished

    started = time.perf_counter()
    threads = [threading.Thread(target=work) for _ in range(parallel)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return done[0] / (time.perf_counter() - started)


def _median_latency(fn: Callable[[Item], object], items: Sequence[Item], rounds: int) -> float:
    for item in items:  # warm-up round
        fn(item)
    samples = []
    for _ in range(rounds):
        for item in items:
            started = time.perf_counter()
            fn(item)
            samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def single_request_variants(
    models_by_threads: dict[int, Models], workload: str, pool: ThreadPoolExecutor
) -> dict[str, Callable[[Item], object]]:
    """The ways to answer one request alone: one call at a time with 1 or 2 intra-op threads;
    for ``verify`` also the two sides on two threads at once (what the server does), on
    ``pool``."""
    variants: dict[str, Callable[[Item], object]] = {}
    for threads, models in models_by_threads.items():

        def one_request(item: Item, m: Models = models) -> int:
            return m.process(workload, [item])

        variants[f"sequential, intra {threads}"] = one_request
    if workload == "verify":
        for threads, models in models_by_threads.items():

            def both_sides(item: Item, m: Models = models) -> float:
                a, b = pool.map(lambda data: m.embed([m.detect(data)])[0], item)
                return distance(a, b)

            variants[f"sides in parallel, intra {threads}"] = both_sides
    return variants


def _latencies(
    models_by_threads: dict[int, Models], workload: str, items: Sequence[Item], rounds: int
) -> dict[str, float]:
    """Median single-request latency of each of ``single_request_variants``."""
    with ThreadPoolExecutor(2) as pool:
        return {
            name: _median_latency(fn, items, rounds)
            for name, fn in single_request_variants(models_by_threads, workload, pool).items()
        }


def measure(
    models_dir: Path,
    items_by_workload: dict[str, list[Item]],
    seconds: float,
    rounds: int = 3,
    progress: Callable[[str], None] = print,
    runtime: Choice = REFERENCE,
) -> tuple[list[RawResult], dict[str, dict[str, float]]]:
    """The raw ceiling per workload on ``runtime``, and the batch-size tables behind it."""
    models_by_threads = {threads: Models(models_dir, threads, runtime) for threads in (1, 2)}
    tables: dict[str, dict[int, float]] = {}
    best: dict[str, int] = {}
    for spec in (DLIB_RESNET, MINIFASNET_V2, MINIFASNET_V1SE):
        best[spec.name], tables[spec.name] = best_batch_size(models_by_threads[2], spec)
        progress(
            f"raw {runtime}: {spec.name} best batch {best[spec.name]} "
            f"({tables[spec.name][best[spec.name]]:.0f} faces/s alone)"
        )
    # The liveness chunk follows the slower of its two models.
    liveness_batch = min(best[MINIFASNET_V2.name], best[MINIFASNET_V1SE.name])
    results = []
    for workload, items in items_by_workload.items():
        faces_per_item = 2 if workload == "verify" else 1
        batch = liveness_batch if workload == "liveness" else best[DLIB_RESNET.name]
        chunk = max(1, batch // faces_per_item)
        by_layout = {}
        for parallel, threads in LAYOUTS:
            name = _layout_name(parallel, threads)
            by_layout[name] = _throughput(
                models_by_threads[threads], workload, items, chunk, parallel, seconds
            )
            progress(f"raw {runtime}: {workload:8} {name}: {by_layout[name]:.1f} req/s")
        variants = _latencies(models_by_threads, workload, items, rounds)
        layout = max(by_layout, key=lambda k: by_layout[k])
        fastest = min(variants, key=lambda k: variants[k])
        results.append(
            RawResult(
                workload=workload,
                throughput=by_layout[layout],
                best_layout=layout,
                batch_size=chunk * faces_per_item,
                latency_p50_ms=variants[fastest],
                latency_variant=fastest,
                throughput_by_layout=by_layout,
                latency_by_variant=variants,
                runtime=str(runtime),
            )
        )
        progress(
            f"raw {runtime}: {workload:8} single request p50 {variants[fastest]:.1f} ms ({fastest})"
        )
    return results, {k: {str(b): r for b, r in v.items()} for k, v in tables.items()}


def recheck(
    models_dir: Path,
    items_by_workload: dict[str, list[Item]],
    results: list[RawResult],
    seconds: float,
    rounds: int = 3,
    progress: Callable[[str], None] = print,
) -> list[RawResult]:
    """Measure each workload's best layout and its single-request latency again; keep the higher
    throughput and the lower latency (noise on a shared machine only ever makes things slower).
    The results must share one runtime."""
    runtime = next(r for r in RUNTIMES if str(r) == results[0].runtime) if results else REFERENCE
    models_by_threads = {threads: Models(models_dir, threads, runtime) for threads in (1, 2)}
    layouts = {_layout_name(p, t): (p, t) for p, t in LAYOUTS}
    updated = []
    for result in results:
        parallel, threads = layouts[result.best_layout]
        faces_per_item = 2 if result.workload == "verify" else 1
        items = items_by_workload[result.workload]
        again = _throughput(
            models_by_threads[threads],
            result.workload,
            items,
            max(1, result.batch_size // faces_per_item),
            parallel,
            seconds,
        )
        variants = _latencies(models_by_threads, result.workload, items, rounds)
        best = {k: min(v, result.latency_by_variant.get(k, v)) for k, v in variants.items()}
        fastest = min(best, key=lambda k: best[k])
        progress(
            f"raw {runtime}: {result.workload:8} {result.best_layout}: {again:.1f} req/s "
            f"(first run {result.throughput:.1f}); single request p50 "
            f"{variants[fastest]:.1f} ms (first run {result.latency_p50_ms:.1f})"
        )
        updated.append(
            dataclasses.replace(
                result,
                throughput=max(result.throughput, again),
                throughput_by_layout={**result.throughput_by_layout, "recheck": again},
                latency_p50_ms=best[fastest],
                latency_variant=fastest,
                latency_by_variant=best,
            )
        )
    return updated
