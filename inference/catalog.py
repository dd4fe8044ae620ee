"""The model catalog: every model vigil runs, pinned by file name and sha256.

Model files are never committed. ``install`` copies them from a mirror (a directory or a base URL),
verifying every hash; ``verify_installed`` is what the server runs at start-up, so a missing or
corrupt file stops it before it serves anything.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vigil.inference.errors import ModelError


@dataclass(frozen=True)
class TensorSpec:
    name: str
    #: Shape with ``None`` for a dynamic axis. The first axis is the batch.
    shape: tuple[int | None, ...]
    dtype: str = "float32"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: str
    file: str
    sha256: str
    task: str
    licence: str
    provenance: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    preprocessing: str
    thresholds: dict[str, float] = field(default_factory=dict)
    #: Largest batch a backend prepares for (TensorRT's optimisation profiles); the batcher's
    #: own limits are settings (``VIGIL_MAX_BATCH_SIZE`` …).
    max_batch_size: int = 32

    @property
    def fixed_batch(self) -> bool:
        """True when the ONNX graph's batch axis is a fixed 1 (YuNet)."""
        return self.inputs[0].shape[0] == 1

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


YUNET = ModelSpec(
    name="yunet",
    version="2026may",
    file="face_detection_yunet_2026may.onnx",
    sha256="ebafce4e3c118d6554634be5c27ab333b4c047a9a8c3faf1d7cf93101c22f0f0",
    task="face detection + 5 landmarks",
    licence="MIT (YuNet, Shiqi Yu); trained on WIDER FACE",
    provenance="opencv_zoo models/face_detection_yunet, commit 47534e27",
    inputs=(TensorSpec("input", (1, 3, None, None)),),
    outputs=tuple(
        TensorSpec(f"{kind}_{stride}", (1, None, width))
        for kind, width in (("cls", 1), ("obj", 1), ("bbox", 4), ("kps", 10))
        for stride in (8, 16, 32)
    ),
    preprocessing="BGR float32 0..255, no mean/std, padded to a multiple of 32",
    thresholds={"score": 0.8, "nms_iou": 0.3},
    max_batch_size=1,
)

DLIB_RESNET = ModelSpec(
    name="dlib-resnet",
    version="v1",
    file="dlib_face_recognition_resnet_model_v1.onnx",
    sha256="bab427fa1d8d1a053b7e6d9035d560a4c954533a97c7506ffe2ae3e1045938a7",
    task="face embedding, 128-d, Euclidean",
    licence="public domain / CC0 (LICENSE.dlib-models.CC0.txt)",
    provenance="converted from dlib_face_recognition_resnet_model_v1.dat "
    "(PyPI face-recognition-models==0.3.0)",
    inputs=(TensorSpec("input", (None, 3, 150, 150)),),
    outputs=(TensorSpec("embedding", (None, 128)),),
    preprocessing="RGB 150x150 chip, float32 0..255 (mean and scale inside the graph); "
    "5-point similarity transform onto the dlib template",
    thresholds={"distance": 0.6},
)

MINIFASNET_V2 = ModelSpec(
    name="minifasnet-v2",
    version="2.7_80x80",
    file="2.7_80x80_MiniFASNetV2.onnx",
    sha256="dc8272b33b9684e4b41016a2fe0b07f7e4e71a6d5088155fa2258d48aa453d3c",
    task="passive liveness (anti-spoofing), 3 classes, class 1 = real",
    licence="Apache-2.0 (LICENSE.MiniFASNet.Apache-2.0.txt)",
    provenance="minivision-ai/Silent-Face-Anti-Spoofing 2.7_80x80_MiniFASNetV2.pth, opset 17",
    inputs=(TensorSpec("input", (None, 3, 80, 80)),),
    outputs=(TensorSpec("logits", (None, 3)),),
    preprocessing="BGR float32 0..255, detector box scaled 2.7x about its centre, "
    "clamped into the image, resized to 80x80",
    thresholds={"crop_scale": 2.7},
)

MINIFASNET_V1SE = ModelSpec(
    name="minifasnet-v1se",
    version="4_0_0_80x80",
    file="4_0_0_80x80_MiniFASNetV1SE.onnx",
    sha256="667c83bc36ecd1f6351b98abef3ea62197ceb9536a2501eb6dec42041b769c12",
    task="passive liveness (anti-spoofing), second ensemble member",
    licence="Apache-2.0 (LICENSE.MiniFASNet.Apache-2.0.txt)",
    provenance="minivision-ai/Silent-Face-Anti-Spoofing 4_0_0_80x80_MiniFASNetV1SE.pth",
    inputs=(TensorSpec("input", (None, 3, 80, 80)),),
    outputs=(TensorSpec("logits", (None, 3)),),
    preprocessing="BGR float32 0..255, detector box scaled 4.0x about its centre, "
    "clamped into the image, resized to 80x80",
    thresholds={"crop_scale": 4.0},
)

FACEMESH = ModelSpec(
    name="facemesh",
    version="mediapipe",
    file="facemesh_mediapipe.onnx",
    sha256="0cc8cf2b3c1787e60606d5e363121249f4689235c91787b53d3789b2deb814ed",
    task="468 face landmarks (x, y, z) + face-present score: the active-liveness model",
    licence="Apache-2.0 (Google MediaPipe FaceMesh)",
    provenance="TF.js graph model models/facemesh.json of npm @vladmandic/human@3.3.6, "
    "converted to ONNX opset 13",
    inputs=(TensorSpec("input_1", (None, 192, 192, 3)),),
    outputs=(
        TensorSpec("output_mesh", (None, 1404)),
        TensorSpec("output_faceflag", (None, 1)),
        TensorSpec("output_contours", (None, 266)),
    ),
    preprocessing="RGB float32 0..1, NHWC 192x192, a square crop of the detector box "
    "scaled 1.5x about its centre (zero padding outside the image)",
    thresholds={"crop_scale": 1.5},
)

#: The model that reads gestures (active liveness).
ACTIVE_LIVENESS_MODEL = FACEMESH

#: The models the server needs, in load order.
DEFAULT_MODELS: tuple[ModelSpec, ...] = (
    YUNET,
    DLIB_RESNET,
    MINIFASNET_V2,
    MINIFASNET_V1SE,
    FACEMESH,
)

#: Licence texts shipped beside the models in the mirror; installed with them.
LICENCE_FILES = ("LICENSE.MiniFASNet.Apache-2.0.txt", "LICENSE.dlib-models.CC0.txt")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_mirror() -> str | None:
    """``VIGIL_MODEL_MIRROR`` if set, else ``../shared/models`` beside the project if present."""
    configured = os.environ.get("VIGIL_MODEL_MIRROR")
    if configured:
        return configured
    project_root = Path(__file__).resolve().parent.parent
    for candidate in (
        project_root.parent / "shared" / "models",
        Path.cwd().parent / "shared" / "models",
    ):
        if candidate.is_dir():
            return str(candidate)
    return None


#: ``progress(file name, bytes so far, total bytes or None)``, called as a download goes.
Progress = Callable[[str, int, int | None], None]


def _fetch(mirror: str, name: str, destination: Path, progress: Progress | None = None) -> None:
    """Copy ``name`` from a mirror directory or base URL to ``destination`` (not verified yet)."""
    if mirror.startswith(("http://", "https://", "file://")):
        url = mirror.rstrip("/") + "/" + name
        try:
            with urllib.request.urlopen(url, timeout=60) as response, destination.open("wb") as out:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                done = 0
                while chunk := response.read(1024 * 1024):
                    out.write(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(name, done, total)
        except OSError as exc:
            raise ModelError(f"cannot download {url}: {exc}") from exc
        return
    source = Path(mirror).expanduser() / name
    if not source.is_file():
        raise ModelError(f"{name} is not in the mirror {mirror}")
    shutil.copyfile(source, destination)


def install(
    models_dir: Path,
    mirror: str | None = None,
    specs: tuple[ModelSpec, ...] = DEFAULT_MODELS,
    progress: Progress | None = None,
) -> list[Path]:
    """Install ``specs`` into ``models_dir`` from ``mirror``; files already there and valid stay.
    ``progress`` hears how each download from a URL goes.

    Each file is written to a temporary name, verified, then renamed into place, so a failed or
    interrupted install never leaves a file that looks installed.
    """
    mirror = mirror or default_mirror()
    models_dir.mkdir(parents=True, exist_ok=True)
    installed: list[Path] = []
    for spec in specs:
        target = models_dir / spec.file
        if target.is_file() and sha256_of(target) == spec.sha256:
            installed.append(target)
            continue
        if mirror is None:
            raise ModelError(
                f"{spec.file} is not installed and no mirror is configured "
                "(pass --mirror DIR|URL or set VIGIL_MODEL_MIRROR)"
            )
        fd, tmp_name = tempfile.mkstemp(dir=models_dir, prefix=f".{spec.file}.", suffix=".part")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            _fetch(mirror, spec.file, tmp, progress)
            actual = sha256_of(tmp)
            if actual != spec.sha256:
                raise ModelError(
                    f"{spec.file} from {mirror} has sha256 {actual}, the catalog pins {spec.sha256}"
                )
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        installed.append(target)
    if mirror is not None and not mirror.startswith(("http://", "https://", "file://")):
        for licence in LICENCE_FILES:
            source = Path(mirror).expanduser() / licence
            if source.is_file():
                shutil.copyfile(source, models_dir / licence)
    return installed


def verify_installed(
    models_dir: Path, specs: tuple[ModelSpec, ...] = DEFAULT_MODELS
) -> dict[str, Path]:
    """Check each file of ``specs`` is in ``models_dir`` with its pinned hash; raise ModelError.

    All problems are reported together so an operator fixes them in one go.
    """
    problems: list[str] = []
    paths: dict[str, Path] = {}
    for spec in specs:
        path = models_dir / spec.file
        if not path.is_file():
            problems.append(f"{spec.file} is missing")
            continue
        actual = sha256_of(path)
        if actual != spec.sha256:
            problems.append(f"{spec.file} is corrupt (sha256 {actual}, expected {spec.sha256})")
            continue
        paths[spec.name] = path
    if problems:
        raise ModelError(
            f"models in {models_dir} are not usable: "
            + "; ".join(problems)
            + ". Run `vigil models install` to fix them."
        )
    return paths
