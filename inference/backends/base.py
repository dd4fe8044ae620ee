"""The backend interface: load a model file, run it on named numpy arrays, unload it.

A backend knows nothing of faces: it turns ``{input_name: array}`` into ``{output_name: array}``.
Pre- and post-processing live in the model modules; batching lives in :mod:`inference.batcher`,
which wraps a :class:`LoadedModel` by composition.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from vigil.inference.catalog import ModelSpec


@dataclass(frozen=True)
class BackendOptions:
    """What every backend may be tuned with; a backend ignores what it has no use for."""

    #: Threads one inference call may use (ONNX Runtime intra-op threads).
    intra_op_threads: int = 1
    #: Directory for compiled artefacts (TensorRT engines).
    cache_dir: Path | None = None
    #: Numeric precision where the backend can choose: "fp32" or "fp16".
    precision: str = "fp32"
    #: GPU ordinal for GPU backends.
    device_id: int = 0
    #: Batches of one per-face model that may run at once (TensorRT: one execution context and
    #: CUDA stream each). 0 leaves it to the backend.
    streams: int = 0
    #: Detector (fixed batch of 1) calls that may run at once, each with its own context and
    #: stream on a GPU. 0: as ``streams``.
    detector_streams: int = 0
    #: Largest batch the per-face models are sent (the batchers' size); compiled backends build
    #: for it (TensorRT profiles). 0: the catalog's ``max_batch_size``.
    max_batch_size: int = 0
    #: Longest side of the detector's input (``VIGIL_DETECT_MAX_SIDE``); compiled backends size
    #: YuNet's dynamic H/W range from it. 0: the backend's default.
    detect_max_side: int = 0


class LoadedModel(Protocol):
    """A model ready to run. ``infer`` is blocking and thread-safe; call it from an executor."""

    spec: ModelSpec

    def infer(self, inputs: dict[str, np.ndarray], alone: bool = False) -> dict[str, np.ndarray]:
        """Run one batch. Arrays are C-contiguous float32 with the batch as the first axis.

        ``alone`` is a latency hint: nothing else is running in the engine, so this call may
        use every core it is allowed (the CPU backend then runs its multi-threaded session;
        under load one thread per call wastes less). Backends may ignore it."""
        ...

    def unload(self) -> None:
        """Free what the model holds (sessions, engines, device buffers). Idempotent."""
        ...


class Backend(Protocol):
    """A way to run models, registered by name in :mod:`inference.backends`."""

    name: str

    def load(self, spec: ModelSpec, path: Path, options: BackendOptions) -> LoadedModel:
        """Load ``path`` (already verified against ``spec.sha256``) or raise ``ModelError``."""
        ...
