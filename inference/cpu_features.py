"""What this CPU computes natively, for choosing an inference precision.

bf16 pays only where the CPU has bf16 instructions (AVX-512 BF16, AMX): elsewhere OpenVINO
would convert to f32 and back, slower than f32 throughout. Linux says so in ``/proc/cpuinfo``;
where that file is missing, OpenVINO's own ``OPTIMIZATION_CAPABILITIES`` is asked instead.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path

#: /proc/cpuinfo flags of native bf16 arithmetic (AVX-512 BF16; AMX tiles in bf16).
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
#: /proc/cpuinfo flags of native fp16 arithmetic (AVX-512 FP16; AMX tiles in fp16).
FP16_FLAGS = frozenset({"avx512_fp16", "amx_fp16"})
#: Flags a report names to say what the CPU is (the benchmark report prints those present).
REPORTED_FLAGS = ("avx2", "avx512f", "avx512_vnni", *sorted(BF16_FLAGS | FP16_FLAGS), "amx_tile")


@dataclass(frozen=True)
class CpuFeatures:
    model_name: str
    #: The CPU's flags, from /proc/cpuinfo (empty where it cannot be read).
    flags: frozenset[str]
    #: OpenVINO's ``OPTIMIZATION_CAPABILITIES`` of its CPU device (empty without OpenVINO).
    openvino_capabilities: tuple[str, ...]

    @property
    def native_bf16(self) -> bool:
        if self.flags:
            return bool(self.flags & BF16_FLAGS)
        return "BF16" in self.openvino_capabilities

    @property
    def native_fp16(self) -> bool:
        if self.flags:
            return bool(self.flags & FP16_FLAGS)
        return "FP16" in self.openvino_capabilities

    def summary(self) -> dict[str, object]:
        """What a benchmark report records about the CPU."""
        return {
            "model_name": self.model_name,
            "flags": [flag for flag in REPORTED_FLAGS if flag in self.flags],
            "openvino_capabilities": list(self.openvino_capabilities),
            "native_bf16": self.native_bf16,
            "native_fp16": self.native_fp16,
        }


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """(model name, flags) of the first processor in a /proc/cpuinfo text."""
    model_name = ""
    flags: frozenset[str] = frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model_name:
            model_name = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
    return model_name, flags


def _openvino_capabilities() -> tuple[str, ...]:
    try:
        import openvino as ov
    except ImportError:
        return ()
    try:
        return tuple(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except Exception:  # OpenVINO raises untyped errors; no answer is no capability
        return ()


@functools.cache
def detect(cpuinfo: Path = Path("/proc/cpuinfo")) -> CpuFeatures:
    """This machine's CPU (read once per process)."""
    try:
        model_name, flags = parse_cpuinfo(cpuinfo.read_text(errors="replace"))
    except OSError:
        model_name, flags = "", frozenset()
    return CpuFeatures(model_name or platform.processor(), flags, _openvino_capabilities())
