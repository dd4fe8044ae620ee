"""Tests of the native TensorRT backend.

Three layers:

1. :mod:`vigil.inference.backends.trt_plan` on CPU: profiles, profile choice, padding, splitting,
   cache keys, buffer sizes, the slot pool. Exact values, so they fail when the logic is wrong.
2. :mod:`vigil.inference.backends.tensorrt` on CPU against a small fake of TensorRT and the CUDA
   runtime (numpy "device" memory): load/build/cache, padding and chunking through ``infer``, thread
   safety, unload, and the errors when tensorrt, cuda-python or a GPU is missing.
3. The real thing on a GPU: build the dlib ResNet engine from the model mirror and compare with
   ONNX Runtime on CPU. Skipped, with the reason, without tensorrt, cuda-python or a GPU.
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib
import importlib.util
import json
import logging
import os
import sys
import threading
import time
import tomllib
import types
from collections.abc import Callable
from dataclasses import replace
from enum import IntEnum
from pathlib import Path
from typing import Any, Protocol

import grpc
import numpy as np
import pytest

from vigil.inference.backends import tensorrt as trt_backend
from vigil.inference.backends import trt_plan as plan
from vigil.inference.backends.base import BackendOptions
from vigil.inference.catalog import (
    DLIB_RESNET,
    MINIFASNET_V1SE,
    MINIFASNET_V2,
    YUNET,
    ModelSpec,
    TensorSpec,
)
from vigil.inference.errors import InvalidArgument, ModelError, Unavailable


def _model_dir() -> Path:
    configured = os.environ.get("VIGIL_MODEL_MIRROR")
    if configured and not configured.startswith(("http://", "https://", "file://")):
        return Path(configured)
    return Path(__file__).resolve().parents[2] / "shared" / "models"


MODEL_DIR = _model_dir()
DLIB_PATH = MODEL_DIR / DLIB_RESNET.file


# =========================================================================== trt_plan: shapes


def test_shape_range_validates_and_accepts() -> None:
    r = plan.ShapeRange((1, 3, 80, 80), (8, 3, 80, 80), (32, 3, 80, 80))
    assert not r.static
    assert r.accepts((1, 3, 80, 80)) and r.accepts((32, 3, 80, 80))
    assert not r.accepts((33, 3, 80, 80))
    assert not r.accepts((4, 3, 80, 81))
    assert not r.accepts((4, 3, 80))
    assert r.describe() == "1x3x80x80/8x3x80x80/32x3x80x80"
    with pytest.raises(ValueError, match="min <= opt <= max"):
        plan.ShapeRange((2, 3), (1, 3), (4, 3))
    with pytest.raises(ValueError, match="rank"):
        plan.ShapeRange((1, 3), (1, 3, 3), (1, 3))
    with pytest.raises(ValueError):
        plan.ShapeRange((0, 3), (1, 3), (1, 3))


def test_shape_range_padding_only_on_the_batch_axis() -> None:
    static = plan.ShapeRange((8, 3), (8, 3), (8, 3))
    assert static.static
    assert static.accepts_after_batch_padding((5, 3))
    assert not static.accepts((5, 3))
    assert not static.accepts_after_batch_padding((9, 3))
    assert not static.accepts_after_batch_padding((5, 4))
    assert not static.accepts_after_batch_padding((0, 3))


def test_profile_requires_one_batch_range() -> None:
    a = plan.ShapeRange((1, 2), (2, 2), (4, 2))
    b = plan.ShapeRange((1, 5), (4, 5), (4, 5))
    with pytest.raises(ValueError, match="batch range"):
        plan.Profile((("a", a), ("b", b)))
    with pytest.raises(ValueError):
        plan.Profile(())
    profile = plan.Profile((("a", a),))
    assert profile.range("a") is a
    with pytest.raises(KeyError):
        profile.range("nope")
    assert (profile.min_batch, profile.opt_batch, profile.max_batch) == (1, 2, 4)
    assert profile.describe() == "a:1x2/2x2/4x2"


@pytest.mark.parametrize(
    ("max_batch", "expected"),
    [
        (1, ((1, 1, 1),)),
        (3, ((1, 3, 3),)),
        (4, ((1, 4, 4),)),
        (5, ((1, 1, 4), (5, 5, 5))),
        (32, ((1, 1, 4), (5, 32, 32))),
    ],
)
def test_batch_ranges(max_batch: int, expected: tuple[tuple[int, int, int], ...]) -> None:
    assert plan.batch_ranges(max_batch) == expected


@pytest.mark.parametrize(
    ("max_batch", "expected"),
    [
        (1, (1,)),
        (2, (1, 2)),
        (3, (1, 2, 3)),
        (24, (1, 2, 4, 8, 16, 24)),
        (32, (1, 2, 4, 8, 16, 32)),
    ],
)
def test_batch_buckets(max_batch: int, expected: tuple[int, ...]) -> None:
    assert plan.batch_buckets(max_batch) == expected


def test_batch_helpers_refuse_zero() -> None:
    with pytest.raises(ValueError):
        plan.batch_ranges(0)
    with pytest.raises(ValueError):
        plan.batch_buckets(0)


# =========================================================================== trt_plan: profiles


def test_plan_profiles_dlib_ranges() -> None:
    profiles = plan.plan_profiles(DLIB_RESNET)
    assert [p.describe() for p in profiles] == [
        "input:1x3x150x150/1x3x150x150/4x3x150x150",
        "input:5x3x150x150/32x3x150x150/32x3x150x150",
    ]


def test_plan_profiles_buckets_are_static() -> None:
    profiles = plan.plan_profiles(MINIFASNET_V2, mode="buckets")
    assert [p.max_batch for p in profiles] == [1, 2, 4, 8, 16, 32]
    assert all(p.range("input").static for p in profiles)
    assert profiles[3].range("input").min == (8, 3, 80, 80)


def test_plan_profiles_yunet_dynamic_spatial() -> None:
    (profile,) = plan.plan_profiles(YUNET)
    r = profile.range("input")
    assert (r.min, r.opt, r.max) == ((1, 3, 32, 32), (1, 3, 640, 640), (1, 3, 1280, 1280))
    # buckets mode does not apply to a fixed batch of 1
    assert plan.plan_profiles(YUNET, mode="buckets") == (profile,)


def test_plan_profiles_fixed_detection_size() -> None:
    fixed = plan.SpatialRange((480, 640), (480, 640), (480, 640))
    (profile,) = plan.plan_profiles(YUNET, spatial=fixed)
    assert profile.range("input").static
    assert profile.range("input").max == (1, 3, 480, 640)


def test_plan_profiles_follow_the_configured_batch_size() -> None:
    """The batchers send up to the server's batch size, not the catalog's 32."""
    assert [p.describe() for p in plan.plan_profiles(DLIB_RESNET, max_batch=64)] == [
        "input:1x3x150x150/1x3x150x150/4x3x150x150",
        "input:5x3x150x150/64x3x150x150/64x3x150x150",
    ]
    assert [p.describe() for p in plan.plan_profiles(MINIFASNET_V2, max_batch=1)] == [
        "input:1x3x80x80/1x3x80x80/1x3x80x80"
    ]
    buckets = plan.plan_profiles(DLIB_RESNET, mode="buckets", max_batch=128)
    assert [p.max_batch for p in buckets] == [1, 2, 4, 8, 16, 32, 64, 128]
    # a fixed batch of 1 stays 1
    assert plan.plan_profiles(YUNET, max_batch=64)[0].max_batch == 1


@pytest.mark.parametrize(
    ("max_side", "low", "side"), [(640, 32, 640), (1000, 32, 1024), (1920, 32, 1920), (20, 32, 32)]
)
def test_detector_spatial_from_the_detection_size(max_side: int, low: int, side: int) -> None:
    spatial = plan.detector_spatial(max_side)
    assert spatial == plan.SpatialRange((low, low), (side, side), (side, side))
    (profile,) = plan.plan_profiles(YUNET, spatial=spatial)
    assert profile.range("input").max == (1, 3, side, side)
    with pytest.raises(ValueError):
        plan.detector_spatial(0)


def test_detector_spatial_takes_every_shape_the_detector_feeds() -> None:
    """Whatever the photo's aspect, the detector's padded input fits the profile."""
    from vigil.inference.detector import prepare

    (profile,) = plan.plan_profiles(YUNET, spatial=plan.detector_spatial(1000))
    for h, w in ((3000, 4000), (4000, 3000), (1000, 1000), (5000, 200), (40, 30), (999, 1001)):
        tensor, _ = prepare(np.zeros((h, w, 3), np.uint8), max_side=1000, min_side=320)
        assert profile.accepts({"input": tensor.shape}), (h, w, tensor.shape)


def test_plan_profiles_small_max_batch_and_errors() -> None:
    small = replace(MINIFASNET_V2, max_batch_size=3)
    assert [p.describe() for p in plan.plan_profiles(small)] == [
        "input:1x3x80x80/3x3x80x80/3x3x80x80"
    ]
    weird = replace(DLIB_RESNET, inputs=(TensorSpec("input", (None, None, 150, 150)),))
    with pytest.raises(ValueError, match="dynamic axis 1"):
        plan.plan_profiles(weird)
    with pytest.raises(ValueError, match="mode"):
        plan.plan_profiles(DLIB_RESNET, mode="nope")  # type: ignore[arg-type]  # refused at run time


# =========================================================================== trt_plan: choice


@pytest.mark.parametrize(("batch", "index"), [(1, 0), (3, 0), (4, 0), (5, 1), (17, 1), (32, 1)])
def test_select_profile_ranges(batch: int, index: int) -> None:
    profiles = plan.plan_profiles(DLIB_RESNET)
    assert plan.select_profile(profiles, {"input": (batch, 3, 150, 150)}) == index
    assert plan.padded_batch(profiles[index], batch) == batch  # ranges never pad


@pytest.mark.parametrize(
    ("batch", "bucket"), [(1, 1), (2, 2), (3, 4), (5, 8), (9, 16), (17, 32), (32, 32)]
)
def test_select_profile_buckets_pads_to_next_bucket(batch: int, bucket: int) -> None:
    profiles = plan.plan_profiles(DLIB_RESNET, mode="buckets")
    index = plan.select_profile(profiles, {"input": (batch, 3, 150, 150)})
    assert profiles[index].max_batch == bucket
    assert plan.padded_batch(profiles[index], batch) == bucket


def test_select_profile_refuses_what_no_profile_takes() -> None:
    profiles = plan.plan_profiles(DLIB_RESNET)
    with pytest.raises(InvalidArgument, match="no TensorRT profile"):
        plan.select_profile(profiles, {"input": (33, 3, 150, 150)})
    with pytest.raises(InvalidArgument):
        plan.select_profile(profiles, {"input": (2, 3, 160, 150)})
    with pytest.raises(InvalidArgument):
        plan.select_profile(profiles, {"other": (2, 3, 150, 150)})
    yunet = plan.plan_profiles(YUNET)
    assert plan.select_profile(yunet, {"input": (1, 3, 480, 640)}) == 0
    with pytest.raises(InvalidArgument):
        plan.select_profile(yunet, {"input": (1, 3, 1312, 640)})


def test_select_profile_prefers_least_padding_then_closest_opt() -> None:
    def profile(low: int, mid: int, high: int) -> plan.Profile:
        return plan.Profile((("x", plan.ShapeRange((low, 2), (mid, 2), (high, 2))),))

    wide, tight, static = profile(1, 16, 16), profile(1, 4, 8), profile(8, 8, 8)
    # 6 fits all three: wide and tight without padding, tight's opt (4) is closer than 16
    assert plan.select_profile([wide, tight, static], {"x": (6, 2)}) == 1
    # 8: no padding anywhere; static's opt equals 8 exactly
    assert plan.select_profile([wide, tight, static], {"x": (8, 2)}) == 2
    # equal rank: the lower index wins
    assert plan.select_profile([tight, tight], {"x": (3, 2)}) == 0
    # only the static one: padding 3 -> 8
    assert plan.select_profile([static], {"x": (3, 2)}) == 0


def test_padded_batch_limits() -> None:
    (profile,) = plan.plan_profiles(YUNET)
    assert plan.padded_batch(profile, 1) == 1
    with pytest.raises(ValueError):
        plan.padded_batch(profile, 2)
    with pytest.raises(ValueError):
        plan.padded_batch(profile, 0)


def test_max_servable_batch() -> None:
    assert (
        plan.max_servable_batch(plan.plan_profiles(DLIB_RESNET), {"input": (70, 3, 150, 150)}) == 32
    )
    assert plan.max_servable_batch(plan.plan_profiles(YUNET), {"input": (3, 3, 480, 640)}) == 1
    assert plan.max_servable_batch(plan.plan_profiles(YUNET), {"input": (1, 3, 2000, 640)}) == 0
    assert plan.max_servable_batch(plan.plan_profiles(DLIB_RESNET), {"input": (1, 3, 80, 80)}) == 0


def test_batch_of() -> None:
    assert plan.batch_of({"a": (3, 2), "b": (3, 5, 5)}) == 3
    with pytest.raises(InvalidArgument, match="disagree"):
        plan.batch_of({"a": (3, 2), "b": (4, 2)})
    with pytest.raises(InvalidArgument):
        plan.batch_of({"a": ()})


def test_split_batch() -> None:
    assert plan.split_batch(70, 32) == [slice(0, 32), slice(32, 64), slice(64, 70)]
    assert plan.split_batch(32, 32) == [slice(0, 32)]
    assert plan.split_batch(3, 1) == [slice(0, 1), slice(1, 2), slice(2, 3)]
    assert plan.split_batch(0, 8) == []
    with pytest.raises(ValueError):
        plan.split_batch(5, 0)
    with pytest.raises(ValueError):
        plan.split_batch(-1, 4)


# =========================================================================== trt_plan: padding


def test_pad_batch_and_slice_back() -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    padded = plan.pad_batch(x, 5)
    assert padded.shape == (5, 4)
    np.testing.assert_array_equal(padded[:3], x)
    np.testing.assert_array_equal(padded[3:], 0)
    assert plan.pad_batch(x, 3) is x
    with pytest.raises(ValueError):
        plan.pad_batch(x, 2)
    sliced = plan.slice_outputs({"y": padded * 2, "z": padded[:, :1]}, 3)
    np.testing.assert_array_equal(sliced["y"], x * 2)
    assert sliced["z"].shape == (3, 1)
    with pytest.raises(ValueError):
        plan.slice_outputs({"y": x}, 4)


def test_fill_padded_overwrites_stale_rows() -> None:
    destination = np.full((4, 2), 7.0, dtype=np.float32)
    plan.fill_padded(destination, np.array([[1, 2], [3, 4]], dtype=np.float64))
    np.testing.assert_array_equal(destination, [[1, 2], [3, 4], [0, 0], [0, 0]])
    with pytest.raises(ValueError):
        plan.fill_padded(destination, np.zeros((5, 2)))
    with pytest.raises(ValueError):
        plan.fill_padded(destination, np.zeros((2, 3)))


def test_padding_round_trip_equals_unpadded_run() -> None:
    """What the backend does with a bucket profile gives the same rows as no padding at all."""
    profiles = plan.plan_profiles(MINIFASNET_V2, mode="buckets")
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 255, (5, 3, 80, 80)).astype(np.float32)

    def model(batch: np.ndarray) -> np.ndarray:
        means: np.ndarray = batch.reshape(batch.shape[0], -1).mean(axis=1, keepdims=True)
        return means

    index = plan.select_profile(profiles, {"input": x.shape})
    padded = plan.pad_batch(x, plan.padded_batch(profiles[index], 5))
    assert padded.shape[0] == 8
    out = plan.slice_outputs({"logits": model(padded)}, 5)["logits"]
    np.testing.assert_allclose(out, model(x), rtol=1e-6)


# =========================================================================== trt_plan: sizes


def test_nbytes() -> None:
    assert plan.nbytes((32, 3, 150, 150), np.float32) == 32 * 3 * 150 * 150 * 4 == 8_640_000
    assert plan.nbytes((2, 128), "float16") == 512
    assert plan.nbytes((0, 128), np.float32) == 0
    with pytest.raises(ValueError, match="dynamic"):
        plan.nbytes((-1, 128), np.float32)


def test_max_input_shapes_over_profiles() -> None:
    assert plan.max_input_shapes(plan.plan_profiles(DLIB_RESNET, mode="buckets")) == {
        "input": (32, 3, 150, 150)
    }
    assert plan.max_input_shapes(plan.plan_profiles(YUNET)) == {"input": (1, 3, 1280, 1280)}
    mixed = [
        plan.Profile((("x", plan.ShapeRange((1, 2, 9), (1, 2, 9), (4, 2, 9))),)),
        plan.Profile((("x", plan.ShapeRange((1, 5, 3), (1, 5, 3), (2, 5, 3))),)),
    ]
    assert plan.max_input_shapes(mixed) == {"x": (4, 5, 9)}
    with pytest.raises(ValueError):
        plan.max_input_shapes([])


# =========================================================================== trt_plan: cache key


def _key(**changes: Any) -> plan.EngineCacheKey:
    base = plan.EngineCacheKey(
        model_sha256=DLIB_RESNET.sha256,
        trt_version="11.4.0.106",
        gpu="NVIDIA H100 80GB HBM3 sm_90",
        profiles=plan.plan_profiles(DLIB_RESNET),
        precision="fp16",
        workspace_bytes=1 << 30,
        builder_flags=("STRONGLY_TYPED",),
        optimization_level=3,
        fp16_converter="onnxruntime 1.22.0",
    )
    return replace(base, **changes)


def test_cache_key_canonical_text() -> None:
    assert json.loads(_key().canonical()) == {
        "builder_flags": ["STRONGLY_TYPED"],
        "format": plan.CACHE_FORMAT,
        "fp16_converter": "onnxruntime 1.22.0",
        "gpu": "NVIDIA H100 80GB HBM3 sm_90",
        "model_sha256": DLIB_RESNET.sha256,
        "optimization_level": 3,
        "precision": "fp16",
        "profiles": [
            "input:1x3x150x150/1x3x150x150/4x3x150x150",
            "input:5x3x150x150/32x3x150x150/32x3x150x150",
        ],
        "trt_version": "11.4.0.106",
        "workspace_bytes": 1 << 30,
    }
    assert _key().digest() == _key().digest()
    assert len(_key().digest()) == 24
    assert _key(model_sha256=DLIB_RESNET.sha256.upper()).digest() == _key().digest()


@pytest.mark.parametrize(
    "change",
    [
        {"model_sha256": MINIFASNET_V2.sha256},
        {"trt_version": "10.13.0.35"},
        {"gpu": "NVIDIA L4 sm_89"},
        {"precision": "fp32"},
        {"profiles": plan.plan_profiles(DLIB_RESNET, mode="buckets")},
        {"profiles": plan.plan_profiles(DLIB_RESNET, max_batch=64)},
        {"workspace_bytes": 1 << 31},
        {"builder_flags": ("-TF32", "STRONGLY_TYPED")},
        {"optimization_level": 5},
        {"fp16_converter": "onnxruntime 1.23.0"},
        {"cache_format": plan.CACHE_FORMAT + 1},
    ],
)
def test_cache_key_changes_with_every_field(change: dict[str, Any]) -> None:
    assert _key(**change).digest() != _key().digest()


def test_timing_cache_name_per_trt_and_gpu() -> None:
    name = plan.timing_cache_name("11.4.0.106", "NVIDIA H100 80GB HBM3 sm_90")
    assert name == plan.timing_cache_name("11.4.0.106", "NVIDIA H100 80GB HBM3 sm_90")
    assert name.startswith("timing.") and name.endswith(".cache")
    assert name != plan.timing_cache_name("10.13.0.35", "NVIDIA H100 80GB HBM3 sm_90")
    assert name != plan.timing_cache_name("11.4.0.106", "NVIDIA L4 sm_89")


def test_engine_file_name() -> None:
    key = _key()
    assert plan.engine_file_name("dlib-resnet", key) == f"dlib-resnet.fp16.{key.digest()}.engine"
    name = plan.engine_file_name("../we ird/name", key)
    assert "/" not in name and " " not in name and not name.startswith(".")
    assert name.endswith(f".fp16.{key.digest()}.engine")


# =========================================================================== trt_plan: pool


def test_slot_pool_bounds_concurrency() -> None:
    pool = plan.SlotPool([plan.ExecutionSlot(0), plan.ExecutionSlot(1)])
    assert pool.size == 2 and pool.available == 2
    lock = threading.Lock()
    active = 0
    peak = 0
    used: set[int] = set()

    def work() -> None:
        nonlocal active, peak
        with pool.acquire(timeout=10) as slot:
            with lock:
                active += 1
                peak = max(peak, active)
                used.add(slot.index)
            time.sleep(0.02)
            with lock:
                active -= 1

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak == 2
    assert used == {0, 1}
    assert pool.available == 2


def test_slot_pool_timeout_and_drain() -> None:
    pool = plan.SlotPool([plan.ExecutionSlot(0)])
    with pool.acquire() as slot:
        assert slot.index == 0 and pool.available == 0
        with pytest.raises(TimeoutError), pool.acquire(timeout=0.01):
            pass
    released = threading.Event()

    def hold() -> None:
        with pool.acquire():
            released.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    while pool.available:
        time.sleep(0.001)
    with pytest.raises(TimeoutError):
        pool.drain(timeout=0.01)
    assert pool.closed
    released.set()
    assert [s.index for s in pool.drain(timeout=5)] == [0]
    holder.join()
    with pytest.raises(Unavailable), pool.acquire():
        pass
    with pytest.raises(ValueError):
        plan.SlotPool([])


# =========================================================================== fakes: TRT + CUDA


class _CudaErrorT(IntEnum):
    """The fake's ``cudaError_t``: cuda-python returns members of such an enum."""

    cudaErrorMemoryAllocation = 2
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100
    cudaErrorIllegalAddress = 700
    cudaErrorLaunchOutOfResources = 701


class _FakeCudart(types.ModuleType):
    """Enough of ``cuda.bindings.runtime`` for the backend, with "device" memory in numpy."""

    cudaStreamNonBlocking = 1
    cudaError_t = _CudaErrorT

    class cudaMemcpyKind:
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    def __init__(self, devices: int = 1) -> None:
        super().__init__("cuda.bindings.runtime")
        self.devices = devices
        #: What ``cudaGetDeviceCount`` answers when there are no devices.
        self.no_device_error: int = _CudaErrorT.cudaErrorNoDevice
        self.synchronized: list[int] = []
        self.blocks: dict[int, np.ndarray] = {}
        self.freed: list[int] = []
        self.streams: set[int] = set()
        self._next_stream = 100

    def _alloc(self, size: int) -> tuple[int, int]:
        block = np.zeros(size, dtype=np.uint8)
        pointer = block.ctypes.data
        self.blocks[pointer] = block
        return 0, pointer

    def _free(self, pointer: int) -> tuple[int]:
        self.blocks.pop(pointer)
        self.freed.append(pointer)
        return (0,)

    def cudaGetDeviceCount(self) -> tuple[int, int | None]:
        return (0, self.devices) if self.devices else (self.no_device_error, None)

    def cudaSetDevice(self, device: int) -> tuple[int]:
        return (0,) if device < self.devices else (101,)

    def cudaGetDeviceProperties(self, device: int) -> tuple[int, Any]:
        return 0, types.SimpleNamespace(name=b"Fake GPU\0\0", major=9, minor=0)

    def cudaGetErrorString(self, err: int) -> tuple[int, bytes]:
        if err == _CudaErrorT.cudaErrorIllegalAddress:
            return 0, b"an illegal memory access was encountered"
        return 0, b"fake error"

    def cudaStreamCreateWithFlags(self, flags: int) -> tuple[int, int]:
        self._next_stream += 1
        self.streams.add(self._next_stream)
        return 0, self._next_stream

    def cudaStreamDestroy(self, stream: int) -> tuple[int]:
        self.streams.remove(stream)
        return (0,)

    def cudaStreamSynchronize(self, stream: int) -> tuple[int]:
        self.synchronized.append(stream)
        return (0,)

    def cudaMalloc(self, size: int) -> tuple[int, int]:
        return self._alloc(size)

    cudaMallocHost = cudaMalloc

    def cudaFree(self, pointer: int) -> tuple[int]:
        return self._free(pointer)

    cudaFreeHost = cudaFree

    def cudaMemcpyAsync(self, dst: int, src: int, size: int, kind: int, stream: int) -> tuple[int]:
        assert stream in self.streams
        ctypes.memmove(dst, src, size)
        return (0,)


#: A fake engine's computation: input batch → outputs.
Graph = Callable[[np.ndarray], dict[str, np.ndarray]]


def _fake_model(x: np.ndarray) -> dict[str, np.ndarray]:
    """The fake engine's graph: per row, the sum and the max of the input."""
    flat = x.reshape(x.shape[0], -1).astype(np.float64)
    return {"score": np.stack([flat.sum(axis=1), flat.max(axis=1)], axis=1).astype(np.float32)}


def _fake_detector(x: np.ndarray) -> dict[str, np.ndarray]:
    """A YuNet-like graph: batch 1, dynamic H/W, output rows = H*W/4."""
    pooled = x[:, 0].reshape(x.shape[0], x.shape[2] // 2, 2, x.shape[3] // 2, 2).mean(axis=(2, 4))
    return {"cls": pooled.reshape(x.shape[0], -1, 1).astype(np.float32)}


FAKE_SPEC = ModelSpec(
    name="fake-embed",
    version="1",
    file="fake.onnx",
    sha256="ab" * 32,
    task="test",
    licence="none",
    provenance="test",
    inputs=(TensorSpec("input", (None, 3, 4, 4)),),
    outputs=(TensorSpec("score", (None, 2)),),
    preprocessing="none",
    max_batch_size=8,
)

FAKE_DETECTOR = replace(
    FAKE_SPEC,
    name="fake-detect",
    inputs=(TensorSpec("input", (1, 1, None, None)),),
    outputs=(TensorSpec("cls", (1, None, 1)),),
    max_batch_size=1,
)


class _FakeTrt(types.ModuleType):
    """Enough of the ``tensorrt`` module: builder, parser, runtime, engine, context."""

    class Logger:
        WARNING = 2

        def __init__(self, severity: int) -> None:
            self.severity = severity

    class TensorIOMode:
        INPUT = "input"
        OUTPUT = "output"

    class MemoryPoolType:
        WORKSPACE = "workspace"

    class NetworkDefinitionCreationFlag:
        STRONGLY_TYPED = 5

    class BuilderFlag:
        TF32 = "tf32"

    def __init__(self, spec: ModelSpec, graph: Graph, version: str = "11.4.0.106") -> None:
        super().__init__("tensorrt")
        self.__version__ = version
        self.spec = spec
        self.graph = graph
        self.builds: list[dict[str, Any]] = []
        self.deserialized = 0
        fake = self

        class Builder:
            def __init__(self, logger: Any) -> None:
                pass

            def create_network(self, flags: int) -> Any:
                names = [t.name for t in fake.spec.inputs]
                return types.SimpleNamespace(
                    flags=flags,
                    num_inputs=len(names),
                    get_input=lambda i: types.SimpleNamespace(name=names[i]),
                )

            def create_builder_config(self) -> Any:
                return _FakeBuilderConfig()

            def create_optimization_profile(self) -> Any:
                profile = types.SimpleNamespace(shapes={})
                profile.set_shape = lambda name, lo, mid, hi: profile.shapes.__setitem__(
                    name, (tuple(lo), tuple(mid), tuple(hi))
                )
                return profile

            def build_serialized_network(self, network: Any, config: Any) -> bytes:
                fake.builds.append(
                    {
                        "flags": network.flags,
                        "profiles": config.profiles,
                        "cleared": set(config.cleared),
                        "level": config.builder_optimization_level,
                        "workspace": config.pool.get("workspace"),
                        "timing_seed": config.timing_seed,
                    }
                )
                config.timings = [*config.timings, f"build {len(fake.builds)}"]
                return json.dumps([p.shapes for p in config.profiles]).encode()

        class OnnxParser:
            num_errors = 0

            def __init__(self, network: Any, logger: Any) -> None:
                pass

            def parse(self, data: bytes, path: str | None = None) -> bool:
                return data.startswith(b"onnx")

        class Runtime:
            def __init__(self, logger: Any) -> None:
                pass

            def deserialize_cuda_engine(self, data: bytes) -> Any:
                try:
                    profiles = json.loads(data)
                except ValueError:
                    return None
                fake.deserialized += 1
                return _FakeEngine(fake, profiles)

        self.Builder = Builder
        self.OnnxParser = OnnxParser
        self.Runtime = Runtime

    @staticmethod
    def nptype(dtype: Any) -> Any:
        return dtype


class _FakeTimingCache:
    def __init__(self, entries: list[str]) -> None:
        self.entries = entries

    def serialize(self) -> bytes:
        return json.dumps(self.entries).encode()


class _FakeBuilderConfig:
    """``IBuilderConfig``: records flags, level, pool limits, profiles and the timing cache
    (a JSON list of "timings"; anything else is refused like a foreign cache)."""

    def __init__(self) -> None:
        self.profiles: list[Any] = []
        self.pool: dict[str, int] = {}
        self.cleared: list[str] = []
        self.builder_optimization_level = 3
        self.timing_seed: list[str] | None = None
        self.timings: list[str] = []

    def set_memory_pool_limit(self, pool: str, size: int) -> None:
        self.pool[pool] = size

    def add_optimization_profile(self, profile: Any) -> None:
        self.profiles.append(profile)

    def clear_flag(self, flag: str) -> None:
        self.cleared.append(flag)

    def create_timing_cache(self, data: bytes) -> _FakeTimingCache:
        if not data:
            return _FakeTimingCache([])
        try:
            return _FakeTimingCache(list(json.loads(data)))
        except ValueError:
            raise RuntimeError("bad timing cache") from None

    def set_timing_cache(self, cache: _FakeTimingCache, ignore_mismatch: bool) -> bool:
        assert ignore_mismatch is False
        self.timing_seed = list(cache.entries)
        self.timings = list(cache.entries)
        return True

    def get_timing_cache(self) -> _FakeTimingCache:
        return _FakeTimingCache(self.timings)


class _FakeEngine:
    def __init__(self, trt: _FakeTrt, profiles: list[dict[str, Any]]) -> None:
        self.trt = trt
        self.profiles = profiles
        self.inputs = [t.name for t in trt.spec.inputs]
        self.outputs = [t.name for t in trt.spec.outputs]
        self.num_io_tensors = len(self.inputs) + len(self.outputs)
        self.num_optimization_profiles = len(profiles)

    def get_tensor_name(self, i: int) -> str:
        return (self.inputs + self.outputs)[i]

    def get_tensor_mode(self, name: str) -> str:
        return "input" if name in self.inputs else "output"

    def get_tensor_dtype(self, name: str) -> Any:
        return np.float32

    def create_execution_context(self) -> _FakeContext:
        return _FakeContext(self)


class _FakeContext:
    def __init__(self, engine: _FakeEngine) -> None:
        self.engine = engine
        self.profile = 0
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.runs: list[tuple[int, tuple[int, ...]]] = []
        self.busy = threading.Lock()

    def set_optimization_profile_async(self, index: int, stream: int) -> bool:
        assert isinstance(stream, int)
        self.profile = index
        self.shapes = {}
        return 0 <= index < len(self.engine.profiles)

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        lo, _, hi = self.engine.profiles[self.profile][name]
        shape = tuple(shape)
        if not all(a <= d <= b for a, d, b in zip(lo, shape, hi, strict=True)):
            return False
        self.shapes[name] = shape
        return True

    def _outputs_for(self) -> dict[str, np.ndarray]:
        x = np.zeros(self.shapes["input"], dtype=np.float32)
        return self.engine.trt.graph(x)

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if name in self.shapes:
            return self.shapes[name]
        return self._outputs_for()[name].shape

    def set_tensor_address(self, name: str, pointer: int) -> bool:
        self.addresses[name] = pointer
        return True

    def execute_async_v3(self, stream: int) -> bool:
        assert self.busy.acquire(blocking=False), "a context ran on two threads at once"
        try:
            shape = self.shapes["input"]
            size = int(np.prod(shape)) * 4
            raw = (ctypes.c_uint8 * size).from_address(self.addresses["input"])
            x = np.frombuffer(memoryview(raw), dtype=np.float32).reshape(shape)
            for name, value in self.engine.trt.graph(x.copy()).items():
                data = np.ascontiguousarray(value, dtype=np.float32)
                ctypes.memmove(self.addresses[name], data.ctypes.data, data.nbytes)
            self.runs.append((self.profile, shape))
            time.sleep(0.001)
        finally:
            self.busy.release()
        return True


class FakeGpu(Protocol):
    """What the ``fake_gpu`` fixture gives: installs the fakes for a model, returns them."""

    def __call__(
        self, spec: ModelSpec, graph: Graph, *, devices: int = 1, version: str = "11.4.0.106"
    ) -> tuple[_FakeTrt, _FakeCudart]: ...


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> FakeGpu:
    """Install fake ``tensorrt`` and ``cuda.bindings.runtime`` modules; returns a factory."""

    def install(
        spec: ModelSpec, graph: Graph, *, devices: int = 1, version: str = "11.4.0.106"
    ) -> tuple[_FakeTrt, _FakeCudart]:
        fake_trt = _FakeTrt(spec, graph, version)
        cudart = _FakeCudart(devices)
        monkeypatch.setitem(sys.modules, "tensorrt", fake_trt)
        monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cudart)
        return fake_trt, cudart

    return install


def _onnx_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"onnx fake graph")
    return path


# =========================================================================== backend on fakes


def test_backend_constructor() -> None:
    backend = trt_backend.TensorRTBackend()
    assert backend.name == "tensorrt"
    assert backend.streams == 2
    with pytest.raises(ValueError):
        trt_backend.TensorRTBackend(streams=0)


def test_load_without_tensorrt_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(
        ModelError,
        match=r"pip install --extra-index-url https://pypi.nvidia.com 'vigil\[gpu-cu12\]' "
        r"or 'vigil\[gpu-cu13\]'",
    ):
        trt_backend.TensorRTBackend().load(FAKE_SPEC, _onnx_file(tmp_path), BackendOptions())


def test_load_without_cuda_python(
    fake_gpu: FakeGpu, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake_gpu(FAKE_SPEC, _fake_model)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", None)
    monkeypatch.setitem(sys.modules, "cuda.cudart", None)
    with pytest.raises(ModelError, match="cuda-python"):
        trt_backend.TensorRTBackend().load(FAKE_SPEC, _onnx_file(tmp_path), BackendOptions())


def test_load_without_gpu(fake_gpu: FakeGpu, tmp_path: Path) -> None:
    fake_gpu(FAKE_SPEC, _fake_model, devices=0)
    with pytest.raises(ModelError, match="needs an NVIDIA GPU"):
        trt_backend.TensorRTBackend().load(FAKE_SPEC, _onnx_file(tmp_path), BackendOptions())
    fake_gpu(FAKE_SPEC, _fake_model, devices=1)
    with pytest.raises(ModelError, match="GPU 3 does not exist"):
        trt_backend.TensorRTBackend().load(
            FAKE_SPEC, _onnx_file(tmp_path), BackendOptions(device_id=3)
        )


def test_a_driver_too_old_for_the_runtime_is_named_not_no_gpu(
    fake_gpu: FakeGpu, tmp_path: Path
) -> None:
    """CUDA 13's runtime on a CUDA 12 driver: cudaGetDeviceCount fails with
    cudaErrorInsufficientDriver. Said by name, with the extras to choose from; not "no GPU"."""
    _, cudart = fake_gpu(FAKE_SPEC, _fake_model, devices=0)
    cudart.no_device_error = int(_CudaErrorT.cudaErrorInsufficientDriver)  # a plain int
    with pytest.raises(ModelError) as info:
        trt_backend.TensorRTBackend().load(FAKE_SPEC, _onnx_file(tmp_path), BackendOptions())
    message = info.value.message
    assert "cudaGetDeviceCount failed: cudaErrorInsufficientDriver (35)" in message
    assert "vigil[gpu-cu12]" in message and "needs an NVIDIA GPU" not in message


def test_cuda_error_names() -> None:
    cudart = _FakeCudart()
    assert trt_backend.cuda_error_name(cudart, _CudaErrorT.cudaErrorIllegalAddress) == (
        "cudaErrorIllegalAddress"
    )
    assert trt_backend.cuda_error_name(cudart, 2) == "cudaErrorMemoryAllocation"
    assert trt_backend.cuda_error_name(types.SimpleNamespace(), 999) == "cudaError 999"
    assert str(trt_backend.CudaError("cudaFree", 999)) == "cudaFree failed: cudaError 999 (999)"


def test_load_refuses_unknown_precision(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="int8"):
        trt_backend.TensorRTBackend().load(
            FAKE_SPEC, _onnx_file(tmp_path), BackendOptions(precision="int8")
        )


def test_parse_failure_is_a_model_error(fake_gpu: FakeGpu, tmp_path: Path) -> None:
    fake_gpu(FAKE_SPEC, _fake_model)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    with pytest.raises(ModelError, match="cannot parse"):
        trt_backend.TensorRTBackend().load(FAKE_SPEC, bad, BackendOptions())


def test_network_flags() -> None:
    flag = types.SimpleNamespace(STRONGLY_TYPED=5)
    trt11 = types.SimpleNamespace(__version__="11.4.0.106", NetworkDefinitionCreationFlag=flag)
    trt10 = types.SimpleNamespace(__version__="10.13.0.35", NetworkDefinitionCreationFlag=flag)
    assert trt_backend._network_flags(trt11, "fp16") == 0  # always strongly typed in 11
    assert trt_backend._network_flags(trt11, "fp32") == 0
    assert trt_backend._network_flags(trt10, "fp16") == 1 << 5
    assert trt_backend._network_flags(trt10, "fp32") == 0


def test_build_cache_and_infer_on_fakes(fake_gpu: FakeGpu, tmp_path: Path) -> None:
    fake_trt, cudart = fake_gpu(FAKE_SPEC, _fake_model)
    cache = tmp_path / "engines"
    options = BackendOptions(cache_dir=cache)
    backend = trt_backend.TensorRTBackend(streams=2)
    model = backend.load(FAKE_SPEC, _onnx_file(tmp_path), options)
    try:
        assert model.spec is FAKE_SPEC
        assert len(fake_trt.builds) == 1
        built = fake_trt.builds[0]
        assert built["flags"] == 0
        assert [p.shapes["input"] for p in built["profiles"]] == [
            ((1, 3, 4, 4), (1, 3, 4, 4), (4, 3, 4, 4)),
            ((5, 3, 4, 4), (8, 3, 4, 4), (8, 3, 4, 4)),
        ]
        # fp32 means fp32: TF32 (on by default in TensorRT) is cleared
        assert built["cleared"] == {"tf32"}
        assert (built["level"], built["workspace"]) == (3, 1 << 30)
        assert built["timing_seed"] == []  # no timing cache yet
        key = plan.EngineCacheKey(
            model_sha256=FAKE_SPEC.sha256,
            trt_version="11.4.0.106",
            gpu="Fake GPU sm_90",
            profiles=plan.plan_profiles(FAKE_SPEC),
            precision="fp32",
            workspace_bytes=1 << 30,
            builder_flags=("-TF32", "STRONGLY_TYPED"),
            optimization_level=3,
        )
        timing = plan.timing_cache_name("11.4.0.106", "Fake GPU sm_90")
        assert sorted(p.name for p in cache.iterdir()) == sorted(
            [plan.engine_file_name("fake-embed", key), timing]
        )
        assert json.loads((cache / timing).read_bytes()) == ["build 1"]
        assert fake_trt.deserialized == 2  # one engine copy per slot
        rng = np.random.default_rng(0)
        for batch in (1, 3, 4, 5, 8, 19):
            x = rng.normal(size=(batch, 3, 4, 4)).astype(np.float32)
            out = model.infer({"input": x})
            assert set(out) == {"score"}
            assert out["score"].dtype == np.float32 and out["score"].shape == (batch, 2)
            np.testing.assert_allclose(out["score"], _fake_model(x)["score"], rtol=1e-5)
        runs = [run for slot in model._slots for run in slot.context.runs]
        # 19 = 8 + 8 + 3: two runs on the throughput profile, one on the latency profile
        assert (1, (8, 3, 4, 4)) in runs and (0, (3, 3, 4, 4)) in runs
        assert all(shape[0] <= 8 for _, shape in runs)
        empty = model.infer({"input": np.zeros((0, 3, 4, 4), np.float32)})
        assert empty["score"].shape == (0, 2)
        with pytest.raises(InvalidArgument):
            model.infer({"wrong": np.zeros((1, 3, 4, 4), np.float32)})
        with pytest.raises(InvalidArgument):
            model.infer({"input": np.zeros((1, 3, 5, 4), np.float32)})
    finally:
        model.unload()
    model.unload()  # idempotent
    assert not cudart.blocks and not cudart.streams
    with pytest.raises(Unavailable):
        model.infer({"input": np.zeros((1, 3, 4, 4), np.float32)})

    # a second load finds the engine in the cache and builds nothing; the plan read from the
    # cache is deserialized once per slot (the cache check's copy serves the first slot)
    again = backend.load(FAKE_SPEC, _onnx_file(tmp_path), options)
    again.unload()
    assert len(fake_trt.builds) == 1
    assert fake_trt.deserialized == 4
    # a corrupt cache file is rebuilt and replaced; the build starts from the timing cache
    (engine_file,) = cache.glob("*.engine")
    engine_file.write_bytes(b"not an engine")
    backend.load(FAKE_SPEC, _onnx_file(tmp_path), options).unload()
    assert len(fake_trt.builds) == 2
    assert fake_trt.builds[1]["timing_seed"] == ["build 1"]
    assert json.loads((cache / timing).read_bytes()) == ["build 1", "build 2"]
    json.loads(engine_file.read_bytes())
    assert sorted(p.name for p in cache.iterdir()) == sorted([engine_file.name, timing])
    # a damaged timing cache is replaced by a fresh one, not fatal
    (cache / timing).write_bytes(b"garbage")
    engine_file.unlink()
    backend.load(FAKE_SPEC, _onnx_file(tmp_path), options).unload()
    assert fake_trt.builds[2]["timing_seed"] == []
    assert json.loads((cache / timing).read_bytes()) == ["build 3"]


def test_buckets_pad_and_slice_on_fakes(fake_gpu: FakeGpu, tmp_path: Path) -> None:
    fake_gpu(FAKE_SPEC, _fake_model)
    model = trt_backend.TensorRTBackend(streams=1, profile_mode="buckets").load(
        FAKE_SPEC, _onnx_file(tmp_path), BackendOptions()
    )
    try:
        x = np.arange(3 * 48, dtype=np.float32).reshape(3, 3, 4, 4)
        out = model.infer({"input": x})["score"]
        np.testing.assert_allclose(out, _fake_model(x)["score"])
        (slot,) = model._slots
        assert slot.context.runs[-1][1] == (4, 3, 4, 4)  # padded to the bucket of 4
        # stale rows from a bigger earlier batch must not leak into a padded run
        model.infer({"input": np.full((8, 3, 4, 4), 100, np.float32)})
        small = model.infer({"input": x[:1]})["score"]
        np.testing.assert_allclose(small, _fake_model(x[:1])["score"])
    finally:
        model.unload()


def test_dynamic_spatial_outputs_on_fakes(fake_gpu: FakeGpu, tmp_path: Path) -> None:
    fake_gpu(FAKE_DETECTOR, _fake_detector)
    spatial = plan.SpatialRange((2, 2), (8, 8), (16, 16))
    model = trt_backend.TensorRTBackend(spatial=spatial).load(
        FAKE_DETECTOR, _onnx_file(tmp_path), BackendOptions()
    )
    try:
        assert model._slots[0].capacity["cls"] == 8 * 8 * 4  # (16/2)*(16/2) rows at max
        rng = np.random.default_rng(2)
        for h, w in ((16, 16), (4, 8), (2, 2)):
            x = rng.normal(size=(1, 1, h, w)).astype(np.float32)
            out = model.infer({"input": x})["cls"]
            assert out.shape == (1, h * w // 4, 1)
            np.testing.assert_allclose(out, _fake_detector(x)["cls"], rtol=1e-5)
        two = rng.normal(size=(2, 1, 4, 4)).astype(np.float32)
        out = model.infer({"input": two})["cls"]  # batch 2 on a batch-1 model: two runs
        np.testing.assert_allclose(out, _fake_detector(two)["cls"], rtol=1e-5)
        with pytest.raises(InvalidArgument, match="no TensorRT profile"):
            model.infer({"input": np.zeros((1, 1, 32, 32), np.float32)})
    finally:
        model.unload()


def test_infer_is_thread_safe_on_fakes(fake_gpu: FakeGpu, tmp_path: Path) -> None:
    fake_gpu(FAKE_SPEC, _fake_model)
    model = trt_backend.TensorRTBackend(streams=2).load(
        FAKE_SPEC, _onnx_file(tmp_path), BackendOptions()
    )
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(20):
                x = rng.normal(size=(int(rng.integers(1, 9)), 3, 4, 4)).astype(np.float32)
                out = model.infer({"input": x})["score"]
                np.testing.assert_allclose(out, _fake_model(x)["score"], rtol=1e-5)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    model.unload()
    assert not errors, errors[0]
    assert all(slot.context is None for slot in model._slots) or not model._slots


def test_a_cuda_failure_during_inference_is_unavailable_without_cuda_detail(
    fake_gpu: FakeGpu,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The caller gets UNAVAILABLE (retry, maybe elsewhere) and a message free of CUDA internals;
    the server's log names the CUDA function and error."""
    _, cudart = fake_gpu(FAKE_SPEC, _fake_model)
    model = trt_backend.TensorRTBackend(streams=1).load(
        FAKE_SPEC, _onnx_file(tmp_path), BackendOptions()
    )
    x = np.arange(2 * 48, dtype=np.float32).reshape(2, 3, 4, 4)
    failing = [True]

    def synchronize(stream: int) -> tuple[int]:
        return (_CudaErrorT.cudaErrorLaunchOutOfResources if failing else 0,)

    def logged() -> str:
        return "\n".join(r.getMessage() for r in caplog.records if r.name == trt_backend.log.name)

    try:
        monkeypatch.setattr(cudart, "cudaStreamSynchronize", synchronize)
        with (
            caplog.at_level(logging.ERROR, logger=trt_backend.log.name),
            pytest.raises(trt_backend.GpuFailure) as info,
        ):
            model.infer({"input": x})
        error = info.value
        assert isinstance(error, Unavailable)
        assert grpc.StatusCode[error.status] == grpc.StatusCode.UNAVAILABLE
        assert error.reason == "GPU_FAILURE"
        assert error.message == "the GPU failed while running fake-embed; retry the call"
        for internal in ("cuda", "701", "resources", "synchronize"):
            assert internal not in error.message.lower()
        assert "cudaStreamSynchronize failed: cudaErrorLaunchOutOfResources (701)" in logged()
        assert model.failure is None  # not a sticky error: the context is still usable

        # The slot went back to the pool: once the GPU answers again, so does the model.
        failing.clear()
        assert model._pool.available == 1
        np.testing.assert_allclose(model.infer({"input": x})["score"], _fake_model(x)["score"])

        # TensorRT's own launch failing is a GPU failure too.
        caplog.clear()
        monkeypatch.setattr(model._slots[0].context, "execute_async_v3", lambda stream: False)
        with (
            caplog.at_level(logging.ERROR, logger=trt_backend.log.name),
            pytest.raises(trt_backend.GpuFailure, match=r"^the GPU failed while running"),
        ):
            model.infer({"input": x})
        assert "execute_async_v3 failed" in logged()
    finally:
        model.unload()
    assert not cudart.blocks and not cudart.streams


def test_a_sticky_cuda_error_fails_the_model_for_good(
    fake_gpu: FakeGpu,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After cudaErrorIllegalAddress the process's CUDA context is unusable: the model says so
    (``failure``, for the server's health) and later calls fail at once, without the GPU."""
    _, cudart = fake_gpu(FAKE_SPEC, _fake_model)
    model = trt_backend.TensorRTBackend(streams=1).load(
        FAKE_SPEC, _onnx_file(tmp_path), BackendOptions()
    )
    x = np.ones((2, 3, 4, 4), np.float32)
    try:
        monkeypatch.setattr(
            cudart, "cudaStreamSynchronize", lambda s: (_CudaErrorT.cudaErrorIllegalAddress,)
        )
        with (
            caplog.at_level(logging.ERROR, logger=trt_backend.log.name),
            pytest.raises(trt_backend.GpuFailure),
        ):
            model.infer({"input": x})
        assert model.failure is not None
        assert "cudaErrorIllegalAddress (700): an illegal memory access" in model.failure
        assert any(r.levelno == logging.CRITICAL for r in caplog.records)
        monkeypatch.undo()  # even with the GPU "answering" again, the model stays failed
        runs = len(model._slots[0].context.runs)
        with pytest.raises(trt_backend.GpuFailure, match="must restart") as info:
            model.infer({"input": x})
        assert grpc.StatusCode[info.value.status] == grpc.StatusCode.UNAVAILABLE
        assert len(model._slots[0].context.runs) == runs
    finally:
        model.unload()


def test_profile_selection_raising_is_a_gpu_failure_and_the_stream_is_synchronised(
    fake_gpu: FakeGpu, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """TensorRT's Python bindings raise RuntimeError from set_optimization_profile_async (and
    execute_async_v3) on some failures: a vigil error, not an escaped RuntimeError; the stream
    is synchronised before the slot is lent again, and the profile is selected anew next time."""
    _, cudart = fake_gpu(FAKE_SPEC, _fake_model)
    model = trt_backend.TensorRTBackend(streams=1).load(
        FAKE_SPEC, _onnx_file(tmp_path), BackendOptions()
    )
    (slot,) = model._slots
    context = slot.context
    small, large = np.ones((2, 3, 4, 4), np.float32), np.ones((6, 3, 4, 4), np.float32)
    try:
        model.infer({"input": small})  # profile 0
        original = context.set_optimization_profile_async

        def refuse(index: int, stream: int) -> bool:
            raise RuntimeError("profile switch failed")

        monkeypatch.setattr(context, "set_optimization_profile_async", refuse)
        cudart.synchronized.clear()
        with pytest.raises(trt_backend.GpuFailure, match=r"^the GPU failed while running"):
            model.infer({"input": large})  # needs profile 1
        assert cudart.synchronized == [slot.stream]  # the ``finally``
        assert slot.active_profile is None and model._pool.available == 1
        monkeypatch.setattr(context, "set_optimization_profile_async", original)
        out = model.infer({"input": large})["score"]
        np.testing.assert_allclose(out, _fake_model(large)["score"])
        assert slot.active_profile == 1

        def launch_raises(stream: int) -> bool:
            raise RuntimeError("enqueue failed")

        monkeypatch.setattr(context, "execute_async_v3", launch_raises)
        cudart.synchronized.clear()
        with pytest.raises(trt_backend.GpuFailure):
            model.infer({"input": large})
        assert cudart.synchronized == [slot.stream]
    finally:
        model.unload()


def test_no_free_context_in_time_is_resource_exhausted(fake_gpu: FakeGpu, tmp_path: Path) -> None:
    """Every context busy for the whole wait: RESOURCE_EXHAUSTED (the server is at capacity),
    not an escaped TimeoutError (INTERNAL)."""
    fake_gpu(FAKE_SPEC, _fake_model)
    model = trt_backend.TensorRTBackend(streams=1, acquire_timeout_s=0.05).load(
        FAKE_SPEC, _onnx_file(tmp_path), BackendOptions()
    )
    try:
        with model._pool.acquire(), pytest.raises(trt_backend.GpuBusy) as info:
            model.infer({"input": np.ones((1, 3, 4, 4), np.float32)})
        assert grpc.StatusCode[info.value.status] == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert info.value.reason == "GPU_BUSY"
        assert info.value.message == (
            "all 1 execution contexts of fake-embed stayed busy for 0.05 s; "
            "the server is at capacity, retry later"
        )
        assert model.infer({"input": np.ones((1, 3, 4, 4), np.float32)})["score"].shape == (1, 2)
    finally:
        model.unload()


def test_options_size_profiles_streams_and_the_cache_key(fake_gpu: FakeGpu, tmp_path: Path) -> None:
    """max_batch_size and streams from BackendOptions; another batch size is another engine."""
    fake_trt, _ = fake_gpu(FAKE_SPEC, _fake_model)
    cache = tmp_path / "engines"
    backend = trt_backend.TensorRTBackend()
    model = backend.load(
        FAKE_SPEC, _onnx_file(tmp_path), BackendOptions(cache_dir=cache, max_batch_size=16)
    )
    try:
        assert len(model._slots) == 2  # options.streams 0: the backend's 2 in flight
        assert [p.shapes["input"] for p in fake_trt.builds[0]["profiles"]] == [
            ((1, 3, 4, 4), (1, 3, 4, 4), (4, 3, 4, 4)),
            ((5, 3, 4, 4), (16, 3, 4, 4), (16, 3, 4, 4)),
        ]
        x = np.ones((16, 3, 4, 4), np.float32)
        model.infer({"input": x})
        assert (1, (16, 3, 4, 4)) in model._slots[0].context.runs + model._slots[1].context.runs
    finally:
        model.unload()
    three = backend.load(
        FAKE_SPEC, _onnx_file(tmp_path), BackendOptions(cache_dir=cache, streams=3)
    )
    three.unload()
    assert len(three.profiles) == 2 and three.profiles[1].max_batch == 8  # the catalog's
    assert fake_trt.deserialized == 2 + 3
    assert len(list(cache.glob("*.engine"))) == 2  # two batch sizes, two engines


def test_detector_profile_follows_detect_max_side_on_fakes(
    fake_gpu: FakeGpu, tmp_path: Path
) -> None:
    fake_trt, _ = fake_gpu(FAKE_DETECTOR, _fake_detector)
    model = trt_backend.TensorRTBackend().load(
        FAKE_DETECTOR, _onnx_file(tmp_path), BackendOptions(detect_max_side=50)
    )
    try:
        assert fake_trt.builds[0]["profiles"][0].shapes["input"] == (
            (1, 1, 32, 32),
            (1, 1, 64, 64),
            (1, 1, 64, 64),
        )
        x = np.random.default_rng(7).normal(size=(1, 1, 64, 32)).astype(np.float32)
        np.testing.assert_allclose(
            model.infer({"input": x})["cls"], _fake_detector(x)["cls"], rtol=1e-5
        )
        with pytest.raises(InvalidArgument, match="no TensorRT profile"):
            model.infer({"input": np.zeros((1, 1, 96, 64), np.float32)})
    finally:
        model.unload()


def test_fp16_build_settings_and_key_on_trt10_fakes(
    fake_gpu: FakeGpu, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """fp16 on TensorRT 10: strongly typed network, TF32 left alone (no fp32 layers to keep
    exact), and the converter's version in the cache key."""
    fake_trt, _ = fake_gpu(FAKE_SPEC, _fake_model, version="10.13.0.35")
    converted: list[bytes] = []

    def convert(data: bytes) -> bytes:
        converted.append(data)
        return b"onnx fp16 " + data

    monkeypatch.setattr(trt_backend, "convert_to_fp16", convert)
    cache = tmp_path / "engines"
    trt_backend.TensorRTBackend(optimization_level=5).load(
        FAKE_SPEC, _onnx_file(tmp_path), BackendOptions(cache_dir=cache, precision="fp16")
    ).unload()
    (built,) = fake_trt.builds
    assert converted and built["flags"] == 1 << 5 and built["cleared"] == set()
    assert built["level"] == 5
    key = plan.EngineCacheKey(
        model_sha256=FAKE_SPEC.sha256,
        trt_version="10.13.0.35",
        gpu="Fake GPU sm_90",
        profiles=plan.plan_profiles(FAKE_SPEC),
        precision="fp16",
        workspace_bytes=1 << 30,
        builder_flags=("STRONGLY_TYPED",),
        optimization_level=5,
        fp16_converter=trt_backend.fp16_converter_version(),
    )
    assert key.fp16_converter.startswith("onnxruntime ") and "unknown" not in key.fp16_converter
    assert (cache / plan.engine_file_name("fake-embed", key)).is_file()
    with pytest.raises(ValueError):
        trt_backend.TensorRTBackend(optimization_level=6)


def test_a_cuda_failure_while_loading_stays_a_model_error_with_the_detail(
    fake_gpu: FakeGpu, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """At start-up the operator reads the CUDA detail; what was allocated is freed."""
    _, cudart = fake_gpu(FAKE_SPEC, _fake_model)

    def malloc(size: int) -> tuple[int, None]:
        return _CudaErrorT.cudaErrorMemoryAllocation, None

    monkeypatch.setattr(cudart, "cudaMalloc", malloc)
    with pytest.raises(
        ModelError,
        match=r"cannot load fake-embed.* cudaMalloc\(\d+\) failed: cudaErrorMemoryAllocation \(2\)",
    ):
        trt_backend.TensorRTBackend().load(FAKE_SPEC, _onnx_file(tmp_path), BackendOptions())
    assert cudart.freed and not cudart.blocks and not cudart.streams


def test_write_atomically(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "x.engine"
    trt_backend._write_atomically(target, b"one")
    trt_backend._write_atomically(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["x.engine"]


@pytest.mark.skipif(not DLIB_PATH.is_file(), reason=f"model mirror not found at {MODEL_DIR}")
def test_fp16_conversion_keeps_float32_io_and_accuracy() -> None:
    onnx = pytest.importorskip("onnx", reason="onnx (in the gpu extra) is not installed")
    ort = pytest.importorskip("onnxruntime")
    converted = trt_backend.convert_to_fp16(DLIB_PATH.read_bytes())
    model = onnx.load_from_string(converted)
    float32 = onnx.TensorProto.FLOAT
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [float32]
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [float32]
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    x = np.random.default_rng(3).uniform(0, 255, (2, 3, 150, 150)).astype(np.float32)
    half = ort.InferenceSession(converted, providers=["CPUExecutionProvider"])
    full = ort.InferenceSession(str(DLIB_PATH), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(
        half.run(None, {"input": x})[0], full.run(None, {"input": x})[0], atol=5e-3
    )


# =========================================================================== the real GPU


def _gpu_skip_reason() -> str | None:
    try:
        importlib.import_module("tensorrt")
    except (ImportError, OSError) as exc:
        return f"tensorrt is not installed or cannot load ({exc})"
    try:
        runtime = importlib.import_module("cuda.bindings.runtime")
    except ImportError:
        try:
            runtime = importlib.import_module("cuda.cudart")
        except ImportError:
            return "cuda-python is not installed"
    err, count = runtime.cudaGetDeviceCount()
    if int(err) != 0 or not count:
        return "no CUDA GPU is visible"
    if not DLIB_PATH.is_file():
        return f"model mirror not found at {MODEL_DIR}"
    return None


_GPU_REASON = _gpu_skip_reason()
needs_gpu = pytest.mark.skipif(_GPU_REASON is not None, reason=_GPU_REASON or "")


def _reference_embeddings(x: np.ndarray) -> np.ndarray:
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(DLIB_PATH), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"input": x})[0])


@needs_gpu
@pytest.mark.parametrize(("precision", "max_distance"), [("fp32", 0.01), ("fp16", 0.05)])
def test_dlib_resnet_on_gpu_matches_onnxruntime(
    tmp_path: Path, precision: str, max_distance: float
) -> None:
    if precision == "fp16":
        pytest.importorskip("onnx", reason="fp16 needs the onnx package")
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 255, (37, 3, 150, 150)).astype(np.float32)  # 37 = 32 + 5: two chunks
    reference = _reference_embeddings(x)
    options = BackendOptions(cache_dir=tmp_path, precision=precision)
    backend = trt_backend.TensorRTBackend(streams=2)
    model = backend.load(DLIB_RESNET, DLIB_PATH, options)
    try:
        for batch in (1, 3, 37):
            out = model.infer({"input": x[:batch]})["embedding"]
            assert out.shape == (batch, 128) and out.dtype == np.float32
            distances = np.linalg.norm(out - reference[:batch], axis=1)
            assert distances.max() < max_distance, distances.max()
    finally:
        model.unload()
    model.unload()
    (engine_file,) = tmp_path.glob("*.engine")
    mtime = engine_file.stat().st_mtime_ns
    cached = backend.load(DLIB_RESNET, DLIB_PATH, options)  # from the cache this time
    try:
        assert engine_file.stat().st_mtime_ns == mtime
        out = cached.infer({"input": x[:2]})["embedding"]
        assert np.linalg.norm(out - reference[:2], axis=1).max() < max_distance
    finally:
        cached.unload()


@needs_gpu
def test_dlib_resnet_on_gpu_concurrent_threads(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    x = rng.uniform(0, 255, (8, 3, 150, 150)).astype(np.float32)
    reference = _reference_embeddings(x)
    model = trt_backend.TensorRTBackend(streams=2).load(
        DLIB_RESNET, DLIB_PATH, BackendOptions(cache_dir=tmp_path)
    )
    errors: list[BaseException] = []

    def worker(start: int) -> None:
        try:
            for i in range(10):
                lo = (start + i) % 8
                out = model.infer({"input": x[lo : lo + 1]})["embedding"]
                assert np.linalg.norm(out[0] - reference[lo]) < 0.01
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    model.unload()
    assert not errors, errors[0]


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return np.asarray(shifted / shifted.sum(axis=1, keepdims=True))


@needs_gpu
@pytest.mark.parametrize(("precision", "max_shift"), [("fp32", 1e-3), ("fp16", 0.02)])
@pytest.mark.parametrize("spec", [MINIFASNET_V2, MINIFASNET_V1SE], ids=lambda s: s.name)
def test_minifasnet_on_gpu_matches_onnxruntime(
    tmp_path: Path, spec: ModelSpec, precision: str, max_shift: float
) -> None:
    """Liveness probabilities from crops of the sample photos: within ``max_shift`` of ONNX
    Runtime (the accuracy gate's 0.02 for fp16), through both profiles and a split batch."""
    if precision == "fp16":
        pytest.importorskip("onnx", reason="fp16 needs the onnx package")
    ort = pytest.importorskip("onnxruntime")
    photos = gpu_check._photos(MODEL_DIR.parent / "data" / "faces")
    x = gpu_check._model_inputs(spec, photos, 37)["input"]  # 37 = 32 + 5
    path = MODEL_DIR / spec.file
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    reference = _softmax(np.asarray(session.run(None, {"input": x})[0]))
    options = BackendOptions(cache_dir=tmp_path, precision=precision, max_batch_size=32)
    model = trt_backend.TensorRTBackend(streams=2).load(spec, path, options)
    try:
        for batch in (1, 3, 37):
            logits = model.infer({"input": x[:batch]})["logits"]
            assert logits.shape == (batch, 3)
            shift = np.abs(_softmax(logits) - reference[:batch]).max()
            assert shift <= max_shift, shift
    finally:
        model.unload()


@needs_gpu
@pytest.mark.parametrize(("precision", "tolerance"), [("fp32", 1e-3), ("fp16", 3e-2)])
def test_yunet_dynamic_size_on_gpu_matches_onnxruntime(
    tmp_path: Path, precision: str, tolerance: float
) -> None:
    """YuNet built for the configured detection size (dynamic H/W): every output within
    ``tolerance`` (relative) of ONNX Runtime on photos of several shapes, and the detector
    finds the same faces, boxes within 1 px, on the TensorRT engine."""
    if precision == "fp16":
        pytest.importorskip("onnx", reason="fp16 needs the onnx package")
    ort = pytest.importorskip("onnxruntime")
    from vigil.inference.backends.onnxruntime import OnnxRuntimeBackend
    from vigil.inference.detector import YuNetDetector, prepare

    path = MODEL_DIR / YUNET.file
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    photos = gpu_check._photos(MODEL_DIR.parent / "data" / "faces")
    options = BackendOptions(cache_dir=tmp_path, precision=precision, detect_max_side=800)
    model = trt_backend.TensorRTBackend().load(YUNET, path, options)
    cpu = OnnxRuntimeBackend("onnxruntime", ("CPUExecutionProvider",)).load(
        YUNET, path, BackendOptions()
    )
    try:
        shapes = set()
        for photo in photos:
            for side in (320, 640, 800):
                tensor, _ = prepare(photo, side)
                shapes.add(tensor.shape)
                reference = dict(zip(names, session.run(None, {"input": tensor}), strict=True))
                outputs = model.infer({"input": tensor})
                for name in names:
                    check = gpu_check.compare(
                        name, reference[name], outputs[name], precision, embedding=False
                    )
                    assert check.value <= tolerance, (name, tensor.shape, check)
        assert len(shapes) >= 3  # several H/W through one engine
        on_gpu, on_cpu = YuNetDetector(model, max_side=800), YuNetDetector(cpu, max_side=800)
        for photo in photos:
            gpu_faces, cpu_faces = on_gpu.detect(photo), on_cpu.detect(photo)
            assert len(gpu_faces) == len(cpu_faces) >= 1
            for a, b in zip(gpu_faces, cpu_faces, strict=True):
                assert np.abs(np.asarray(a.box) - np.asarray(b.box)).max() <= 1.0
    finally:
        model.unload()
        cpu.unload()


# =========================================================================== GPU packaging, CPU


def _load_script(relative: str) -> Any:
    """A script of the repository (not a package) as a module."""
    path = Path(__file__).resolve().parents[1] / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


gpu_requirements = _load_script("docker/gpu_requirements.py")
gpu_check = _load_script("scripts/gpu_check.py")
PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())


def test_gpu_extras_are_split_by_cuda_major() -> None:
    """No extra that silently resolves to another CUDA major than the driver's."""
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert "gpu" not in extras
    assert extras["gpu-cu12"] == [
        "tensorrt-cu12>=10.0,<12",
        "cuda-python>=12.6,<13",
        "onnxruntime-gpu>=1.20,<1.27",  # PyPI's onnxruntime-gpu is CUDA 13 from 1.27 on
        "onnx>=1.16",
    ]
    assert extras["gpu-cu13"] == [
        "tensorrt-cu13>=10.13.2,<12",  # the first TensorRT with CUDA 13
        "cuda-python>=13,<14",
        "onnxruntime-gpu>=1.27",
        "onnx>=1.16",
    ]


def test_image_constraints_pin_only_the_images_tensorrt() -> None:
    freeze = [
        "numpy==1.26.4",
        "tensorrt==10.7.0",
        "tensorrt_lean==10.7.0",
        "Tensorrt_Dispatch==10.7.0",
        "cuda-python==12.6.0",
        "# comment",
        "",
    ]
    assert gpu_requirements.image_constraints(freeze) == [
        "tensorrt-dispatch==10.7.0",
        "tensorrt-lean==10.7.0",
        "tensorrt==10.7.0",
    ]
    assert gpu_requirements.image_constraints(["tensorrt-cu12==11.4.0.106"]) == [
        "tensorrt-cu12==11.4.0.106"
    ]
    with pytest.raises(ValueError, match="NGC TensorRT image"):
        gpu_requirements.image_constraints(["numpy==2.1.0", "tensorrt_lean==10.7.0"])


@pytest.mark.parametrize(
    ("major", "ort", "cuda_python"),
    [
        (12, "onnxruntime-gpu>=1.20,<1.27", "cuda-python>=12.6,<13"),
        (13, "onnxruntime-gpu>=1.27", "cuda-python>=13,<14"),
    ],
)
def test_the_images_requirements_have_no_cpu_onnxruntime_and_no_tensorrt(
    major: int, ort: str, cuda_python: str
) -> None:
    requirements = gpu_requirements.server_requirements(PYPROJECT, major)
    names = [gpu_requirements.requirement_name(r) for r in requirements]
    assert "onnxruntime" not in names
    assert not [n for n in names if n.startswith("tensorrt")]
    assert ort in requirements and cuda_python in requirements
    # every other base dependency is kept, in order (the CPU-only openvino too: it is small)
    base = PYPROJECT["project"]["dependencies"]
    assert requirements[: len(base) - 1] == [r for r in base if not r.startswith("onnxruntime")]
    assert "vigil-client==0.1.0" in requirements


def test_cuda_major_from_the_image() -> None:
    assert gpu_requirements.cuda_major("auto", {"CUDA_VERSION": "12.6.3"}) == 12
    assert gpu_requirements.cuda_major("auto", {"CUDA_VERSION": "13.0.1"}) == 13
    assert gpu_requirements.cuda_major("13", {}) == 13
    with pytest.raises(ValueError, match="CUDA_VERSION is not set"):
        gpu_requirements.cuda_major("auto", {})
    with pytest.raises(ValueError, match="not 11"):
        gpu_requirements.cuda_major("auto", {"CUDA_VERSION": "11.8.0"})


def test_the_image_check_fails_on_this_cpu_environment() -> None:
    """What the build-time check reports where the install is wrong (here: a CPU venv)."""
    found = gpu_requirements.problems(["tensorrt==10.7.0", "numpy==0.0.1"])
    assert "tensorrt is not installed, the image has 10.7.0" in found
    assert any(p.startswith("numpy is 2.") and p.endswith("the image has 0.0.1") for p in found)
    assert "the CPU onnxruntime is installed beside onnxruntime-gpu" in found
    assert "onnxruntime-gpu is not installed" in found
    assert any(p.startswith("cannot import tensorrt") for p in found)
    assert "onnxruntime has no CUDAExecutionProvider (the CPU build is loaded)" in found
    assert gpu_requirements.main(["requirements", "--cuda", "11"]) == 2


def test_gpu_check_comparisons() -> None:
    ref = np.array([[1.0, -2.0], [0.5, 4.0]], np.float32)
    same = gpu_check.compare("y", ref, ref.copy(), "fp32", embedding=False)
    assert same.ok and same.value == 0.0 and same.limit == 1e-3
    off = gpu_check.compare("y", ref, ref + np.float32(0.01), "fp32", embedding=False)
    assert not off.ok and off.value == pytest.approx(0.01 / 4.0, rel=1e-3)
    assert gpu_check.compare("y", ref, ref + np.float32(0.01), "fp16", embedding=False).ok
    emb = gpu_check.compare(
        "e", ref, ref + np.array([[0.03, 0.04], [0, 0]], np.float32), "fp16", True
    )
    assert emb.value == pytest.approx(0.05, rel=1e-4) and emb.limit == 0.05
    assert not gpu_check.compare("e", ref, ref[:1], "fp32", embedding=True).ok
    nan = gpu_check.compare("y", ref, np.full_like(ref, np.nan), "fp16", embedding=False)
    assert not nan.ok
    assert gpu_check.items_per_second(64, 0.5) == 128.0


def test_gpu_check_report_table() -> None:
    good = gpu_check.ModelReport(
        "dlib-resnet",
        "fp16",
        42.0,
        [gpu_check.Comparison("embedding", "L2", 0.004, 0.05)],
        {1: 812.4, 32: 9120.0, 128: 15000.2},
    )
    bad = gpu_check.ModelReport(
        "yunet", "fp32", 3.0, [gpu_check.Comparison("cls_8", "rel", 0.2, 1e-3)], {1: 950.0}
    )
    failed = gpu_check.ModelReport("minifasnet-v2", "fp16", 0.0, [], {}, error="ModelError('x')")
    lines = gpu_check.format_report([good, bad, failed], (1, 32, 128)).splitlines()
    assert lines[0].split() == [
        "model",
        "precision",
        "check",
        "worst",
        "(limit)",
        "load",
        "s",
        "b1/s",
        "b32/s",
        "b128/s",
    ]
    assert lines[1].split() == [
        "dlib-resnet",
        "fp16",
        "ok",
        "4.00e-03",
        "(5e-02)",
        "42.0",
        "812",
        "9120",
        "15000",
    ]
    assert lines[2].split()[:3] == ["yunet", "fp32", "FAIL"] and lines[2].split()[-3:] == [
        "950",
        "-",
        "-",
    ]
    assert lines[3].split()[:4] == ["minifasnet-v2", "fp16", "ERROR", "ModelError('x')"]
    assert good.ok and not bad.ok and not failed.ok


@pytest.mark.skipif(not DLIB_PATH.is_file(), reason=f"model mirror not found at {MODEL_DIR}")
def test_gpu_check_inputs_from_the_sample_photos() -> None:
    """The inputs it feeds every model of the catalog: their shapes, from real photos, and the
    detector's within the profile built for a 640 px detection size."""
    from vigil.inference.catalog import DEFAULT_MODELS

    photos = gpu_check._photos(MODEL_DIR.parent / "data" / "faces")
    assert len(photos) >= 2 and all(p.ndim == 3 for p in photos)
    (profile,) = plan.plan_profiles(YUNET, spatial=plan.detector_spatial(640))
    for spec in DEFAULT_MODELS:
        batch = 1 if spec.fixed_batch else 5
        (array,) = gpu_check._model_inputs(spec, photos, batch).values()
        assert array.dtype == np.float32 and array.shape[0] == batch
        fixed = [d for d in spec.inputs[0].shape[1:] if d is not None]
        if len(fixed) == len(spec.inputs[0].shape) - 1:
            assert array.shape[1:] == tuple(fixed)
        else:
            assert profile.accepts({"input": array.shape})
        assert array.min() >= 0 and array.max() <= (1.0 if "0..1" in spec.preprocessing else 255)
        assert array.std() > 0  # pictures, not blanks


def test_gpu_check_says_what_is_missing_without_tensorrt(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert gpu_check.main(["--models", str(MODEL_DIR)]) == 2
    assert "TensorRT is missing" in capsys.readouterr().out


# =========================================================================== the server's options


@pytest.mark.parametrize(
    ("backend", "instances", "in_flight"),
    [("tensorrt", 0, 2), ("onnxruntime-cuda", 0, 2), ("onnxruntime", 0, 1), ("tensorrt", 3, 3)],
)
def test_the_server_sizes_gpu_contexts_from_the_batches_in_flight(
    backend: str, instances: int, in_flight: int
) -> None:
    """2 batches of a per-face model in flight on a GPU (1 on CPU) unless configured, one
    context each; the engines are built for the configured batch size and detection size."""
    from vigil.server.app import engine_config
    from vigil.server.settings import Settings

    settings = Settings(
        backend=backend,
        model_instances=instances,
        max_batch_size=48,
        detect_max_side=1000,
        detector_instances=9,
    )
    config = engine_config(settings)
    per_face = [c for name, c in config.batching.items() if name != YUNET.name]
    assert per_face and all(c.instances == in_flight for c in per_face)
    options = config.backend_options
    assert (options.streams, options.detector_streams) == (in_flight, 4)
    assert (options.max_batch_size, options.detect_max_side) == (48, 1000)
    backend_ = trt_backend.TensorRTBackend()
    assert backend_.streams_for(DLIB_RESNET, options) == in_flight
    assert backend_.streams_for(YUNET, options) == 4
    (profile,) = backend_.profiles_for(YUNET, options)
    assert profile.range("input").max == (1, 3, 1024, 1024)
    assert backend_.profiles_for(DLIB_RESNET, options)[-1].max_batch == 48


def test_detector_streams_on_fakes(fake_gpu: FakeGpu, tmp_path: Path) -> None:
    fake_gpu(FAKE_DETECTOR, _fake_detector)
    options = BackendOptions(streams=2, detector_streams=3, detect_max_side=32)
    model = trt_backend.TensorRTBackend().load(FAKE_DETECTOR, _onnx_file(tmp_path), options)
    try:
        assert len(model._slots) == 3
    finally:
        model.unload()


# =========================================================== health after a GPU failure


async def test_health_goes_not_serving_after_a_sticky_gpu_error(
    fake_gpu: FakeGpu, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A TensorRT model failed by a sticky CUDA error fails the engine (``Engine.failure``),
    and the server's health watch turns the server and every service NOT_SERVING."""
    from grpc_health.v1 import health, health_pb2

    from vigil.inference.engine import Engine
    from vigil.server.health_watch import HealthWatch

    _, cudart = fake_gpu(FAKE_SPEC, _fake_model)
    model = trt_backend.TensorRTBackend(streams=1).load(
        FAKE_SPEC, _onnx_file(tmp_path), BackendOptions()
    )
    engine = Engine.__new__(Engine)  # only its models matter here
    engine.models = {"fake-embed": model}

    servicer = health.aio.HealthServicer()
    services = ("vigil.v1.Instant", "vigil.v1.Collections")
    for name in ("", *services):
        await servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    watch = HealthWatch(engine, servicer, services, interval_s=0.01)
    watch.start()

    async def status(name: str) -> int:
        request = health_pb2.HealthCheckRequest(service=name)
        response = await servicer.Check(request, None)
        return int(response.status)

    try:
        model.infer({"input": np.ones((1, 3, 4, 4), np.float32)})
        await asyncio.sleep(0.05)
        assert engine.failure is None
        assert await status("") == health_pb2.HealthCheckResponse.SERVING
        monkeypatch.setattr(
            cudart, "cudaStreamSynchronize", lambda s: (_CudaErrorT.cudaErrorIllegalAddress,)
        )
        with pytest.raises(trt_backend.GpuFailure):
            model.infer({"input": np.ones((1, 3, 4, 4), np.float32)})
        failure = engine.failure
        assert failure is not None and failure.startswith("fake-embed: cudaStreamSynchronize")
        for _ in range(100):
            if await status("") == health_pb2.HealthCheckResponse.NOT_SERVING:
                break
            await asyncio.sleep(0.01)
        for name in ("", *services):
            assert await status(name) == health_pb2.HealthCheckResponse.NOT_SERVING, name
    finally:
        await watch.stop()
        model.unload()
