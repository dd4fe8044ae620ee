"""Planning for the native TensorRT backend: pure Python and numpy, no TensorRT needed.

Everything here is decided before (or without) a GPU, so it is tested on CPU:

- **optimisation profiles**: the min/opt/max shape of every input that an engine is built for,
  derived from a :class:`~vigil.inference.catalog.ModelSpec` (its ``max_batch_size``, its
  dynamic axes);
- **profile choice** for a batch, **padding** a batch up to what the chosen profile accepts and
  **splitting** a batch larger than any profile into chunks;
- the **engine cache key**: (model sha256, TensorRT version, GPU, profiles, precision, workspace,
  builder flags, optimisation level, fp16 converter version) → a stable file name, so a cached
  engine is never reused for another model, TensorRT, GPU, shape range or build setting;
- **buffer sizing**: bytes for a shape and dtype, and the largest input shapes over profiles;
- a thread-safe **pool of execution slots**, one per concurrent CUDA stream, that
  :mod:`vigil.inference.backends.tensorrt` fills with its TensorRT and CUDA handles.

Profiles come in two modes. ``"ranges"`` (the default) cuts ``1..max_batch_size`` into a small
latency profile (optimised for batch 1) and a throughput profile (optimised for the full batch);
any batch size inside a range runs as is, no padding. ``"buckets"`` builds one static profile per
power of two (1, 2, 4, … max), each tuned for exactly that size: a batch is padded up to the next
bucket and the outputs are sliced back.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import numpy as np

from vigil.inference.catalog import ModelSpec
from vigil.inference.errors import InvalidArgument, Unavailable

__all__ = [
    "CACHE_FORMAT",
    "DEFAULT_SPATIAL",
    "PRECISIONS",
    "EngineCacheKey",
    "ExecutionSlot",
    "Profile",
    "ProfileMode",
    "ShapeRange",
    "SlotPool",
    "SpatialRange",
    "batch_buckets",
    "batch_of",
    "batch_ranges",
    "detector_spatial",
    "engine_file_name",
    "fill_padded",
    "max_input_shapes",
    "max_servable_batch",
    "nbytes",
    "pad_batch",
    "padded_batch",
    "plan_profiles",
    "select_profile",
    "slice_outputs",
    "split_batch",
    "timing_cache_name",
]

#: Bump when the way engines are built changes (flags, fp16 conversion…): old cache files are
#: then ignored instead of being loaded.
CACHE_FORMAT = 2

#: Precisions the TensorRT backend builds.
PRECISIONS = ("fp32", "fp16")

ProfileMode = Literal["ranges", "buckets"]

Shape = tuple[int, ...]

#: Up to this batch the latency profile serves (optimised for batch 1).
_LATENCY_MAX_BATCH = 4


@dataclass(frozen=True)
class ShapeRange:
    """The min / opt / max shape one input accepts under one optimisation profile."""

    min: Shape
    opt: Shape
    max: Shape

    def __post_init__(self) -> None:
        if not (len(self.min) == len(self.opt) == len(self.max)) or not self.min:
            raise ValueError(f"min/opt/max must have one equal, non-zero rank: {self}")
        for low, mid, high in zip(self.min, self.opt, self.max, strict=True):
            if not 1 <= low <= mid <= high:
                raise ValueError(f"need 1 <= min <= opt <= max on every axis: {self}")

    @property
    def static(self) -> bool:
        """True when the range holds one shape only (a static profile)."""
        return self.min == self.max

    def accepts(self, shape: Sequence[int]) -> bool:
        """True when ``shape`` lies inside the range on every axis."""
        if len(shape) != len(self.min):
            return False
        return all(low <= d <= high for low, d, high in zip(self.min, shape, self.max, strict=True))

    def accepts_after_batch_padding(self, shape: Sequence[int]) -> bool:
        """True when ``shape`` fits once its batch axis is padded up to ``min[0]``."""
        if len(shape) != len(self.min) or shape[0] < 1 or shape[0] > self.max[0]:
            return False
        return self.accepts((max(shape[0], self.min[0]), *shape[1:]))

    def describe(self) -> str:
        """Canonical text, e.g. ``1x3x80x80/4x3x80x80/32x3x80x80``."""
        return "/".join("x".join(str(d) for d in s) for s in (self.min, self.opt, self.max))


@dataclass(frozen=True)
class Profile:
    """One optimisation profile: a :class:`ShapeRange` for every input, in the spec's order."""

    inputs: tuple[tuple[str, ShapeRange], ...]

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ValueError("a profile needs at least one input")
        batches = {(r.min[0], r.opt[0], r.max[0]) for _, r in self.inputs}
        if len(batches) != 1:
            raise ValueError(f"all inputs of a profile must share one batch range: {batches}")

    def range(self, name: str) -> ShapeRange:
        """The shape range of input ``name``; ``KeyError`` if the profile has no such input."""
        for input_name, shape_range in self.inputs:
            if input_name == name:
                return shape_range
        raise KeyError(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.inputs)

    @property
    def min_batch(self) -> int:
        return self.inputs[0][1].min[0]

    @property
    def opt_batch(self) -> int:
        return self.inputs[0][1].opt[0]

    @property
    def max_batch(self) -> int:
        return self.inputs[0][1].max[0]

    def accepts(self, shapes: Mapping[str, Sequence[int]], *, allow_padding: bool = True) -> bool:
        """True when every input's shape fits (after batch padding when ``allow_padding``)."""
        if set(shapes) != set(self.names):
            return False
        if allow_padding:
            return all(r.accepts_after_batch_padding(shapes[n]) for n, r in self.inputs)
        return all(r.accepts(shapes[n]) for n, r in self.inputs)

    def describe(self) -> str:
        """Canonical text of the whole profile, used in the engine cache key."""
        return ";".join(f"{name}:{r.describe()}" for name, r in self.inputs)


@dataclass(frozen=True)
class SpatialRange:
    """Height and width range for inputs whose spatial axes are dynamic (YuNet's H and W).

    A fixed detection size is ``SpatialRange((640, 640), (640, 640), (640, 640))``; then the
    caller must feed exactly that size (spatial axes are never padded: that would change a
    detector's anchors).
    """

    min: tuple[int, int] = (32, 32)
    opt: tuple[int, int] = (640, 640)
    max: tuple[int, int] = (1280, 1280)


#: YuNet is fed images of at most 640 px per side, padded to a multiple of 32 (MODELS.md);
#: up to 1280 is accepted so a larger detection size needs no rebuild of the plan code. The
#: server passes its configured detection size instead (:func:`detector_spatial`).
DEFAULT_SPATIAL = SpatialRange()

#: The detector pads its input to multiples of this (YuNet's largest stride).
_DETECTOR_ALIGN = 32


def detector_spatial(max_side: int) -> SpatialRange:
    """The H/W range for a detector fed images whose longer side is at most ``max_side``.

    The detector scales an image's longer side to at most ``max_side`` and pads both sides up
    to a multiple of 32 (:func:`vigil.inference.detector.prepare`), so any H and W from 32 to
    ``max_side`` rounded up to 32 can arrive; the kernels are tuned for a square of that size.
    """
    if max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    side = -(-max_side // _DETECTOR_ALIGN) * _DETECTOR_ALIGN
    low = min(_DETECTOR_ALIGN, side)
    return SpatialRange((low, low), (side, side), (side, side))


def batch_ranges(max_batch: int) -> tuple[tuple[int, int, int], ...]:
    """(min, opt, max) batch of each profile in ``"ranges"`` mode; they cover 1..max_batch.

    Up to ``_LATENCY_MAX_BATCH`` a single profile optimised for the full batch; above it a
    latency profile ``(1, 1, 4)`` and a throughput profile ``(5, max, max)``.
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    if max_batch <= _LATENCY_MAX_BATCH:
        return ((1, max_batch, max_batch),)
    return ((1, 1, _LATENCY_MAX_BATCH), (_LATENCY_MAX_BATCH + 1, max_batch, max_batch))


def batch_buckets(max_batch: int) -> tuple[int, ...]:
    """Static batch sizes of ``"buckets"`` mode: powers of two below ``max_batch``, then it."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    sizes = [1 << k for k in range(max_batch.bit_length()) if (1 << k) < max_batch]
    return (*sizes, max_batch)


def _input_range(
    shape: tuple[int | None, ...], batch: tuple[int, int, int], spatial: SpatialRange
) -> ShapeRange:
    """Concrete min/opt/max for one spec input shape, ``None`` axes filled in.

    The batch axis takes ``batch``; a dynamic axis among the last two takes the spatial range;
    any other dynamic axis is not something vigil's models have, so it is refused.
    """
    low: list[int] = [batch[0]]
    mid: list[int] = [batch[1]]
    high: list[int] = [batch[2]]
    rank = len(shape)
    for axis in range(1, rank):
        dim = shape[axis]
        if dim is not None:
            low.append(dim)
            mid.append(dim)
            high.append(dim)
            continue
        if rank >= 4 and axis >= rank - 2:
            k = axis - (rank - 2)
            low.append(spatial.min[k])
            mid.append(spatial.opt[k])
            high.append(spatial.max[k])
            continue
        raise ValueError(f"cannot plan a profile for dynamic axis {axis} of shape {shape}")
    return ShapeRange(tuple(low), tuple(mid), tuple(high))


def plan_profiles(
    spec: ModelSpec,
    *,
    mode: ProfileMode = "ranges",
    spatial: SpatialRange = DEFAULT_SPATIAL,
    max_batch: int | None = None,
) -> tuple[Profile, ...]:
    """The optimisation profiles to build ``spec``'s engine with, in profile-index order.

    ``max_batch`` is the largest batch the engine must run: the server's configured batch size
    (its batchers never send more); ``None`` takes the catalog's ``spec.max_batch_size``.
    A model with a fixed batch of 1 (``spec.fixed_batch``, YuNet) gets a single profile with
    batch 1 whatever the batch size says. A model with a fixed, non-dynamic batch other than 1
    gets a single static profile of that batch.
    """
    first = spec.inputs[0].shape[0]
    largest = spec.max_batch_size if max_batch is None else max_batch
    batches: tuple[tuple[int, int, int], ...]
    if first is not None:
        batches = ((first, first, first),)
    elif mode == "ranges":
        batches = batch_ranges(largest)
    elif mode == "buckets":
        batches = tuple((b, b, b) for b in batch_buckets(largest))
    else:
        raise ValueError(f"unknown profile mode {mode!r}")
    return tuple(
        Profile(tuple((t.name, _input_range(t.shape, batch, spatial)) for t in spec.inputs))
        for batch in batches
    )


def padded_batch(profile: Profile, batch: int) -> int:
    """The batch size ``profile`` runs for ``batch`` items: ``batch`` raised to its minimum."""
    if not 1 <= batch <= profile.max_batch:
        raise ValueError(f"batch {batch} is outside 1..{profile.max_batch}")
    return max(batch, profile.min_batch)


def select_profile(profiles: Sequence[Profile], shapes: Mapping[str, Sequence[int]]) -> int:
    """Index of the profile that serves input ``shapes`` with the least padding.

    Ties go to the profile whose ``opt`` batch is closest to the padded batch, then to the lower
    index. Raises :class:`InvalidArgument` when no profile accepts the shapes (a batch larger
    than every profile must be split first, see :func:`split_batch`).
    """
    best: tuple[int, int, int] | None = None
    for index, profile in enumerate(profiles):
        if not profile.accepts(shapes):
            continue
        batch = batch_of(shapes)
        padded = padded_batch(profile, batch)
        rank = (padded - batch, abs(profile.opt_batch - padded), index)
        if best is None or rank < best:
            best = rank
    if best is None:
        described = ", ".join(f"{n}={tuple(s)}" for n, s in shapes.items())
        allowed = " | ".join(p.describe() for p in profiles)
        raise InvalidArgument(f"no TensorRT profile accepts {described}; profiles: {allowed}")
    return best[2]


def max_servable_batch(profiles: Sequence[Profile], shapes: Mapping[str, Sequence[int]]) -> int:
    """Largest batch one run can take for inputs shaped like ``shapes`` (batch axis ignored).

    0 when no profile accepts the non-batch axes at all.
    """
    largest = 0
    for profile in profiles:
        probe = {name: (profile.max_batch, *tuple(s)[1:]) for name, s in shapes.items()}
        if profile.accepts(probe, allow_padding=False):
            largest = max(largest, profile.max_batch)
    return largest


def batch_of(shapes: Mapping[str, Sequence[int]]) -> int:
    """The common batch (first axis) of all input shapes; ``InvalidArgument`` if they differ."""
    batches = {int(s[0]) if len(s) else -1 for s in shapes.values()}
    if len(batches) != 1:
        raise InvalidArgument(f"inputs disagree on the batch size: {dict(shapes)}")
    batch = batches.pop()
    if batch < 0:
        raise InvalidArgument("inputs must have a batch axis")
    return batch


def split_batch(batch: int, max_batch: int) -> list[slice]:
    """Cut ``0..batch`` into consecutive slices of at most ``max_batch`` items."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    if batch < 0:
        raise ValueError(f"batch must be >= 0, got {batch}")
    return [slice(start, min(start + max_batch, batch)) for start in range(0, batch, max_batch)]


def pad_batch(array: np.ndarray, batch: int) -> np.ndarray:
    """``array`` with zero rows appended along axis 0 up to ``batch`` rows (no copy if equal)."""
    current = array.shape[0]
    if batch < current:
        raise ValueError(f"cannot pad {current} rows down to {batch}")
    if batch == current:
        return array
    padding = np.zeros((batch - current, *array.shape[1:]), dtype=array.dtype)
    return np.concatenate([array, padding], axis=0)


def fill_padded(destination: np.ndarray, source: np.ndarray) -> None:
    """Copy ``source`` into the leading rows of ``destination`` and zero the rest.

    ``destination`` is typically a view of a pinned host buffer shaped for the padded batch;
    ``source`` is converted to its dtype on the way.
    """
    rows = source.shape[0]
    if destination.shape[1:] != source.shape[1:] or rows > destination.shape[0]:
        raise ValueError(f"cannot fit {source.shape} into {destination.shape}")
    destination[:rows] = source
    destination[rows:] = 0


def slice_outputs(outputs: Mapping[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """Drop the padding rows: the first ``batch`` rows of every output."""
    sliced: dict[str, np.ndarray] = {}
    for name, array in outputs.items():
        if array.shape[0] < batch:
            raise ValueError(f"output {name} has {array.shape[0]} rows, fewer than {batch}")
        sliced[name] = array[:batch]
    return sliced


def nbytes(shape: Sequence[int], dtype: Any) -> int:
    """Bytes of a C-contiguous array of ``shape`` and ``dtype``; refuses dynamic (-1) axes."""
    if any(int(d) < 0 for d in shape):
        raise ValueError(f"shape {tuple(shape)} has a dynamic axis")
    return math.prod(int(d) for d in shape) * int(np.dtype(dtype).itemsize)


def max_input_shapes(profiles: Sequence[Profile]) -> dict[str, Shape]:
    """Per input, the axis-wise maximum of its ``max`` shape over all ``profiles``.

    A buffer of that shape serves every profile, so one execution slot can switch profiles
    without reallocating.
    """
    if not profiles:
        raise ValueError("no profiles")
    largest: dict[str, Shape] = {}
    for profile in profiles:
        for name, shape_range in profile.inputs:
            seen = largest.get(name)
            largest[name] = (
                shape_range.max
                if seen is None
                else tuple(max(a, b) for a, b in zip(seen, shape_range.max, strict=True))
            )
    return largest


@dataclass(frozen=True)
class EngineCacheKey:
    """What a serialized engine depends on; two equal keys may share one engine file."""

    model_sha256: str
    trt_version: str
    gpu: str
    profiles: tuple[Profile, ...]
    precision: str
    #: The builder's workspace pool limit: a smaller one can rule out the fastest tactics.
    workspace_bytes: int
    #: Builder flags set or cleared, as sorted names (e.g. ``("-TF32",)``), and the network's
    #: creation flags (``"STRONGLY_TYPED"``): they change which kernels and types are chosen.
    builder_flags: tuple[str, ...]
    #: ``IBuilderConfig.builder_optimization_level`` (0-5; TensorRT's default is 3).
    optimization_level: int
    #: What converted the graph to fp16 and its version (``"onnxruntime 1.22.0"``); empty for
    #: fp32. Another converter version may place the casts differently.
    fp16_converter: str = ""
    cache_format: int = CACHE_FORMAT

    def canonical(self) -> str:
        """Stable JSON text of the key (sorted keys, profiles as canonical strings)."""
        return json.dumps(
            {
                "builder_flags": sorted(self.builder_flags),
                "format": self.cache_format,
                "fp16_converter": self.fp16_converter,
                "gpu": self.gpu,
                "model_sha256": self.model_sha256.lower(),
                "optimization_level": self.optimization_level,
                "precision": self.precision,
                "profiles": [p.describe() for p in self.profiles],
                "trt_version": self.trt_version,
                "workspace_bytes": self.workspace_bytes,
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    def digest(self) -> str:
        """First 24 hex digits of the sha256 of :meth:`canonical`."""
        return hashlib.sha256(self.canonical().encode()).hexdigest()[:24]


def engine_file_name(model_name: str, key: EngineCacheKey) -> str:
    """A file name for ``key``'s engine, e.g. ``dlib-resnet.fp16.3fa1….engine``.

    The model name is only there for people listing the cache; the digest decides.
    """
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", model_name).strip(".-") or "model"
    precision = re.sub(r"[^A-Za-z0-9]+", "", key.precision) or "x"
    return f"{safe}.{precision}.{key.digest()}.engine"


def timing_cache_name(trt_version: str, gpu: str) -> str:
    """File name of the builder's timing cache for one TensorRT version on one GPU model.

    Timings are only valid for the GPU and TensorRT that measured them; TensorRT checks that too
    (and ignores a mismatching cache), the name keeps one file per pair instead of overwriting.
    """
    digest = hashlib.sha256(f"{trt_version}|{gpu}".encode()).hexdigest()[:16]
    return f"timing.{digest}.cache"


@dataclass
class ExecutionSlot:
    """One execution context and the CUDA stream and buffers it runs with.

    vigil runs one slot per concurrent stream. The handles are the backend's (TensorRT engine
    and context, CUDA stream, pinned host buffers, device pointers); this class only names them.
    A slot is used by one thread at a time: :class:`SlotPool` hands it out.
    """

    index: int
    #: TensorRT ``ICudaEngine`` the context belongs to.
    engine: Any = None
    #: TensorRT ``IExecutionContext``.
    context: Any = None
    #: CUDA stream (backend-specific handle).
    stream: Any = None
    #: The context's active optimisation profile; ``None`` until one is set.
    active_profile: int | None = None
    #: Pinned host buffer per tensor name, as flat uint8 numpy views.
    host: dict[str, np.ndarray] = field(default_factory=dict)
    #: Device pointer per tensor name.
    device: dict[str, int] = field(default_factory=dict)
    #: Capacity in bytes of each tensor's buffers.
    capacity: dict[str, int] = field(default_factory=dict)


SlotT = TypeVar("SlotT")


class SlotPool(Generic[SlotT]):
    """A thread-safe pool of slots: ``with pool.acquire() as slot:`` blocks until one is free.

    :meth:`drain` closes the pool (new acquires raise :class:`Unavailable`), waits until every
    slot is back, and returns them all so their resources can be freed.
    """

    def __init__(self, slots: Sequence[SlotT]) -> None:
        if not slots:
            raise ValueError("a pool needs at least one slot")
        self._all: tuple[SlotT, ...] = tuple(slots)
        self._free: list[SlotT] = list(slots)
        self._closed = False
        self._cond = threading.Condition()

    @property
    def size(self) -> int:
        return len(self._all)

    @property
    def available(self) -> int:
        with self._cond:
            return len(self._free)

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    @contextmanager
    def acquire(self, timeout: float | None = None) -> Iterator[SlotT]:
        """Lend one slot for the ``with`` block; ``TimeoutError`` if none frees up in time."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._closed or bool(self._free), timeout):
                raise TimeoutError("no execution slot became free in time")
            if self._closed:
                raise Unavailable("the TensorRT model is unloaded")
            slot = self._free.pop()
        try:
            yield slot
        finally:
            with self._cond:
                self._free.append(slot)
                self._cond.notify_all()

    def drain(self, timeout: float | None = None) -> tuple[SlotT, ...]:
        """Close the pool, wait for lent slots to come back, return all slots.

        Raises ``TimeoutError`` (the pool stays closed) if some slot is still lent at ``timeout``.
        """
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            if not self._cond.wait_for(lambda: len(self._free) == len(self._all), timeout):
                raise TimeoutError("execution slots are still in use")
            return self._all
