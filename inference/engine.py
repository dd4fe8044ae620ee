"""The engine: bytes → decode → detect → align/crop → batched models → verdicts.

Everything blocking runs in the engine's thread pool (OpenCV and ONNX Runtime release the GIL);
the per-face models run through one :class:`Batcher` each so concurrent requests share batches.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np

from vigil.inference import align, metrics
from vigil.inference.backends import BackendOptions, Choice, LoadedModel, load_models
from vigil.inference.batcher import Batcher, BatcherConfig, run_jobs
from vigil.inference.catalog import (
    DEFAULT_MODELS,
    DLIB_RESNET,
    FACEMESH,
    MINIFASNET_V1SE,
    MINIFASNET_V2,
    YUNET,
    ModelSpec,
    verify_installed,
)
from vigil.inference.decisions import Thresholds, distance, is_match, similarity
from vigil.inference.decode_budget import PixelBudget
from vigil.inference.detector import YuNetDetector
from vigil.inference.errors import (
    FaceNotFound,
    InvalidTemplate,
    MultipleFaces,
    Overloaded,
    Unavailable,
)
from vigil.inference.facemesh import FaceMesh, mesh_crop, mesh_from_outputs
from vigil.inference.finder import FaceFinder, StageTimes, in_pixels_of
from vigil.inference.media import DecodedImage, ImageLimits
from vigil.inference.models import chips_to_tensor, ensemble_real_probability
from vigil.inference.types import Face, LivenessScore, Subject, Timings

log = logging.getLogger(__name__)
T = TypeVar("T")

LIVENESS_MODELS = (MINIFASNET_V2, MINIFASNET_V1SE)


@dataclass(frozen=True)
class EngineConfig:
    """How the engine runs. The server builds it from its settings (``vigil.server.app``), which
    hold every default: nothing here has a default of its own but the catalog's."""

    models_dir: Path
    backend: str
    backend_options: BackendOptions
    image_limits: ImageLimits
    #: Threads for decoding, detection, alignment and backend calls.
    worker_threads: int
    detect_max_side: int
    #: Images smaller than this (longer side) are scaled up for detection.
    detect_min_side: int
    #: Faces whose box is smaller than this on its shorter side are ignored.
    min_face_px: float
    #: Every decision threshold (live, match), read by whoever decides.
    thresholds: Thresholds
    #: Per model name (every model of the catalog): its batcher's settings.
    batching: dict[str, BatcherConfig]
    #: Detector jobs (decode, YuNet, alignment) that may run at once; YuNet's batch is fixed at 1.
    detector_instances: int
    #: Nice value added to the engine's threads (and the ONNX Runtime threads they start), so
    #: the event loop that receives, refuses and answers calls keeps the CPU it needs.
    worker_nice: int
    #: Images the engine's callers may hold in it at once before new ones are refused (0: no
    #: limit); see :meth:`Engine.admission`.
    max_inflight_images: int
    #: Decoded pixels all images in the engine may hold together (0: no limit); see
    #: :mod:`vigil.inference.decode_budget`.
    decode_pixel_budget: int
    #: Most detector-sized tiles of the closer look for small faces (0: none); see
    #: :mod:`vigil.inference.tiling`.
    detect_max_tiles: int
    detect_score_threshold: float = YUNET.thresholds["score"]


@dataclass
class _Located:
    """What a detector job found, and the seconds each of its stages took."""

    image: DecodedImage | None
    faces: list[Face]
    extra: Any
    decode_s: float
    detect_s: float
    align_s: float = 0.0
    queue_s: float = 0.0

    def add_to(self, timings: Timings) -> None:
        timings.decode_ms += self.decode_s * 1000
        timings.detect_ms += self.detect_s * 1000
        timings.align_ms += self.align_s * 1000
        timings.queue_ms += self.queue_s * 1000


@dataclass(frozen=True)
class _Embedded:
    embedding: np.ndarray
    seconds: float


@dataclass(frozen=True)
class EmbeddingResult:
    subject: Subject
    embedding: np.ndarray


class Engine:
    """Loads the catalog's models on ``start`` and answers the Instant API's questions."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.executor = ThreadPoolExecutor(
            config.worker_threads,
            thread_name_prefix="vigil-engine",
            initializer=_lower_priority,
            initargs=(config.worker_nice,),
        )
        self.models: dict[str, LoadedModel] = {}
        #: The backend and precision the models run (``auto`` resolved); set by ``load``.
        self.running: Choice | None = None
        self.batchers: dict[str, Batcher] = {}
        self.detector: YuNetDetector | None = None
        self.pixel_budget = PixelBudget(config.decode_pixel_budget)
        self.finder: FaceFinder | None = None
        self._started = False
        self._inflight = 0
        #: Per model: images in the detector now whose next stage is that model.
        self._upstream: collections.Counter[str] = collections.Counter()

    # ---- lifecycle -------------------------------------------------------------------------
    def load(self) -> None:
        """Verify and load every model (blocking). Raises ``ModelError`` leaving nothing loaded."""
        paths = verify_installed(self.config.models_dir, DEFAULT_MODELS)
        loaded = load_models(
            self.config.backend, self.config.backend_options, DEFAULT_MODELS, paths
        )
        self.models, self.running = loaded.models, loaded.choice
        self.detector = YuNetDetector(
            self.models[YUNET.name],
            max_side=self.config.detect_max_side,
            min_side=self.config.detect_min_side,
            score_threshold=self.config.detect_score_threshold,
            min_face_px=self.config.min_face_px,
        )
        self.finder = FaceFinder(
            self.detector,
            self.config.image_limits,
            self.pixel_budget,
            self.config.detect_max_tiles,
            alone=self._alone,
        )
        self._warm_up()

    def _warm_up(self) -> None:
        """Run every model once alone and once beside others (both CPU sessions) on blank input,
        so the first requests do not pay for the backends' lazy set-up (a fresh CPU session's
        first call measured 15–35 % slower than its next ones). A failure here is logged, not
        fatal: the requests will say what is wrong."""
        for spec in DEFAULT_MODELS:
            side = min(self.config.detect_max_side, 640)
            shape = tuple(
                dim if dim is not None else (1 if axis == 0 else side)
                for axis, dim in enumerate(spec.inputs[0].shape)
            )
            blank = {spec.inputs[0].name: np.zeros(shape, dtype=np.float32)}
            try:
                for alone in (True, False):
                    self.models[spec.name].infer(blank, alone=alone)
            except Exception:
                log.warning("warming up %s failed", spec.ref, exc_info=True)

    def _detector_saturated(self) -> bool:
        """Every detector instance is busy (or more jobs wait): the engine is under load.
        Called from engine threads too, so it tolerates a stopping engine."""
        detector = self.batchers.get(YUNET.name)
        return detector is not None and detector.load >= detector.config.instances

    def _upstream_of(self, model: str) -> int:
        """Images in the detector bound for ``model``, counted only while the detector is
        saturated: then batches may wait for them; below that a batch runs at once."""
        return self._upstream[model] if self._detector_saturated() else 0

    def _alone(self) -> bool:
        """True when at most one image is anywhere in the engine's queues and batches (the
        caller's own): a backend may then spend every core on it."""
        batchers = list(self.batchers.values())  # one step: stop() may clear the dict meanwhile
        return sum(batcher.load for batcher in batchers) <= 1

    async def start(self) -> None:
        """Load the models in a thread and start one batcher per model (inside the running loop)."""
        if self._started:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(self.executor, self.load)
        except BaseException:
            self.executor.shutdown(wait=True)  # the load has returned; leave no thread behind
            raise
        for spec in DEFAULT_MODELS:
            config = self.config.batching[spec.name]
            if spec.name == YUNET.name:  # the detector's whole per-image job, one at a time
                batcher = Batcher(
                    run_jobs, self.executor, replace(config, max_batch_size=1), spec.name
                )
            else:
                batcher = Batcher.for_model(
                    self.models[spec.name],
                    self.executor,
                    config,
                    alone=self._alone,
                    upstream=functools.partial(self._upstream_of, spec.name),
                )
            batcher.start()
            self.batchers[spec.name] = batcher
        self._started = True

    async def stop(self) -> None:
        for batcher in self.batchers.values():
            await batcher.stop()
        self.batchers.clear()
        self.unload()
        self.executor.shutdown(wait=True, cancel_futures=True)
        self._started = False

    def unload(self) -> None:
        for model in self.models.values():
            model.unload()
        self.models.clear()

    @property
    def failure(self) -> str | None:
        """Why the engine can no longer serve until the process restarts (a model's sticky GPU
        error, its ``failure``), or None. The server's health reads it (server/health_watch)."""
        for name, model in list(self.models.items()):  # one step: stop() may clear the dict
            failure = getattr(model, "failure", None)
            if failure:
                return f"{name}: {failure}"
        return None

    @contextlib.asynccontextmanager
    async def admission(self, images: int = 1) -> AsyncIterator[None]:
        """Admit a request of ``images`` images, or refuse it at once when the engine already
        holds ``max_inflight_images``: excess load gets RESOURCE_EXHAUSTED before any decoding,
        and the latency of admitted requests stays bounded.

        The entry points (``detect``, ``liveness``, ``embed``, video analysis) admit their
        request themselves; background jobs pass ``admit=False`` (their number is bounded by the
        workers, and a queued analysis should wait, not fail)."""
        limit = self.config.max_inflight_images
        if limit and self._inflight + images > limit:
            metrics.ADMISSION_REJECTED.inc()
            raise Overloaded(
                f"the server is at capacity ({self._inflight} images in flight); retry later"
            )
        self._inflight += images
        metrics.INFLIGHT.set(self._inflight)
        try:
            yield
        finally:
            self._inflight -= images
            metrics.INFLIGHT.set(self._inflight)

    # ---- stages ----------------------------------------------------------------------------
    def _require_started(self) -> None:
        if not self._started:
            raise Unavailable("the engine is not started")

    async def in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking work (decoding, numpy) on the engine's threads."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def _admitted(
        self, admit: bool, images: int = 1
    ) -> contextlib.AbstractAsyncContextManager[None]:
        return self.admission(images) if admit else contextlib.nullcontext()

    async def detect_faces(
        self, image: DecodedImage, timings: Timings, deadline: float | None = None
    ) -> list[Face]:
        """Faces of an already decoded image (video frames), largest first."""
        located = await self._detect(None, image, deadline, None, None, ())
        located.add_to(timings)
        return located.faces

    async def _locate(
        self,
        data: bytes,
        timings: Timings,
        deadline: float | None,
        require_single: bool | None,
        then: Callable[[np.ndarray, Face], Any] | None = None,
        bound_for: tuple[ModelSpec, ...] = (),
    ) -> tuple[DecodedImage, list[Face], Any]:
        """Decode and detect; with ``require_single`` not None, also insist on a subject and run
        ``then(bgr, subject)`` (the input of the next stage: the models ``bound_for``), all in
        one detector job."""
        located = await self._detect(data, None, deadline, require_single, then, bound_for)
        located.add_to(timings)
        assert located.image is not None
        return located.image, located.faces, located.extra

    async def _detect(
        self,
        data: bytes | None,
        image: DecodedImage | None,
        deadline: float | None,
        require_single: bool | None,
        then: Callable[[np.ndarray, Face], Any] | None,
        bound_for: tuple[ModelSpec, ...],
    ) -> _Located:
        """One job on the detector's queue: decode (unless ``image`` is given), resize, YuNet,
        post-processing, subject checks and ``then``, in one thread. YuNet's batch is fixed at 1,
        so nothing is lost by not batching it, and an image is decoded only once a detector
        instance is free for it (a queue of waiting requests holds bytes, not decoded pixels).
        While it runs, the models ``bound_for`` count it as upstream (their batches may wait
        for it)."""
        self._require_started()
        sharp = DLIB_RESNET in bound_for  # embeddings keep the full decode (see finder.py)
        job = functools.partial(
            self._detect_job, data, image, require_single, then, sharp, deadline
        )
        for spec in bound_for:
            self._upstream[spec.name] += 1
        try:
            located, queued = await self.batchers[YUNET.name].submit(job, deadline)
        finally:
            for spec in bound_for:
                self._upstream[spec.name] -= 1
        located.queue_s = queued
        return cast(_Located, located)

    def _detect_job(
        self,
        data: bytes | None,
        image: DecodedImage | None,
        require_single: bool | None,
        then: Callable[[np.ndarray, Face], Any] | None,
        sharp: bool,
        deadline: float | None,
    ) -> _Located:
        examine = functools.partial(self._examine, require_single=require_single, then=then)
        if image is None:  # bytes: decoded (and their pixels freed) within the pixel budget
            assert data is not None and self.finder is not None
            return self.finder.find(data, deadline, sharp, examine)
        detector = self.detector  # a frame the caller decoded (video): detected as it is
        assert detector is not None
        started = time.perf_counter()
        faces = detector.detect(image.bgr, alone=self._alone())
        return examine(image, faces, StageTimes(0.0, time.perf_counter() - started), keep=True)

    def _examine(
        self,
        image: DecodedImage,
        faces: list[Face],
        times: StageTimes,
        require_single: bool | None,
        then: Callable[[np.ndarray, Face], Any] | None,
        keep: bool = False,
    ) -> _Located:
        """The subject checks and ``then``; the result keeps the pixels only when ``keep``."""
        described = image if keep else image.without_pixels()
        located = _Located(described, faces, None, times.decode_s, times.detect_s)
        if require_single is None:
            return located
        if not faces:
            raise FaceNotFound(
                f"no face found in the {image.width}×{image.height} image "
                f"(faces smaller than {self.config.min_face_px:.0f} px are ignored)"
            )
        if require_single and len(faces) > 1:
            raise MultipleFaces(f"{len(faces)} faces found; the request requires exactly one")
        if then is not None:
            started = time.perf_counter()
            located.extra = then(image.bgr, in_pixels_of(faces[0], image))
            located.align_s = time.perf_counter() - started
        return located

    async def _run_face_model(
        self, spec: ModelSpec, tensor: np.ndarray, timings: Timings, deadline: float | None
    ) -> dict[str, np.ndarray]:
        row, queued = await self.batchers[spec.name].submit({spec.inputs[0].name: tensor}, deadline)
        timings.queue_ms += queued * 1000
        return cast(dict[str, np.ndarray], row)

    # ---- public API --------------------------------------------------------------------------
    async def detect(
        self, data: bytes, deadline: float | None = None, *, admit: bool = True
    ) -> tuple[DecodedImage, list[Face], Timings]:
        """Every face of an image, largest first."""
        async with self._admitted(admit):
            timings = Timings()
            started = time.perf_counter()
            image, faces, _ = await self._locate(data, timings, deadline, None)
            timings.total_ms = (time.perf_counter() - started) * 1000
            return image, faces, timings

    async def liveness(
        self,
        data: bytes,
        require_single: bool = False,
        deadline: float | None = None,
        *,
        admit: bool = True,
    ) -> tuple[Subject, LivenessScore]:
        """The image's subject and the liveness ensemble's scores of it."""
        async with self._admitted(admit):
            timings = Timings()
            started = time.perf_counter()
            image, faces, crops = await self._locate(
                data, timings, deadline, require_single, _liveness_inputs, LIVENESS_MODELS
            )
            subject = Subject(
                faces[0], len(faces), image.content_type, image.width, image.height, timings
            )
            score = await self._liveness_from(crops, timings, deadline)
            timings.total_ms = (time.perf_counter() - started) * 1000
            return subject, score

    async def liveness_of(
        self, image: DecodedImage, face: Face, timings: Timings, deadline: float | None = None
    ) -> LivenessScore:
        started = time.perf_counter()
        crops = await self.in_thread(_liveness_tensors, image.bgr, face.box)
        timings.align_ms += (time.perf_counter() - started) * 1000
        return await self._liveness_from(crops, timings, deadline)

    async def _liveness_from(
        self, crops: list[np.ndarray], timings: Timings, deadline: float | None
    ) -> LivenessScore:
        started = time.perf_counter()
        rows = await asyncio.gather(
            *(
                self._run_face_model(spec, crop, timings, deadline)
                for spec, crop in zip(LIVENESS_MODELS, crops, strict=True)
            )
        )
        score, members = ensemble_real_probability([row["logits"] for row in rows])
        timings.liveness_ms += (time.perf_counter() - started) * 1000
        return LivenessScore(
            score, {spec.name: m for spec, m in zip(LIVENESS_MODELS, members, strict=True)}
        )

    async def embed(
        self,
        data: bytes,
        require_single: bool = False,
        deadline: float | None = None,
        *,
        admit: bool = True,
    ) -> EmbeddingResult:
        """The image's subject and its face template (embedding)."""
        async with self._admitted(admit):
            timings = Timings()
            started = time.perf_counter()
            image, faces, chip = await self._locate(
                data, timings, deadline, require_single, self._chip_or_embedding, (DLIB_RESNET,)
            )
            subject = Subject(
                faces[0], len(faces), image.content_type, image.width, image.height, timings
            )
            if isinstance(chip, _Embedded):  # embedded inside the detector job
                timings.align_ms -= chip.seconds * 1000
                timings.embed_ms += chip.seconds * 1000
                embedding = chip.embedding
            else:
                embedding = await self._embedding_from(chip, timings, deadline)
            timings.total_ms = (time.perf_counter() - started) * 1000
            return EmbeddingResult(subject, embedding)

    async def embedding_of(
        self, image: DecodedImage, face: Face, timings: Timings, deadline: float | None = None
    ) -> np.ndarray:
        started = time.perf_counter()
        chip = await self.in_thread(_chip_tensor, image.bgr, face.landmarks)
        timings.align_ms += (time.perf_counter() - started) * 1000
        return await self._embedding_from(chip, timings, deadline)

    async def _embedding_from(
        self, chip: np.ndarray, timings: Timings, deadline: float | None
    ) -> np.ndarray:
        started = time.perf_counter()
        row = await self._run_face_model(DLIB_RESNET, chip, timings, deadline)
        timings.embed_ms += (time.perf_counter() - started) * 1000
        return np.asarray(row["embedding"], dtype=np.float32)

    async def mesh_of(
        self, image: DecodedImage, face: Face, timings: Timings, deadline: float | None = None
    ) -> FaceMesh:
        """FaceMesh's 468 landmarks of ``face`` (batched with other frames' and requests')."""
        started = time.perf_counter()
        crop = await self.in_thread(mesh_crop, image.bgr, face.box)
        timings.align_ms += (time.perf_counter() - started) * 1000
        row, queued = await self.batchers[FACEMESH.name].submit(
            {FACEMESH.inputs[0].name: crop.tensor}, deadline
        )
        timings.queue_ms += queued * 1000
        return mesh_from_outputs(cast(dict[str, np.ndarray], row), crop)

    def _chip_or_embedding(self, bgr: np.ndarray, face: Face) -> np.ndarray | _Embedded:
        """The embedder's input; or, while the detector has a free instance (light load), the
        embedding itself, computed in this job's thread: nothing would share its batch, and a
        Verify's two faces then run side by side instead of one after the other."""
        chip = _chip_tensor(bgr, face.landmarks)
        if self._detector_saturated():
            return chip  # under load, batches pay: the embedder's batcher gathers it
        started = time.perf_counter()
        row = self.models[DLIB_RESNET.name].infer({"input": chip[None]}, alone=self._alone())
        seconds = time.perf_counter() - started
        metrics.INFERENCE_TIME.labels(DLIB_RESNET.name).observe(seconds)
        metrics.BATCH_SIZE.labels(DLIB_RESNET.name).observe(1)
        return _Embedded(np.asarray(row["embedding"][0], dtype=np.float32), seconds)

    def check_template(self, values: np.ndarray, model: str, version: str) -> np.ndarray:
        """Validate a template given by a caller against the embedding model in use."""
        spec = DLIB_RESNET
        if model and (model != spec.name or (version and version != spec.version)):
            raise InvalidTemplate(
                f"template was made by {model}:{version or '?'}; this server compares "
                f"{spec.ref} templates only"
            )
        expected = spec.outputs[0].shape[-1]
        if values.shape != (expected,):
            raise InvalidTemplate(
                f"template has {values.size} values; {spec.ref} templates have {expected}"
            )
        if not np.all(np.isfinite(values)):
            raise InvalidTemplate("template holds NaN or infinite values")
        return values.astype(np.float32)

    def compare(self, a: np.ndarray, b: np.ndarray) -> tuple[float, float, bool]:
        """(distance, similarity, match) of two templates at the server's match threshold."""
        threshold = self.config.thresholds.match_distance
        apart = distance(a, b)
        return apart, similarity(apart, threshold), is_match(apart, threshold)


def _liveness_tensors(bgr: np.ndarray, box: tuple[float, float, float, float]) -> list[np.ndarray]:
    return [
        chips_to_tensor([align.liveness_crop(bgr, box, spec.thresholds["crop_scale"])])[0]
        for spec in LIVENESS_MODELS
    ]


def _chip_tensor(bgr: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    return np.asarray(chips_to_tensor([align.align_chip(bgr, landmarks)])[0])


def _liveness_inputs(bgr: np.ndarray, face: Face) -> list[np.ndarray]:
    return _liveness_tensors(bgr, face.box)


def _lower_priority(nice: int) -> None:
    """Run this thread (and threads it starts later) at a lower CPU priority (Linux: per thread)."""
    if nice > 0 and hasattr(os, "setpriority"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
