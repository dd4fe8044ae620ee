"""Backends, chosen by name from this explicit registry (setting ``VIGIL_BACKEND``), and the
choice ``auto`` makes (the default): the fastest CPU backend/precision that passed the accuracy
gate on this machine's kind of CPU."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from vigil.inference import cpu_features
from vigil.inference.backends.base import Backend, BackendOptions, LoadedModel
from vigil.inference.catalog import YUNET, ModelSpec
from vigil.inference.errors import ModelError

log = logging.getLogger(__name__)


def _onnxruntime_cpu() -> Backend:
    from vigil.inference.backends.onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend("onnxruntime", ("CPUExecutionProvider",))


def _onnxruntime_cuda() -> Backend:
    from vigil.inference.backends.onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend("onnxruntime-cuda", ("CUDAExecutionProvider", "CPUExecutionProvider"))


def _onnxruntime_tensorrt() -> Backend:
    from vigil.inference.backends.onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend(
        "onnxruntime-tensorrt",
        ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
    )


def _openvino() -> Backend:
    try:
        from vigil.inference.backends.openvino import OpenVinoBackend
    except ImportError as exc:
        raise ModelError(f"backend 'openvino' needs the openvino package ({exc})") from exc
    return OpenVinoBackend()


def _tensorrt() -> Backend:
    from vigil.inference.backends.tensorrt import TensorRTBackend

    return TensorRTBackend()


#: Name → factory. Factories import lazily so a CPU install never imports GPU libraries.
BACKENDS: dict[str, Callable[[], Backend]] = {
    "onnxruntime": _onnxruntime_cpu,
    "onnxruntime-cuda": _onnxruntime_cuda,
    "onnxruntime-tensorrt": _onnxruntime_tensorrt,
    "openvino": _openvino,
    "tensorrt": _tensorrt,
}
#: Backends that run the models on a GPU (the server lets 2 batches of a model run at once there:
#: one computes while the next one's copies run).
GPU_BACKENDS = frozenset({"onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt"})
#: The setting that picks among :data:`AUTO_CHOICES` (the default).
AUTO = "auto"
#: Precisions each backend runs, where this module checks them (the others check their own).
PRECISIONS: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("fp32",),
    "onnxruntime-cuda": ("fp32",),
    "onnxruntime-tensorrt": ("fp32", "fp16"),
    "openvino": ("fp32", "bf16", "fp16"),
}


@dataclass(frozen=True)
class Choice:
    """A backend and the precision it runs."""

    backend: str
    precision: str

    def __str__(self) -> str:
        return f"{self.backend} {self.precision}"


#: What every other CPU choice is compared with by the accuracy gate.
REFERENCE = Choice("onnxruntime", "fp32")
#: Models that run on the reference (ONNX Runtime fp32) whatever the backend. YuNet's landmarks
#: place every face chip and liveness crop: in bf16 they moved the samples' embeddings by up to
#: 0.042 (the gate allows 0.02; 0.0095 with YuNet in fp32), and OpenVINO f32 runs YuNet 1.4-2.3x
#: slower than ONNX Runtime on this CPU, where OpenVINO bf16 only equals it.
ON_REFERENCE: dict[str, frozenset[str]] = {"openvino": frozenset({YUNET.name})}
#: The CPU backends/precisions ``auto`` may choose, fastest first; each one but the reference is
#: checked against it by the accuracy gate (tests/test_backend_accuracy.py parametrizes over this
#: very tuple), so a choice that fails the gate fails the suite instead of being served.
#: Measured on a 2-core AMD EPYC with AVX-512 BF16, one thread: OpenVINO bf16 is 1.8-3.7x ONNX
#: Runtime fp32 on the face models and level on YuNet; OpenVINO f32 is 2x on MiniFASNet but
#: slower on YuNet (1.4-2.3x) and dlib's ResNet (1.1x), so where bf16 is missing ONNX Runtime
#: fp32 comes first. OpenVINO f32 stays gated: it is auto's answer to ``precision=fp32`` only if
#: ONNX Runtime is removed from this list, and a choice by name (``openvino``) is held to the
#: same gate.
AUTO_CHOICES: tuple[Choice, ...] = (
    Choice("openvino", "bf16"),
    REFERENCE,
    Choice("openvino", "fp32"),
)


def native_precision(backend: str) -> str:
    """The precision ``precision=auto`` means for ``backend`` on this CPU."""
    if backend == "openvino" and cpu_features.detect().native_bf16:
        return "bf16"
    return "fp32"


def runs_here(choice: Choice) -> bool:
    """The choice's library is installed and the CPU computes its precision natively."""
    if choice.backend == "openvino" and importlib.util.find_spec("openvino") is None:
        return False
    cpu = cpu_features.detect()
    if choice.precision == "bf16":
        return cpu.native_bf16
    if choice.precision == "fp16":
        return cpu.native_fp16
    return True


def candidates(backend: str, precision: str) -> list[Choice]:
    """What to load for the settings ``backend`` and ``precision``, in order of preference."""
    if backend == AUTO:
        found = [
            choice
            for choice in AUTO_CHOICES
            if precision in (AUTO, choice.precision) and runs_here(choice)
        ]
        if not found:
            raise ModelError(
                f"no CPU backend runs precision {precision!r} here and passes the accuracy gate "
                f"(gated: {', '.join(map(str, AUTO_CHOICES))}); use precision auto or fp32"
            )
        return found
    if backend not in BACKENDS:
        raise ModelError(
            f"unknown backend {backend!r}; choose {AUTO!r} or one of {sorted(BACKENDS)}"
        )
    chosen = Choice(backend, native_precision(backend) if precision == AUTO else precision)
    allowed = PRECISIONS.get(backend)
    if allowed is not None and chosen.precision not in allowed:
        raise ModelError(
            f"backend {backend!r} runs precision {' or '.join(allowed)}, not {precision!r}"
        )
    return [chosen]


@dataclass
class LoadedModels:
    """Every model of the catalog, loaded by one backend at one precision."""

    choice: Choice
    models: dict[str, LoadedModel]


def load_models(
    backend: str,
    options: BackendOptions,
    specs: Iterable[ModelSpec],
    paths: Mapping[str, Path],
) -> LoadedModels:
    """Load every model with the first candidate that loads them all (``auto`` falls back to
    the next one with a warning); raise the last candidate's error, leaving nothing loaded."""
    specs = tuple(specs)
    choices = candidates(backend, options.precision)
    for index, choice in enumerate(choices):
        models: dict[str, LoadedModel] = {}
        try:
            chosen = get_backend(choice.backend)
            chosen_options = replace(options, precision=choice.precision)
            on_reference = ON_REFERENCE.get(choice.backend, frozenset())
            for spec in specs:
                if spec.name in on_reference:
                    models[spec.name] = get_backend(REFERENCE.backend).load(
                        spec, paths[spec.name], replace(options, precision=REFERENCE.precision)
                    )
                else:
                    models[spec.name] = chosen.load(spec, paths[spec.name], chosen_options)
        except Exception as exc:
            for model in models.values():
                model.unload()
            if index + 1 == len(choices):
                raise
            log.warning(
                "backend %s failed to load (%s); falling back to %s",
                choice,
                exc,
                choices[index + 1],
            )
            continue
        return LoadedModels(choice, models)
    raise AssertionError("candidates() returns at least one choice")  # pragma: no cover


def get_backend(name: str) -> Backend:
    try:
        factory = BACKENDS[name]
    except KeyError:
        raise ModelError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}") from None
    return factory()


__all__ = [
    "AUTO",
    "AUTO_CHOICES",
    "BACKENDS",
    "GPU_BACKENDS",
    "ON_REFERENCE",
    "REFERENCE",
    "Backend",
    "BackendOptions",
    "Choice",
    "LoadedModel",
    "LoadedModels",
    "candidates",
    "get_backend",
    "load_models",
    "native_precision",
    "runs_here",
]
