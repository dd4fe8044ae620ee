"""Backends, chosen by name from this explicit registry (setting ``VIGIL_BACKEND``)."""

from __future__ import annotations

from collections.abc import Callable

from vigil.inference.backends.base import Backend, BackendOptions, LoadedModel
from vigil.inference.errors import ModelError


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


def _tensorrt() -> Backend:
    from vigil.inference.backends.tensorrt import TensorRTBackend

    return TensorRTBackend()


#: Name → factory. Factories import lazily so a CPU install never imports GPU libraries.
BACKENDS: dict[str, Callable[[], Backend]] = {
    "onnxruntime": _onnxruntime_cpu,
    "onnxruntime-cuda": _onnxruntime_cuda,
    "onnxruntime-tensorrt": _onnxruntime_tensorrt,
    "tensorrt": _tensorrt,
}


def get_backend(name: str) -> Backend:
    try:
        factory = BACKENDS[name]
    except KeyError:
        raise ModelError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}") from None
    return factory()


__all__ = ["BACKENDS", "Backend", "BackendOptions", "LoadedModel", "get_backend"]
