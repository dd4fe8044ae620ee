"""What Dockerfile.gpu installs into an NGC TensorRT image, and the build-time check of it.

Three commands, each run inside the image during ``docker build``:

``constraints``
    pip constraints that pin the image's own TensorRT packages at the versions the image ships
    (read from ``pip list --format=freeze`` of the image's Python, i.e. ``pip freeze`` without
    ``@ file://`` references): NVIDIA matched them to the image's CUDA, cuDNN and driver stack,
    and nothing installed afterwards may replace them.
``requirements --cuda auto|12|13``
    the server's requirements for that CUDA major: its base dependencies without the CPU
    ``onnxruntime`` (``onnxruntime-gpu`` installs the same ``onnxruntime`` module, and two
    distributions owning one module break each other on upgrade or uninstall), plus the
    matching ``gpu-cu12``/``gpu-cu13`` extra without TensorRT, which the image brings.
    ``auto`` reads the image's ``CUDA_VERSION`` (set in every NGC CUDA image).
``check --constraints FILE``
    fails the build unless the installed TensorRT is exactly the image's, the CPU
    ``onnxruntime`` is absent and ``onnxruntime-gpu`` present with its CUDA provider, and
    TensorRT, cuda-python and onnx import.

Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path

#: Distributions of TensorRT's Python packages (bindings, libraries, lean/dispatch runtimes).
_TENSORRT = re.compile(r"^tensorrt([-_.].*)?$")
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
#: The CPU runtime that must not sit beside onnxruntime-gpu.
CPU_ONNXRUNTIME = "onnxruntime"
GPU_ONNXRUNTIME = "onnxruntime-gpu"


def normalize(name: str) -> str:
    """A distribution name in PEP 503 normal form (``Tensorrt_CU12`` → ``tensorrt-cu12``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    """The normalized distribution name a PEP 508 requirement line is about."""
    match = _NAME.match(requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return normalize(match.group(1))


def is_tensorrt(name: str) -> bool:
    return bool(_TENSORRT.match(normalize(name)))


def image_constraints(freeze_lines: Iterable[str]) -> list[str]:
    """``name==version`` lines of the TensorRT distributions in a ``pip list --format=freeze``.

    Raises ``ValueError`` when the image has none: this Dockerfile is for NGC TensorRT images.
    """
    pins = []
    for line in freeze_lines:
        line = line.strip()
        if not line or line.startswith("#") or "==" not in line:
            continue
        name, version = (part.strip() for part in line.split("==", 1))
        if is_tensorrt(name):
            pins.append(f"{normalize(name)}=={version}")
    if not any(pin.startswith("tensorrt==") or pin.startswith("tensorrt-cu") for pin in pins):
        raise ValueError(
            "the image's Python has no TensorRT package (pip list shows none): build from an NGC "
            "TensorRT image (nvcr.io/nvidia/tensorrt:<yy.mm>-py3)"
        )
    return sorted(pins)


def cuda_major(value: str, environ: dict[str, str] | os._Environ[str] = os.environ) -> int:
    """``"12"``/``"13"``, or ``"auto"``: the major of the image's ``CUDA_VERSION``."""
    if value == "auto":
        version = environ.get("CUDA_VERSION", "")
        if not version:
            raise ValueError("CUDA_VERSION is not set in this image; pass --cuda 12 or --cuda 13")
        value = version.split(".")[0]
    major = int(value)
    if major not in (12, 13):
        raise ValueError(f"vigil has GPU extras for CUDA 12 and 13, not {major}")
    return major


def server_requirements(pyproject: dict[str, object], major: int) -> list[str]:
    """The server's base dependencies less the CPU onnxruntime, plus the ``gpu-cu<major>``
    extra less TensorRT (the image's)."""
    project = pyproject["project"]
    assert isinstance(project, dict)
    base = [r for r in project["dependencies"] if requirement_name(r) != CPU_ONNXRUNTIME]
    extras = project["optional-dependencies"]
    extra = extras.get(f"gpu-cu{major}")
    if extra is None:
        raise ValueError(f"pyproject.toml has no gpu-cu{major} extra")
    gpu = [r for r in extra if not is_tensorrt(requirement_name(r))]
    if GPU_ONNXRUNTIME not in {requirement_name(r) for r in gpu}:
        raise ValueError(f"the gpu-cu{major} extra lacks {GPU_ONNXRUNTIME}")
    return [*base, *gpu]


def installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def problems(constraints: Sequence[str]) -> list[str]:
    """What is wrong with the installed environment (empty when it is as it must be)."""
    found = []
    for pin in constraints:
        name, version = pin.split("==", 1)
        have = installed_version(name)
        if have != version:
            found.append(f"{name} is {have or 'not installed'}, the image has {version}")
    if installed_version(CPU_ONNXRUNTIME) is not None:
        found.append(f"the CPU {CPU_ONNXRUNTIME} is installed beside {GPU_ONNXRUNTIME}")
    if installed_version(GPU_ONNXRUNTIME) is None:
        found.append(f"{GPU_ONNXRUNTIME} is not installed")
    for module in ("tensorrt", "cuda.bindings.runtime", "onnx", "onnxruntime"):
        try:
            importlib.import_module(module)
        except Exception as exc:  # an import of native code can fail in many ways
            found.append(f"cannot import {module}: {exc}")
    try:
        onnxruntime = importlib.import_module("onnxruntime")
        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            found.append("onnxruntime has no CUDAExecutionProvider (the CPU build is loaded)")
    except Exception:
        pass  # reported above
    return found


def _freeze(python: str) -> list[str]:
    output = subprocess.run(
        [python, "-m", "pip", "list", "--format=freeze"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return output.splitlines()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    constraints = commands.add_parser("constraints", help="pins of the image's TensorRT")
    constraints.add_argument("--python", default=sys.executable, help="the image's Python")
    requirements = commands.add_parser("requirements", help="what to pip install")
    requirements.add_argument("--cuda", default="auto", help="12, 13 or auto (CUDA_VERSION)")
    requirements.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    check = commands.add_parser("check", help="fail unless the install is as it must be")
    check.add_argument("--constraints", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "constraints":
            print("\n".join(image_constraints(_freeze(args.python))))
        elif args.command == "requirements":
            pyproject = tomllib.loads(args.pyproject.read_text())
            print("\n".join(server_requirements(pyproject, cuda_major(args.cuda))))
        else:
            pins = [line.strip() for line in args.constraints.read_text().splitlines()]
            found = problems([pin for pin in pins if pin])
            for problem in found:
                print(f"gpu image check: {problem}", file=sys.stderr)
            if found:
                return 1
            print("gpu image check: TensorRT " + ", ".join(pins) + "; onnxruntime-gpu only")
    except ValueError as exc:
        print(f"gpu_requirements: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
