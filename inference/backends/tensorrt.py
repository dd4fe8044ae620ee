"""Native TensorRT backend (GPU): engines built from the ONNX files, cached on disk.

``load`` turns a verified ONNX file into a TensorRT engine with the optimisation profiles of
:mod:`vigil.inference.backends.trt_plan` (or reads it from ``options.cache_dir`` when a matching one
was built before), then prepares ``streams`` execution slots. Each slot owns a deserialized copy
of the engine, one execution context, one CUDA stream and pinned host + device buffers sized for
the largest shape of every profile. ``infer`` borrows a slot from a thread-safe pool, pads the
batch up to what the chosen profile runs, copies host → device, calls ``execute_async_v3``, copies
device → host, synchronises the stream and slices the padding away.

Why one engine copy per slot: TensorRT documents that execution contexts in concurrent use must
each use a separate optimisation profile when shapes are dynamic. Deserializing the same plan once
per slot (what ``trtexec --streams`` does) gives every context profiles of its own, whatever
profile a batch needs, at the cost of one copy of the weights per slot (a few MiB for vigil's
models). The plan is built once and cached; only deserialization is repeated.

Precision: ``"fp32"`` builds the ONNX graph as is with TF32 turned off (TensorRT enables TF32
math for fp32 layers by default, which would make "fp32" engines 10-bit-mantissa ones on Ampere
and newer GPUs). ``"fp16"`` follows TensorRT 11, which removed ``BuilderFlag.FP16`` and the INT8
calibrators: the ONNX graph is first converted to mixed precision with ONNX Runtime's
``convert_float_to_float16(keep_io_types=True)`` (inputs and outputs stay float32), then built as
a strongly typed network, where every tensor keeps the type the graph gives it. TensorRT 11 is
always strongly typed; on TensorRT 10 the ``STRONGLY_TYPED`` creation flag is set for fp16. INT8
(explicit Q/DQ nodes in the graph) is not offered.

CUDA binding: cuda-python (``cuda.bindings.runtime``, or ``cuda.cudart`` from older releases),
not pycuda. It is NVIDIA's maintained binding that TensorRT's own samples use, ships prebuilt
wheels for CUDA 12 and 13 (pycuda compiles against a local CUDA toolkit at install time), and
works on the CUDA runtime's primary context, the same one TensorRT uses, so there is no
``pycuda.autoinit`` context to push and pop on every executor thread.

Build settings: the optimisation profiles follow the server's batch size and detection size
(:class:`BackendOptions` ``max_batch_size``, ``detect_max_side``); every setting that changes the
engine (profiles, precision, workspace, builder flags, optimisation level, fp16 converter version)
is in the engine cache key. Builder timings are kept in a timing cache file beside the engines,
so a rebuild (another precision, batch size, or a new model) skips the kernel timings it has.

Failures while running: a CUDA or TensorRT failure becomes :class:`GpuFailure` (UNAVAILABLE);
a sticky CUDA error (e.g. ``cudaErrorIllegalAddress``), after which this process's CUDA context
is unusable, also marks the model failed (:attr:`TensorRTModel.failure`) so that every later call
fails at once and the server's health can say NOT_SERVING. No free execution context within
``acquire_timeout_s`` becomes :class:`GpuBusy` (RESOURCE_EXHAUSTED: the server is at capacity,
retry later; not DEADLINE_EXCEEDED, which is the caller's own deadline). Whatever fails, the stream
is synchronised before its slot goes back to the pool, so no later call reuses buffers that the
GPU may still be reading or writing.

Nothing here is imported at module import time: ``tensorrt``, the CUDA binding and ``onnx`` are
imported inside :meth:`TensorRTBackend.load`, so this module imports on machines without a GPU and
says what to install when they are missing.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import logging
import os
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from vigil.inference.backends import trt_plan as plan
from vigil.inference.backends.base import BackendOptions
from vigil.inference.catalog import ModelSpec
from vigil.inference.errors import InvalidArgument, ModelError, Overloaded, Unavailable

__all__ = [
    "GPU_EXTRA_HINT",
    "CudaError",
    "GpuBusy",
    "GpuFailure",
    "TensorRTBackend",
    "TensorRTModel",
    "convert_to_fp16",
]

log = logging.getLogger(__name__)

GPU_EXTRA_HINT = (
    "install the extra for your driver's CUDA major version (nvidia-smi shows it) from "
    "NVIDIA's index, which has TensorRT's libraries: pip install --extra-index-url "
    "https://pypi.nvidia.com 'vigil[gpu-cu12]' or 'vigil[gpu-cu13]'"
)

#: ``cudaError_t`` names after which the process's CUDA context is corrupt: every later CUDA
#: call fails too, until the process restarts (CUDA runtime API, "sticky" errors).
STICKY_CUDA_ERRORS = frozenset(
    {
        "cudaErrorIllegalAddress",
        "cudaErrorLaunchFailure",
        "cudaErrorHardwareStackError",
        "cudaErrorIllegalInstruction",
        "cudaErrorMisalignedAddress",
        "cudaErrorInvalidAddressSpace",
        "cudaErrorInvalidPc",
        "cudaErrorECCUncorrectable",
        "cudaErrorAssert",
        "cudaErrorContextIsDestroyed",
    }
)

#: How long ``unload`` waits for running inferences before giving up on freeing buffers.
_UNLOAD_WAIT_S = 60.0


class CudaError(Exception):
    """A CUDA runtime call (or a TensorRT call on the GPU) failed.

    Internal: its text names CUDA functions and error codes, for the server's log, never for a
    caller. While a model loads it becomes a :class:`ModelError` (start-up stops with the detail);
    during inference :meth:`TensorRTModel.infer` logs it and raises :class:`GpuFailure`.
    """

    def __init__(
        self, function: str, code: int | None = None, name: str = "", description: str = ""
    ) -> None:
        self.function = function
        #: The ``cudaError_t`` value and its name (e.g. 700, ``cudaErrorIllegalAddress``); None
        #: for a TensorRT call, which reports failure without a code.
        self.code = code
        self.name = name
        self.description = description
        text = f"{function} failed"
        if code is not None:
            text += f": {name or f'cudaError {code}'} ({code})"
        if description:
            text += f": {description}"
        super().__init__(text)


class GpuFailure(Unavailable):
    """The GPU failed while running a model. The call may succeed again, on another replica."""

    reason = "GPU_FAILURE"


class GpuBusy(Overloaded):
    """Every execution context of a model stayed busy for the whole wait: retry later."""

    reason = "GPU_BUSY"


# --------------------------------------------------------------------------- lazy imports


def _import_tensorrt() -> Any:
    try:
        return importlib.import_module("tensorrt")
    except ImportError as exc:
        raise ModelError(
            f"the TensorRT backend needs the tensorrt package: {GPU_EXTRA_HINT}"
        ) from exc
    except OSError as exc:  # the bindings are there but libnvinfer / libcudart is not
        raise ModelError(f"TensorRT cannot load its libraries ({exc}): {GPU_EXTRA_HINT}") from exc


def _import_cudart() -> Any:
    for module in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(module)
        except ImportError:
            continue
    raise ModelError(f"the TensorRT backend needs cuda-python (cuda.bindings): {GPU_EXTRA_HINT}")


def _trt_major(trt: Any) -> int:
    try:
        return int(str(trt.__version__).split(".")[0])
    except ValueError:
        return 0


# --------------------------------------------------------------------------- CUDA runtime


class _Cuda:
    """The few CUDA runtime calls the backend makes, with errors turned into exceptions."""

    def __init__(self, cudart: Any, device_id: int) -> None:
        self._rt = cudart
        self.device_id = device_id

    def _check(self, result: Any, what: str) -> Any:
        """cuda-python returns ``(err, value...)`` (or ``(err,)``); raise unless ``err`` is 0."""
        if isinstance(result, tuple):
            err, values = result[0], result[1:]
        else:
            err, values = result, ()
        if int(err) != 0:
            raise self.error(what, err)
        if not values:
            return None
        return values[0] if len(values) == 1 else values

    def error(self, what: str, err: Any) -> CudaError:
        """A :class:`CudaError` for ``err``, named by its ``cudaError_t`` name."""
        description = ""
        with contextlib.suppress(Exception):  # best effort: the name is in the error too
            description = self._rt.cudaGetErrorString(err)[1].decode(errors="replace")
        return CudaError(what, int(err), cuda_error_name(self._rt, err), description)

    def device_count(self) -> int:
        """GPUs the CUDA runtime sees; ``CudaError`` when it cannot tell (no driver, a driver
        older than the runtime: ``cudaErrorInsufficientDriver``), 0 for ``cudaErrorNoDevice``."""
        err, count = self._rt.cudaGetDeviceCount()
        if int(err) != 0:
            error = self.error("cudaGetDeviceCount", err)
            if error.name == "cudaErrorNoDevice":
                return 0
            raise error
        return int(count or 0)

    def set_device(self) -> None:
        """Make the slot's GPU current on the calling thread (the CUDA device is per thread)."""
        self._check(self._rt.cudaSetDevice(self.device_id), "cudaSetDevice")

    def device_description(self) -> str:
        """GPU name and compute capability, e.g. ``NVIDIA H100 80GB HBM3 sm_90``."""
        props = self._check(
            self._rt.cudaGetDeviceProperties(self.device_id), "cudaGetDeviceProperties"
        )
        raw = props.name
        name = raw.split(b"\0")[0].decode(errors="replace") if isinstance(raw, bytes) else raw
        return f"{str(name).strip()} sm_{props.major}{props.minor}"

    def stream_create(self) -> Any:
        return self._check(
            self._rt.cudaStreamCreateWithFlags(self._rt.cudaStreamNonBlocking),
            "cudaStreamCreateWithFlags",
        )

    def stream_destroy(self, stream: Any) -> None:
        self._check(self._rt.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def synchronize(self, stream: Any) -> None:
        self._check(self._rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def malloc(self, size: int) -> int:
        return int(self._check(self._rt.cudaMalloc(size), f"cudaMalloc({size})"))

    def free(self, pointer: int) -> None:
        self._check(self._rt.cudaFree(pointer), "cudaFree")

    def malloc_host(self, size: int) -> tuple[int, np.ndarray]:
        """Page-locked host memory of ``size`` bytes and a flat uint8 numpy view of it."""
        pointer = int(self._check(self._rt.cudaMallocHost(size), f"cudaMallocHost({size})"))
        view = np.ctypeslib.as_array((ctypes.c_uint8 * size).from_address(pointer))
        return pointer, view

    def free_host(self, pointer: int) -> None:
        self._check(self._rt.cudaFreeHost(pointer), "cudaFreeHost")

    def copy_h2d(self, device: int, host: int, size: int, stream: Any) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(
            self._rt.cudaMemcpyAsync(device, host, size, kind, stream), "cudaMemcpyAsync(H2D)"
        )

    def copy_d2h(self, host: int, device: int, size: int, stream: Any) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(
            self._rt.cudaMemcpyAsync(host, device, size, kind, stream), "cudaMemcpyAsync(D2H)"
        )


def cuda_error_name(cudart: Any, err: Any) -> str:
    """The ``cudaError_t`` member name of ``err`` (e.g. ``cudaErrorInsufficientDriver``).

    cuda-python returns enum members, which carry their name; a plain integer (from older
    bindings) is looked up in ``cudart.cudaError_t``. ``"cudaError <code>"`` when neither knows.
    """
    name = getattr(err, "name", None)
    if isinstance(name, str) and name:
        return name
    with contextlib.suppress(Exception):
        return str(cudart.cudaError_t(int(err)).name)
    return f"cudaError {int(err)}"


def _stream_handle(stream: Any) -> int:
    """The integer ``cudaStream_t`` value TensorRT's ``stream_handle`` arguments take."""
    return int(stream)


# --------------------------------------------------------------------------- building


def convert_to_fp16(onnx_bytes: bytes) -> bytes:
    """``onnx_bytes`` converted to mixed precision (fp16 inside, float32 inputs and outputs).

    Needs the ``onnx`` package (in the gpu extra) and ONNX Runtime's transformer tools.
    """
    try:
        onnx = importlib.import_module("onnx")
        float16 = importlib.import_module("onnxruntime.transformers.float16")
    except ImportError as exc:
        raise ModelError(
            f"fp16 TensorRT engines need the onnx package to convert the model: {GPU_EXTRA_HINT}"
        ) from exc
    model = onnx.load_from_string(onnx_bytes)
    converted = float16.convert_float_to_float16(model, keep_io_types=True)
    return bytes(converted.SerializeToString())


def fp16_converter_version() -> str:
    """Which converter :func:`convert_to_fp16` uses and its version, for the engine cache key."""
    from importlib import metadata

    for distribution in ("onnxruntime-gpu", "onnxruntime"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            return f"onnxruntime {metadata.version(distribution)}"
    return "onnxruntime unknown"


def _builder_flag_names(trt: Any, precision: str) -> tuple[str, ...]:
    """The build settings :func:`_build_plan` applies beyond TensorRT's defaults, as names:
    ``-TF32`` for fp32 (TF32 cleared), ``STRONGLY_TYPED`` when the network is created so."""
    names: list[str] = []
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        names.append("-TF32")
    if _network_flags(trt, precision) or _trt_major(trt) >= 11:
        names.append("STRONGLY_TYPED")
    return tuple(names)


def _network_flags(trt: Any, precision: str) -> int:
    """Network creation flags: TensorRT 11 is always strongly typed (the flag is deprecated and
    ignored there); on TensorRT 10 fp16 asks for a strongly typed network explicitly."""
    if _trt_major(trt) >= 11 or precision != "fp16":
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def _build_plan(
    trt: Any,
    logger: Any,
    onnx_bytes: bytes,
    onnx_path: Path | None,
    profiles: tuple[plan.Profile, ...],
    precision: str,
    workspace_bytes: int,
    optimization_level: int,
    timing_cache: bytes | None = None,
) -> tuple[bytes, bytes | None]:
    """Parse the ONNX graph and build a serialized engine with ``profiles``.

    Returns the engine and the builder's timing cache after the build (``None`` when this
    TensorRT has no timing-cache API), seeded from ``timing_cache`` when given.
    """
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt, precision))
    parser = trt.OnnxParser(network, logger)
    parsed = parser.parse(onnx_bytes, str(onnx_path)) if onnx_path else parser.parse(onnx_bytes)
    if not parsed:
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelError(f"TensorRT cannot parse the ONNX model: {errors or 'unknown error'}")
    graph_inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    wanted = set(profiles[0].names)
    if graph_inputs != wanted:
        raise ModelError(
            f"the ONNX graph's inputs {sorted(graph_inputs)} are not the catalog's {sorted(wanted)}"
        )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    config.builder_optimization_level = optimization_level
    if "-TF32" in _builder_flag_names(trt, precision):
        # On by default: fp32 layers would run with 10-bit mantissas on Ampere and newer.
        config.clear_flag(trt.BuilderFlag.TF32)
    cache = _attach_timing_cache(config, timing_cache)
    for profile in profiles:
        trt_profile = builder.create_optimization_profile()
        for name, shape_range in profile.inputs:
            trt_profile.set_shape(name, shape_range.min, shape_range.opt, shape_range.max)
        config.add_optimization_profile(trt_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelError("TensorRT failed to build the engine (see the TensorRT log above)")
    timings = None
    if cache is not None:
        timings = bytes(config.get_timing_cache().serialize())
    return bytes(serialized), timings


def _attach_timing_cache(config: Any, data: bytes | None) -> Any:
    """Give the builder a timing cache seeded with ``data`` (a fresh one if TensorRT refuses
    it: another TensorRT or GPU, or a damaged file); ``None`` without the timing-cache API."""
    if not hasattr(config, "create_timing_cache"):
        return None
    for seed in (data, b"") if data else (b"",):
        try:
            cache = config.create_timing_cache(seed)
        except (RuntimeError, TypeError, ValueError):
            cache = None
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            return cache
        if seed:
            log.warning("TensorRT refused the timing cache; timing every kernel again")
    return None


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    finally:
        Path(tmp_name).unlink(missing_ok=True)


# --------------------------------------------------------------------------- the loaded model


class TensorRTModel:
    """A TensorRT engine ready to run; ``infer`` is blocking and thread-safe."""

    def __init__(
        self,
        spec: ModelSpec,
        *,
        trt: Any,
        cuda: _Cuda,
        runtime: Any,
        serialized: bytes,
        profiles: tuple[plan.Profile, ...],
        streams: int,
        acquire_timeout_s: float | None,
        engine: Any = None,
    ) -> None:
        """``engine``: ``serialized`` already deserialized (the cache check did it), used for
        the first slot instead of a second deserialization."""
        self.spec = spec
        self.profiles = profiles
        self._trt = trt
        self._cuda = cuda
        self._runtime = runtime
        self._acquire_timeout_s = acquire_timeout_s
        self._unload_lock = threading.Lock()
        self._unloaded = False
        self._host_pointers: list[int] = []
        self._device_pointers: list[int] = []
        self._slots: list[plan.ExecutionSlot] = []
        self.input_names: tuple[str, ...] = ()
        self.output_names: tuple[str, ...] = ()
        self.dtypes: dict[str, np.dtype[Any]] = {}
        #: Why the model can no longer run (a sticky CUDA error), or None while it can.
        self.failure: str | None = None
        try:
            self._create_slots(serialized, streams, engine)
        except BaseException:
            self._free_all()
            raise
        self._pool: plan.SlotPool[plan.ExecutionSlot] = plan.SlotPool(self._slots)

    # ---- set-up

    def _deserialize(self, serialized: bytes, engine: Any = None) -> Any:
        if engine is None:
            engine = self._runtime.deserialize_cuda_engine(serialized)
        if engine is None:
            raise ModelError(f"TensorRT cannot deserialize the engine of {self.spec.ref}")
        if engine.num_optimization_profiles != len(self.profiles):
            raise ModelError(
                f"engine of {self.spec.ref} has {engine.num_optimization_profiles} profiles, "
                f"expected {len(self.profiles)}"
            )
        return engine

    def _describe_io(self, engine: Any) -> None:
        trt = self._trt
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.input_names = tuple(
            n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT
        )
        self.output_names = tuple(n for n in names if n not in self.input_names)
        self.dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        expected = {t.name for t in self.spec.inputs}
        if set(self.input_names) != expected:
            raise ModelError(
                f"engine inputs {sorted(self.input_names)} differ from the catalog's "
                f"{sorted(expected)} for {self.spec.ref}"
            )
        missing = {t.name for t in self.spec.outputs} - set(self.output_names)
        if missing:
            raise ModelError(f"engine of {self.spec.ref} lacks outputs {sorted(missing)}")

    def _set_profile(self, slot: plan.ExecutionSlot, index: int) -> None:
        if slot.active_profile == index:
            return
        slot.active_profile = None  # unknown until the call below succeeds
        try:
            selected = slot.context.set_optimization_profile_async(
                index, _stream_handle(slot.stream)
            )
        except RuntimeError as exc:  # the Python bindings raise for some failures
            raise CudaError(
                "set_optimization_profile_async",
                description=f"profile {index} of {self.spec.ref}: {exc}",
            ) from exc
        if not selected:
            raise CudaError(
                "set_optimization_profile_async",
                description=f"cannot select optimisation profile {index} of {self.spec.ref}",
            )
        slot.active_profile = index

    def _capacities(self, slot: plan.ExecutionSlot) -> dict[str, int]:
        """Bytes each tensor needs at most over all profiles.

        Inputs: their largest profile shape. Outputs: what TensorRT infers for each profile's
        largest input shapes (output sizes of vigil's CNNs grow with their inputs).
        """
        capacity: dict[str, int] = {}
        for name, shape in plan.max_input_shapes(self.profiles).items():
            capacity[name] = plan.nbytes(shape, self.dtypes[name])
        for index, profile in enumerate(self.profiles):
            self._set_profile(slot, index)
            for name, shape_range in profile.inputs:
                if not slot.context.set_input_shape(name, shape_range.max):
                    raise ModelError(f"engine refuses shape {shape_range.max} for {name}")
            for name in self.output_names:
                shape = tuple(slot.context.get_tensor_shape(name))
                size = plan.nbytes(shape, self.dtypes[name])
                capacity[name] = max(capacity.get(name, 0), size)
        self._cuda.synchronize(slot.stream)
        return capacity

    def _create_slots(self, serialized: bytes, streams: int, first_engine: Any) -> None:
        capacity: dict[str, int] | None = None
        for index in range(streams):
            engine = self._deserialize(serialized, first_engine if index == 0 else None)
            slot = plan.ExecutionSlot(index=index, engine=engine)
            self._slots.append(slot)
            if index == 0:
                self._describe_io(engine)
            slot.context = engine.create_execution_context()
            if slot.context is None:
                raise ModelError(f"cannot create a TensorRT execution context for {self.spec.ref}")
            slot.stream = self._cuda.stream_create()
            if capacity is None:
                capacity = self._capacities(slot)
            for name, size in capacity.items():
                pointer, view = self._cuda.malloc_host(size)
                self._host_pointers.append(pointer)
                slot.host[name] = view
                slot.device[name] = self._cuda.malloc(size)
                self._device_pointers.append(slot.device[name])
                slot.capacity[name] = size

    # ---- inference

    def infer(self, inputs: dict[str, np.ndarray], alone: bool = False) -> dict[str, np.ndarray]:
        """Run one batch: ``{input name: array}`` → ``{output name: float32 array}``.

        ``alone`` (a CPU threading hint) does not apply to a GPU and is ignored."""
        if self._unloaded:
            raise Unavailable(f"{self.spec.ref} is unloaded")
        if self.failure is not None:
            raise GpuFailure(
                f"the GPU failed earlier while running {self.spec.name}; "
                "this server must restart, retry the call on another one"
            )
        if set(inputs) != set(self.input_names):
            raise InvalidArgument(
                f"{self.spec.ref} takes inputs {sorted(self.input_names)}, got {sorted(inputs)}"
            )
        arrays = {name: np.asarray(value) for name, value in inputs.items()}
        shapes = {name: array.shape for name, array in arrays.items()}
        batch = plan.batch_of(shapes)
        if batch == 0:
            return self._empty_outputs()
        chunk = plan.max_servable_batch(self.profiles, shapes)
        if chunk == 0:
            plan.select_profile(self.profiles, shapes)  # raises with the allowed shapes
        try:
            parts = [
                self._run_chunk({name: a[part] for name, a in arrays.items()})
                for part in plan.split_batch(batch, chunk)
            ]
        except CudaError as exc:
            # The detail is for the operator; the caller learns that the GPU failed, and that
            # the call may succeed again (another replica, or this one after a restart).
            log.error("%s: GPU failure during inference: %s", self.spec.ref, exc)
            if exc.name in STICKY_CUDA_ERRORS:
                self.failure = str(exc)
                log.critical(
                    "%s: %s leaves this process's CUDA context unusable; restart the server",
                    self.spec.ref,
                    exc.name,
                )
            raise GpuFailure(
                f"the GPU failed while running {self.spec.name}; retry the call"
            ) from exc
        if len(parts) == 1:
            return parts[0]
        return {name: np.concatenate([p[name] for p in parts]) for name in self.output_names}

    def _empty_outputs(self) -> dict[str, np.ndarray]:
        shapes = {t.name: t.shape for t in self.spec.outputs}
        return {
            name: np.zeros((0, *(d or 0 for d in shapes.get(name, (None,))[1:])), dtype=np.float32)
            for name in self.output_names
        }

    def _run_chunk(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        shapes = {name: array.shape for name, array in inputs.items()}
        batch = plan.batch_of(shapes)
        index = plan.select_profile(self.profiles, shapes)
        padded = plan.padded_batch(self.profiles[index], batch)
        try:
            with self._pool.acquire(self._acquire_timeout_s) as slot:
                return self._run_on_slot(slot, inputs, index, padded, batch)
        except TimeoutError:
            raise GpuBusy(
                f"all {self._pool.size} execution contexts of {self.spec.name} stayed busy for "
                f"{self._acquire_timeout_s:g} s; the server is at capacity, retry later"
            ) from None

    def _run_on_slot(
        self,
        slot: plan.ExecutionSlot,
        inputs: Mapping[str, np.ndarray],
        index: int,
        padded: int,
        batch: int,
    ) -> dict[str, np.ndarray]:
        """Enqueue one padded batch on ``slot``'s stream and wait for it.

        The stream is synchronised whatever happens: if enqueuing fails halfway, copies or a
        launch may still be running on the slot's buffers, and the next borrower must not
        overwrite them (or read half-written outputs)."""
        cuda = self._cuda
        synchronised = False
        try:
            cuda.set_device()
            context = slot.context
            self._set_profile(slot, index)
            for name, array in inputs.items():
                shape = (padded, *array.shape[1:])
                size = plan.nbytes(shape, self.dtypes[name])
                view = slot.host[name][:size].view(self.dtypes[name]).reshape(shape)
                plan.fill_padded(view, array)
                if not context.set_input_shape(name, shape):
                    raise InvalidArgument(f"{self.spec.ref} refuses shape {shape} for {name}")
                cuda.copy_h2d(slot.device[name], view.ctypes.data, size, slot.stream)
            for name, pointer in slot.device.items():
                context.set_tensor_address(name, pointer)
            out_shapes: dict[str, tuple[int, ...]] = {}
            for name in self.output_names:
                shape = tuple(context.get_tensor_shape(name))
                size = plan.nbytes(shape, self.dtypes[name])
                if size > slot.capacity[name]:  # a sizing bug, not a GPU failure: INTERNAL
                    raise RuntimeError(
                        f"output {name} of {self.spec.ref} needs {size} bytes, "
                        f"{slot.capacity[name]} held"
                    )
                out_shapes[name] = shape
            try:
                launched = context.execute_async_v3(_stream_handle(slot.stream))
            except RuntimeError as exc:
                raise CudaError("execute_async_v3", description=str(exc)) from exc
            if not launched:
                raise CudaError(
                    "execute_async_v3", description=f"TensorRT execution of {self.spec.ref}"
                )
            for name, shape in out_shapes.items():
                size = plan.nbytes(shape, self.dtypes[name])
                host = slot.host[name]
                cuda.copy_d2h(host.ctypes.data, slot.device[name], size, slot.stream)
            synchronised = True  # tried once here; not again in ``finally`` if it fails
            cuda.synchronize(slot.stream)
            return {
                name: slot.host[name][: plan.nbytes(shape, self.dtypes[name])]
                .view(self.dtypes[name])
                .reshape(shape)[:batch]
                .astype(np.float32, copy=True)
                for name, shape in out_shapes.items()
            }
        finally:
            if not synchronised:
                try:
                    cuda.synchronize(slot.stream)
                except CudaError as exc:  # the error already on its way says more
                    log.error("%s: synchronising after a failure: %s", self.spec.ref, exc)

    # ---- teardown

    def unload(self) -> None:
        """Wait for running inferences, then free buffers, streams, contexts, engines."""
        with self._unload_lock:
            if self._unloaded:
                return
            self._unloaded = True
            try:
                self._pool.drain(_UNLOAD_WAIT_S)
            except TimeoutError:
                log.error(
                    "%s: inferences still running after %.0f s; leaking its GPU buffers",
                    self.spec.ref,
                    _UNLOAD_WAIT_S,
                )
                return
            self._free_all()

    def _free_all(self) -> None:
        """Free everything allocated so far; errors are logged, never raised."""
        cuda = self._cuda
        for slot in self._slots:
            if slot.stream is not None:
                try:
                    cuda.synchronize(slot.stream)
                    cuda.stream_destroy(slot.stream)
                except CudaError as exc:
                    log.warning("%s: freeing a stream: %s", self.spec.ref, exc)
            slot.stream = None
            slot.host.clear()
            slot.device.clear()
            slot.context = None
            slot.engine = None
        for pointer in self._host_pointers:
            try:
                cuda.free_host(pointer)
            except CudaError as exc:
                log.warning("%s: freeing pinned memory: %s", self.spec.ref, exc)
        for pointer in self._device_pointers:
            try:
                cuda.free(pointer)
            except CudaError as exc:
                log.warning("%s: freeing device memory: %s", self.spec.ref, exc)
        self._host_pointers.clear()
        self._device_pointers.clear()
        self._slots = []
        self._runtime = None


# --------------------------------------------------------------------------- the backend


class TensorRTBackend:
    """Native TensorRT on one NVIDIA GPU (``options.device_id``).

    :param streams: execution slots per model (concurrent CUDA streams) when
        ``options.streams`` is 0; default 2: one batch computes while the next one's copies run.
    :param profile_mode: ``"ranges"`` (default) or ``"buckets"``, see :mod:`trt_plan`.
    :param spatial: height/width range for inputs with dynamic spatial axes (YuNet) when
        ``options.detect_max_side`` is 0; otherwise it is sized from that.
    :param workspace_bytes: TensorRT builder workspace pool limit.
    :param optimization_level: the builder's optimisation level (0-5, TensorRT's default 3).
    :param acquire_timeout_s: how long ``infer`` waits for a free slot (``None``: forever).
    """

    name = "tensorrt"

    def __init__(
        self,
        streams: int = 2,
        *,
        profile_mode: plan.ProfileMode = "ranges",
        spatial: plan.SpatialRange = plan.DEFAULT_SPATIAL,
        workspace_bytes: int = 1 << 30,
        optimization_level: int = 3,
        acquire_timeout_s: float | None = 30.0,
    ) -> None:
        if streams < 1:
            raise ValueError(f"streams must be >= 1, got {streams}")
        if not 0 <= optimization_level <= 5:
            raise ValueError(f"optimization_level must be 0..5, got {optimization_level}")
        self.streams = streams
        self.profile_mode = profile_mode
        self.spatial = spatial
        self.workspace_bytes = workspace_bytes
        self.optimization_level = optimization_level
        self.acquire_timeout_s = acquire_timeout_s
        self._logger: Any = None

    def load(self, spec: ModelSpec, path: Path, options: BackendOptions) -> TensorRTModel:
        """Build (or read from the cache) ``spec``'s engine and prepare its execution slots."""
        if options.precision not in plan.PRECISIONS:
            raise ModelError(
                f"precision {options.precision!r} is not one of {', '.join(plan.PRECISIONS)}"
            )
        trt = _import_tensorrt()
        cuda = _Cuda(_import_cudart(), options.device_id)
        try:
            count = cuda.device_count()
        except CudaError as exc:
            # e.g. cudaErrorInsufficientDriver: the installed runtime (the extra's CUDA major)
            # is newer than what the driver supports: not "no GPU".
            raise ModelError(
                f"the CUDA runtime cannot use this machine's GPUs: {exc}; {GPU_EXTRA_HINT}"
            ) from exc
        if count == 0:
            raise ModelError(
                "the TensorRT backend needs an NVIDIA GPU and none is visible (driver missing or "
                "no device); use the onnxruntime backend on CPU, or " + GPU_EXTRA_HINT
            )
        if not 0 <= options.device_id < count:
            raise ModelError(f"GPU {options.device_id} does not exist ({count} visible)")
        if self._logger is None:
            self._logger = trt.Logger(trt.Logger.WARNING)
        try:
            cuda.set_device()
            profiles = self.profiles_for(spec, options)
            key = plan.EngineCacheKey(
                model_sha256=spec.sha256,
                trt_version=str(trt.__version__),
                gpu=cuda.device_description(),
                profiles=profiles,
                precision=options.precision,
                workspace_bytes=self.workspace_bytes,
                builder_flags=_builder_flag_names(trt, options.precision),
                optimization_level=self.optimization_level,
                fp16_converter=fp16_converter_version() if options.precision == "fp16" else "",
            )
            runtime = trt.Runtime(self._logger)
            serialized, engine = self._engine_bytes(
                trt, runtime, spec, path, options, profiles, key
            )
            return TensorRTModel(
                spec,
                trt=trt,
                cuda=cuda,
                runtime=runtime,
                serialized=serialized,
                profiles=profiles,
                streams=self.streams_for(spec, options),
                acquire_timeout_s=self.acquire_timeout_s,
                engine=engine,
            )
        except ModelError:
            raise
        except Exception as exc:  # TensorRT and CUDA raise many kinds; report them as one
            raise ModelError(f"cannot load {spec.ref} with TensorRT: {exc}") from exc

    def streams_for(self, spec: ModelSpec, options: BackendOptions) -> int:
        """Execution slots for ``spec``: ``options.detector_streams`` for a detector (fixed batch
        of 1, called by several detector jobs at once), else ``options.streams`` (the batches
        the server keeps in flight); the backend's own number where they are 0."""
        if spec.fixed_batch and options.detector_streams:
            return options.detector_streams
        return options.streams or self.streams

    def profiles_for(self, spec: ModelSpec, options: BackendOptions) -> tuple[plan.Profile, ...]:
        """The optimisation profiles ``spec`` is built with under ``options``: the batch range
        from ``options.max_batch_size`` (else the catalog's), YuNet's H/W range from
        ``options.detect_max_side`` (else the backend's ``spatial``)."""
        spatial = (
            plan.detector_spatial(options.detect_max_side)
            if options.detect_max_side
            else self.spatial
        )
        return plan.plan_profiles(
            spec,
            mode=self.profile_mode,
            spatial=spatial,
            max_batch=options.max_batch_size or None,
        )

    def _engine_bytes(
        self,
        trt: Any,
        runtime: Any,
        spec: ModelSpec,
        path: Path,
        options: BackendOptions,
        profiles: tuple[plan.Profile, ...],
        key: plan.EngineCacheKey,
    ) -> tuple[bytes, Any]:
        """The serialized engine from the cache when a valid one is there (with that engine
        deserialized, so it is not deserialized twice), else a fresh build (and ``None``)."""
        cached: Path | None = None
        timing_path: Path | None = None
        if options.cache_dir is not None:
            cached = Path(options.cache_dir) / plan.engine_file_name(spec.name, key)
            timing_path = Path(options.cache_dir) / plan.timing_cache_name(key.trt_version, key.gpu)
            if cached.is_file():
                data = cached.read_bytes()
                engine = runtime.deserialize_cuda_engine(data)
                if engine is not None:
                    log.info("%s: TensorRT engine from cache %s", spec.ref, cached)
                    return data, engine
                log.warning("%s: cached engine %s is unusable; rebuilding", spec.ref, cached)
        else:
            log.warning("%s: no engine cache_dir configured; building in memory", spec.ref)
        log.info(
            "%s: building a TensorRT %s engine (%d profiles); this takes a while",
            spec.ref,
            options.precision,
            len(profiles),
        )
        onnx_bytes = path.read_bytes()
        onnx_path: Path | None = path
        if options.precision == "fp16":
            onnx_bytes, onnx_path = convert_to_fp16(onnx_bytes), None
        timings = timing_path.read_bytes() if timing_path and timing_path.is_file() else None
        data, new_timings = _build_plan(
            trt,
            self._logger,
            onnx_bytes,
            onnx_path,
            profiles,
            options.precision,
            self.workspace_bytes,
            self.optimization_level,
            timings,
        )
        if cached is not None:
            _write_atomically(cached, data)
            log.info("%s: TensorRT engine cached at %s", spec.ref, cached)
        if timing_path is not None and new_timings and new_timings != timings:
            _write_atomically(timing_path, new_timings)
        return data, None
