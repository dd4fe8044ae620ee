"""Videos for Chromium's fake camera (``--use-file-for-fake-video-capture``), made from the real
photos: YUV4MPEG2 (.y4m), a header line then per frame ``FRAME`` and the I420 planes. Chromium
plays the file in a loop at its frame rate. Written to a test's temp directory, never committed
(50 frames of 480×640 are 23 MB)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from tests.gesture_videos import Still, gesture_frames
from tests.videos import motion_frames

FPS = 15


def write_y4m(frames: Sequence[np.ndarray], path: Path, fps: int = FPS) -> Path:
    """BGR frames (all one even size) as a .y4m file at ``path``."""
    height, width = frames[0].shape[:2]
    assert width % 2 == 0 and height % 2 == 0, "I420 needs an even size"
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            out.write(b"FRAME\n")
            out.write(cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).tobytes())
    return path


def still_clip(photo: Path, path: Path, seconds: float = 3.0, seed: int = 0) -> Path:
    """The photo held in front of the camera: small natural motion and sensor noise."""
    return write_y4m(motion_frames(photo, round(seconds * FPS), 480, 640, seed=seed), path)


def gesture_clip(
    still: Still, gestures: Sequence[str], path: Path, seed: int = 0, lead: float = 0.8
) -> Path:
    """A neutral lead, then each gesture (1.2 s) with a pause after it, as the plugin prompts."""
    script: list[tuple[str, float]] = [("neutral", lead)]
    for gesture in gestures:
        script += [(gesture, 1.2), ("neutral", 0.6)]
    return write_y4m(gesture_frames(still, script, fps=FPS, seed=seed), path)
