"""Test videos made from the real photos: a still with small natural motion (a slow pan and zoom,
sensor noise), encoded with PyAV (the decoder vigil uses), plus the malformed ones."""

from __future__ import annotations

import io
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np


def fit(bgr: np.ndarray, width: int, height: int) -> np.ndarray:
    """Centre-crop ``bgr`` to the aspect ratio of width×height and resize to it."""
    h, w = bgr.shape[:2]
    target = width / height
    if w / h > target:
        new_w = int(h * target)
        bgr = bgr[:, (w - new_w) // 2 : (w - new_w) // 2 + new_w]
    else:
        new_h = int(w / target)
        top = max(0, (h - new_h) // 3)  # keep more of the top: faces sit high in portraits
        bgr = bgr[top : top + new_h]
    return cv2.resize(bgr, (width, height), interpolation=cv2.INTER_AREA)


def motion_frames(
    photo: Path | np.ndarray,
    count: int,
    width: int = 480,
    height: int = 640,
    seed: int = 0,
    noise: float = 2.5,
) -> list[np.ndarray]:
    """A still photo filmed: a slow zoom (1.0 → 1.06), a pan of a few pixels, sensor noise."""
    base = cv2.imread(str(photo)) if isinstance(photo, Path) else photo
    assert base is not None, photo
    base = fit(base, width, height)
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi)
    frames = []
    for i in range(count):
        t = i / max(1, count - 1)
        zoom = 1.0 + 0.06 * t
        dx = 6.0 * np.sin(2 * np.pi * t + phase)
        dy = 4.0 * np.cos(2 * np.pi * t + phase)
        matrix = cv2.getRotationMatrix2D((width / 2, height / 2), 0.0, zoom)
        matrix[:, 2] += (dx, dy)
        frame = cv2.warpAffine(base, matrix, (width, height), borderMode=cv2.BORDER_REFLECT)
        grain = rng.normal(0.0, noise, frame.shape)
        frames.append(np.clip(frame.astype(np.float32) + grain, 0, 255).astype(np.uint8))
    return frames


def encode(
    frames: Iterable[np.ndarray],
    fmt: str = "mp4",
    codec: str = "libx264",
    fps: int = 15,
    rotation: int = 0,
    pts: list[int] | None = None,
) -> bytes:
    """Encode BGR frames; ``rotation`` writes a display matrix (degrees counter-clockwise)."""
    frames = list(frames)
    height, width = frames[0].shape[:2]
    options = {"preset": "ultrafast"} if codec == "libx264" else {}
    if codec.startswith("libvpx"):
        options = {"deadline": "realtime", "cpu-used": "8"}
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        assert isinstance(stream, av.VideoStream)  # ``codec`` names a video codec
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if pts is not None:
            stream.codec_context.time_base = Fraction(1, fps)
        if rotation:
            stream.set_display_rotation(rotation)
        for i, bgr in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(bgr, format="bgr24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def audio_only_mp4(seconds: float = 1.0) -> bytes:
    """An MP4 whose one stream is AAC audio (a 440 Hz tone)."""
    rate = 44100
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate)
        samples = np.sin(2 * np.pi * 440 * np.arange(int(rate * seconds)) / rate)
        data = (samples * 0.3).astype(np.float32)
        for start in range(0, len(data), 1024):
            chunk = data[start : start + 1024][None, :]
            frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
            frame.sample_rate, frame.pts = rate, start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def ten_hours_mp4() -> bytes:
    """Three tiny frames, the last one ten hours in: a legal file that declares 10 h."""
    frame = np.full((96, 128, 3), 120, np.uint8)
    return encode([frame] * 3, fps=1, pts=[0, 1, 36_000])


def huge_mp4(width: int = 7680, height: int = 4320) -> bytes:
    """One 8K frame (flat grey: cheap to encode, 8K in the header)."""
    return encode([np.full((height, width, 3), 90, np.uint8)], fps=1)
