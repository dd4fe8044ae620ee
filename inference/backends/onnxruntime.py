"""ONNX Runtime backends: CPU (the embedded default) and the CUDA / TensorRT execution providers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from vigil.inference.backends.base import BackendOptions
from vigil.inference.catalog import ModelSpec
from vigil.inference.errors import ModelError


class OrtModel:
    """An ``InferenceSession`` (``run`` is thread-safe, so executor threads may share it).

    On the CPU it holds two sessions of the same file: ``session`` with the configured intra-op
    threads, for a call that runs ``alone`` (lowest latency), and ``narrow`` with one thread, for
    calls that run beside others (2 cores: 8 % more images/s at 32 concurrent requests, and a
    two-image Verify is fastest as two one-thread calls side by side).
    """

    def __init__(
        self,
        spec: ModelSpec,
        session: ort.InferenceSession,
        narrow: ort.InferenceSession | None = None,
    ) -> None:
        self.spec = spec
        self.session: ort.InferenceSession | None = session
        self.narrow = narrow
        self.output_names = [o.name for o in session.get_outputs()]

    def infer(self, inputs: dict[str, np.ndarray], alone: bool = False) -> dict[str, np.ndarray]:
        session = self.session if alone or self.narrow is None else self.narrow
        if session is None:
            raise ModelError(f"{self.spec.ref} is unloaded")
        results = session.run(self.output_names, inputs)
        return dict(zip(self.output_names, results, strict=True))

    def unload(self) -> None:
        self.session = self.narrow = None


class OnnxRuntimeBackend:
    """ONNX Runtime with an ordered list of execution providers."""

    def __init__(self, name: str, providers: tuple[str, ...]) -> None:
        self.name = name
        self.providers = providers

    def _provider_list(self, options: BackendOptions) -> list[Any]:
        available = set(ort.get_available_providers())
        missing = [p for p in self.providers if p not in available]
        if missing:
            raise ModelError(
                f"backend {self.name!r} needs ONNX Runtime providers {missing}, this install has "
                f"{sorted(available)} (install onnxruntime-gpu for the CUDA/TensorRT providers)"
            )
        chosen: list[Any] = []
        for provider in self.providers:
            if provider == "TensorrtExecutionProvider":
                trt_options: dict[str, Any] = {"device_id": options.device_id}
                if options.cache_dir is not None:
                    trt_options["trt_engine_cache_enable"] = True
                    trt_options["trt_engine_cache_path"] = str(options.cache_dir)
                trt_options["trt_fp16_enable"] = options.precision == "fp16"
                chosen.append((provider, trt_options))
            elif provider == "CUDAExecutionProvider":
                chosen.append((provider, {"device_id": options.device_id}))
            else:
                chosen.append(provider)
        return chosen

    def load(self, spec: ModelSpec, path: Path, options: BackendOptions) -> OrtModel:
        session = self._session(spec, path, options, options.intra_op_threads)
        narrow = None
        if self.providers == ("CPUExecutionProvider",) and options.intra_op_threads > 1:
            narrow = self._session(spec, path, options, 1)
        return OrtModel(spec, session, narrow)

    def _session(
        self, spec: ModelSpec, path: Path, options: BackendOptions, threads: int
    ) -> ort.InferenceSession:
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = threads
        session_options.inter_op_num_threads = 1
        session_options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning threads steal the cores other sessions need: with it on, the whole pipeline
        # measured 2.7x slower on 2 cores (MODELS.md).
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session_options.log_severity_level = 3
        try:
            session = ort.InferenceSession(
                str(path), sess_options=session_options, providers=self._provider_list(options)
            )
        except ModelError:
            raise
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelError(f"cannot load {spec.ref} from {path}: {exc}") from exc
        declared = [i.name for i in session.get_inputs()]
        expected = [t.name for t in spec.inputs]
        if declared != expected:
            raise ModelError(
                f"{spec.ref}: the file's inputs are {declared}, the catalog says {expected}"
            )
        return session
