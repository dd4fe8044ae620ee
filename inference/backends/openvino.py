"""OpenVINO on the CPU: f32 everywhere, bf16 where the CPU has bf16 instructions.

Like the ONNX Runtime backend, each model is compiled twice from the same file: ``wide`` (one
stream, ``intra_op_threads`` threads, latency hint) for a call that runs ``alone``, and ``narrow``
(one thread per stream, a stream per core) for calls that run beside others. A compiled model runs
one call per stream at a time, so ``narrow`` has a stream per core even when ``intra_op_threads``
is 1 (ONNX Runtime's one-thread calls are not limited that way). Compiled models are cached on
disk (OpenVINO's ``CACHE_DIR``), so a restart skips the compilation.
"""

from __future__ import annotations

import os
import queue
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from vigil.inference import cpu_features
from vigil.inference.backends.base import BackendOptions
from vigil.inference.catalog import ModelSpec
from vigil.inference.errors import ModelError

#: vigil's precision names → OpenVINO's ``INFERENCE_PRECISION_HINT``.
PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


class _RequestPool:
    """One compiled model and its idle infer requests. A request runs one call at a time, so
    each call takes an idle one (or makes one when all are busy) and gives it back; requests
    of one compiled model may run at once. (Measured against an ``AsyncInferQueue`` fed from the
    engine's threads: see the backend's docs in benchmarks/README.md.)"""

    def __init__(self, compiled: ov.CompiledModel, output_names: list[str]) -> None:
        self.compiled = compiled
        self.output_names = output_names
        self.idle: queue.SimpleQueue[ov.InferRequest] = queue.SimpleQueue()

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            request = self.idle.get_nowait()
        except queue.Empty:
            request = self.compiled.create_infer_request()
        try:
            # share_outputs=False (the default) copies the outputs: the request's own buffers
            # are overwritten by its next call, which may start as soon as it is back.
            results = request.infer(inputs, share_inputs=True)
            return dict(zip(self.output_names, results.to_tuple(), strict=True))
        finally:
            self.idle.put(request)


class OpenVinoModel:
    """A model compiled for the latency (``wide``) and throughput (``narrow``) ways of running."""

    def __init__(
        self, spec: ModelSpec, precision: str, wide: _RequestPool, narrow: _RequestPool | None
    ) -> None:
        self.spec = spec
        self.precision = precision
        self.wide: _RequestPool | None = wide
        self.narrow = narrow

    def infer(self, inputs: dict[str, np.ndarray], alone: bool = False) -> dict[str, np.ndarray]:
        pool = self.wide if alone or self.narrow is None else self.narrow
        if pool is None:
            raise ModelError(f"{self.spec.ref} is unloaded")
        return pool.infer(inputs)

    def unload(self) -> None:
        self.wide = self.narrow = None


class OpenVinoBackend:
    """OpenVINO's CPU device."""

    name = "openvino"

    def __init__(self) -> None:
        self.core = ov.Core()

    def load(self, spec: ModelSpec, path: Path, options: BackendOptions) -> OpenVinoModel:
        hint = self._precision_hint(options.precision)
        threads = max(1, options.intra_op_threads)
        common: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": hint,
            # Pinning threads to cores fights the engine's other threads (decoding, detection).
            "ENABLE_CPU_PINNING": False,
        }
        if options.cache_dir is not None:
            cache = options.cache_dir / "openvino"
            try:
                cache.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ModelError(f"cannot create the OpenVINO cache {cache}: {exc}") from exc
            common["CACHE_DIR"] = str(cache)
        wide = self._compile(
            spec,
            path,
            {
                **common,
                "PERFORMANCE_HINT": "LATENCY",
                "NUM_STREAMS": 1,
                "INFERENCE_NUM_THREADS": threads,
            },
        )
        narrow = None
        cores = max(1, os.cpu_count() or 1)
        if cores > 1 or threads > 1:
            narrow = self._compile(
                spec,
                path,
                {
                    **common,
                    "PERFORMANCE_HINT": "THROUGHPUT",
                    "NUM_STREAMS": cores,
                    "INFERENCE_NUM_THREADS": cores,
                },
            )
        return OpenVinoModel(spec, options.precision, wide, narrow)

    def _precision_hint(self, precision: str) -> str:
        try:
            hint = PRECISION_HINTS[precision]
        except KeyError:
            raise ModelError(
                f"OpenVINO runs {sorted(PRECISION_HINTS)}, not precision {precision!r}"
            ) from None
        cpu = cpu_features.detect()
        # Without the instructions OpenVINO would quietly run f32 (or emulate): refuse instead,
        # so the precision a server reports is the one it runs.
        if precision == "bf16" and not cpu.native_bf16:
            raise ModelError(
                "precision bf16 needs a CPU with native bf16 (AVX-512 BF16 or AMX); "
                f"{cpu.model_name or 'this CPU'} has none: use fp32"
            )
        if precision == "fp16" and not cpu.native_fp16:
            raise ModelError(
                "precision fp16 needs a CPU with native fp16 (AVX-512 FP16 or AMX-FP16); "
                f"{cpu.model_name or 'this CPU'} has none: use fp32"
            )
        return hint

    def _compile(self, spec: ModelSpec, path: Path, config: dict[str, Any]) -> _RequestPool:
        try:
            compiled = self.core.compile_model(str(path), "CPU", config)
        except Exception as exc:  # OpenVINO raises its own untyped errors
            raise ModelError(f"cannot load {spec.ref} from {path} with OpenVINO: {exc}") from exc
        expected = [tensor.name for tensor in spec.inputs]
        if not _named(compiled.inputs, expected):
            declared = [sorted(port.names) for port in compiled.inputs]
            raise ModelError(
                f"{spec.ref}: the file's inputs are {declared}, the catalog says {expected}"
            )
        return _RequestPool(compiled, _output_names(spec, compiled))


def _named(ports: list[ov.ConstOutput], names: list[str]) -> bool:
    """The ports are these tensors, in order (a port may carry several names)."""
    return len(ports) == len(names) and all(
        name in port.names for port, name in zip(ports, names, strict=True)
    )


def _output_names(spec: ModelSpec, compiled: ov.CompiledModel) -> list[str]:
    """Each output's name as the catalog knows it: OpenVINO's ``any_name`` may be another of
    the tensor's names (YuNet's ``cls_8`` is also ``291``)."""
    known = {tensor.name for tensor in spec.outputs}
    return [
        next((name for name in sorted(port.names) if name in known), port.any_name)
        for port in compiled.outputs
    ]
