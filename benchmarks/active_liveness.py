"""Active liveness: FaceMesh per face (batch 1 and batched) on the default backend, and challenge
answers verified per minute, in-process (the engine the server builds from its default settings,
no gRPC).

An answer is a 4 s, 15 fps, 360×480 H.264 video of a real photo moving closer (a zoom 1.0 → 1.5),
judged against a two-gesture challenge: decode, then per frame YuNet + embedding + FaceMesh
(batched across the frames and the concurrent answers), the detectors, identity, replay and
passive liveness of the best frame — everything ``Challenges.AnswerChallenge`` does but the
database and gRPC.

    python -m benchmarks.active_liveness [--seconds 20] [--concurrency 1 2 4] [--quick]

Writes ``benchmarks/reports/active_liveness.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from benchmarks.workloads import ROOT, default_data_dir
from vigil.inference import catalog
from vigil.inference.catalog import FACEMESH
from vigil.inference.engine import Engine
from vigil.inference.facemesh import mesh_crop
from vigil.inference.gestures.detectors import Gesture, GestureThresholds
from vigil.inference.gestures.verify import AnswerFrame, AnswerPolicy, AnswerVerifier
from vigil.inference.video.decode import VideoLimits, VideoSampling, decode_video
from vigil.inference.video.replay import ReplayMemory
from vigil.server.app import engine_config
from vigil.server.settings import Settings

REPORT = ROOT / "benchmarks" / "reports" / "active_liveness.json"
FPS = 15


def answer_video(photo: Path, seconds: float = 4.0, size: tuple[int, int] = (360, 480)) -> bytes:
    """The photo filmed moving closer: a zoom about the image centre, sensor noise."""
    width, height = size
    base = cv2.imread(str(photo))
    if base is None:
        raise SystemExit(f"cannot read the benchmark photo {photo}")
    h, w = base.shape[:2]
    crop_w = min(w, int(h * width / height))
    crop_h = int(crop_w * height / width)
    top = max(0, (h - crop_h) // 3)
    left = (w - crop_w) // 2
    base = cv2.resize(base[top : top + crop_h, left : left + crop_w], (width, height))
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    count = int(seconds * FPS)
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=FPS, options={"preset": "ultrafast"})
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(count):
            zoom = 1.0 + 0.5 * max(0.0, (i / count - 0.3) / 0.4) if i / count < 0.7 else 1.5
            matrix = cv2.getRotationMatrix2D((width / 2, height / 3), 0.0, zoom)
            frame = cv2.warpAffine(base, matrix, (width, height), borderMode=cv2.BORDER_REFLECT)
            noisy = np.clip(frame + rng.normal(0, 2.0, frame.shape), 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(noisy, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def facemesh_timings(engine: Engine, photo: Path, repeats: int) -> dict[str, float]:
    """ms per face at batch 1 (alone: every intra-op thread) and at batch 32."""
    bgr = cv2.imread(str(photo))
    assert bgr is not None
    h, w = bgr.shape[:2]
    crop = mesh_crop(bgr, (w * 0.3, h * 0.15, w * 0.4, h * 0.4)).tensor
    model = engine.models[FACEMESH.name]
    name = FACEMESH.inputs[0].name
    result: dict[str, float] = {}
    for batch in (1, 32):
        tensor = np.repeat(crop[None], batch, axis=0)
        model.infer({name: tensor}, alone=True)  # warm
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            model.infer({name: tensor}, alone=True)
            times.append((time.perf_counter() - started) * 1000 / batch)
        result[f"batch_{batch}_ms_per_face"] = statistics.median(times)
    return result


async def answers_per_minute(
    engine: Engine, video: bytes, seconds: float, concurrency: int
) -> dict[str, float]:
    """Closed loop: ``concurrency`` answers in flight for ``seconds``."""
    verifier = AnswerVerifier(engine, ReplayMemory())
    policy = AnswerPolicy(GestureThresholds(), 5.0, 120.0, 0.25)
    sampling = VideoSampling(count=int(30 * FPS), fps=FPS)
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def one() -> None:
        started = time.perf_counter()
        decoded = await engine.in_thread(decode_video, video, VideoLimits(), sampling)
        frames = [AnswerFrame(f.index, f.time_s, f.image) for f in decoded.frames]
        # a fresh origin each time: the replay memory must not decline the repeats
        await verifier.verify(
            frames, [Gesture.SMILE, Gesture.MOVE_CLOSER], policy, uuid.uuid4().hex
        )
        latencies.append(time.perf_counter() - started)

    async def client() -> None:
        while time.perf_counter() < deadline:
            await one()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "answers": len(latencies),
        "answers_per_minute": len(latencies) * 60 / elapsed,
        "p50_s": statistics.median(latencies),
        "max_s": max(latencies),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    data = default_data_dir()
    photo = data / "faces" / "obama.jpg"
    with tempfile.TemporaryDirectory() as tmp:
        models_dir = Path(tmp) / "models"
        catalog.install(models_dir)
        settings = Settings(models_dir=models_dir, data_dir=Path(tmp))
        engine = Engine(engine_config(settings))
        await engine.start()
        try:
            report: dict[str, Any] = {
                "backend": str(engine.running),
                "facemesh": facemesh_timings(engine, photo, 5 if args.quick else 50),
            }
            print(f"FaceMesh on {report['backend']}: {report['facemesh']}")
            video = answer_video(photo)
            await answers_per_minute(engine, video, 2.0, 1)  # warm the batchers
            report["answers"] = []
            for concurrency in args.concurrency:
                point = await answers_per_minute(engine, video, args.seconds, concurrency)
                print(f"answers: {point}")
                report["answers"].append(point)
        finally:
            await engine.stop()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--quick", action="store_true", help="5 s at concurrency 2 only")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.concurrency = 5.0, [2]
    report = asyncio.run(run(args))
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(report, indent=2))
    print(f"wrote {REPORT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
