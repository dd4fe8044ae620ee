"""The workloads: which real images each one uses and the gRPC request it sends.

``template`` and ``liveness`` cycle over the photos in ``<data>/faces`` plus the live selfie
``<data>/spoof/image_T1.jpg``; ``verify`` cycles over fixed pairs of those photos (same person and
different people). The raw engine and the peer library read the very same bytes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import Message

from vigil.v1 import common_pb2, instant_pb2

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = ("template", "verify", "liveness")

#: (a, b) by file name; the three obama photos are the same person.
VERIFY_PAIRS = (
    ("obama.jpg", "obama2.jpg"),
    ("obama2.jpg", "obama3.jpg"),
    ("obama.jpg", "obama3.jpg"),
    ("obama.jpg", "biden.jpg"),
    ("biden.jpg", "astronaut.png"),
    ("astronaut.png", "image_T1.jpg"),
)

METHODS = {
    "template": "/vigil.v1.Instant/ExtractTemplate",
    "verify": "/vigil.v1.Instant/Verify",
    "liveness": "/vigil.v1.Instant/CheckLiveness",
}


def default_data_dir() -> Path:
    return Path(os.environ.get("VIGIL_SHARED_DIR", ROOT.parent / "shared")) / "data"


@dataclass(frozen=True)
class Images:
    """The benchmark's images as bytes, by file name."""

    files: dict[str, bytes]

    @classmethod
    def load(cls, data_dir: Path) -> Images:
        paths = sorted(
            p for p in (data_dir / "faces").iterdir() if p.suffix.lower() in {".jpg", ".png"}
        )
        paths.append(data_dir / "spoof" / "image_T1.jpg")
        missing = [str(p) for p in paths if not p.is_file()]
        if not paths or missing:
            raise SystemExit(f"benchmark images missing under {data_dir}: {missing or 'faces/'}")
        return cls({p.name: p.read_bytes() for p in paths})

    @property
    def singles(self) -> list[bytes]:
        return list(self.files.values())

    @property
    def pairs(self) -> list[tuple[bytes, bytes]]:
        return [(self.files[a], self.files[b]) for a, b in VERIFY_PAIRS]

    def items(self, workload: str) -> list[tuple[bytes, ...]]:
        """What one request of ``workload`` carries: one image, or a pair for ``verify``."""
        if workload == "verify":
            return list(self.pairs)
        return [(data,) for data in self.singles]


def request_bytes(workload: str, images: Images) -> list[bytes]:
    """The serialized gRPC requests of ``workload``, built once and reused by the load generator."""
    messages: Sequence[Message]
    if workload == "template":
        messages = [
            instant_pb2.TemplateRequest(image=common_pb2.Media(data=d)) for d in images.singles
        ]
    elif workload == "liveness":
        messages = [
            instant_pb2.LivenessRequest(image=common_pb2.Media(data=d)) for d in images.singles
        ]
    elif workload == "verify":
        messages = [
            instant_pb2.VerifyRequest(
                a=instant_pb2.FaceInput(image=common_pb2.Media(data=a)),
                b=instant_pb2.FaceInput(image=common_pb2.Media(data=b)),
            )
            for a, b in images.pairs
        ]
    else:
        raise ValueError(f"unknown workload {workload!r}; choose from {', '.join(WORKLOADS)}")
    return [m.SerializeToString() for m in messages]
