"""Per-frame helpers of the video decoder: which frames to sample, upright BGR conversion
(rotation from the display matrix), and cheap luma thumbnails for duplicate detection."""

from __future__ import annotations

import collections
import itertools
from typing import Any

import cv2
import numpy as np


def _upright(frame: Any, max_side: int) -> np.ndarray:
    width, height = frame.width, frame.height
    scale = min(1.0, max_side / max(width, height))
    if scale < 1.0:
        width, height = max(2, round(width * scale)), max(2, round(height * scale))
        bgr = frame.reformat(width=width, height=height, format="bgr24").to_ndarray()
    else:
        bgr = frame.to_ndarray(format="bgr24")
    return rotate_upright(bgr, rotation_of(frame))


def rotation_of(frame: Any) -> int:
    """Clockwise degrees (0/90/180/270) that make the frame upright, from its display matrix."""
    try:
        value = float(frame.rotation or 0.0)
    except (AttributeError, ValueError):
        return 0
    return round(-value / 90.0) % 4 * 90


def rotate_upright(bgr: np.ndarray, clockwise: int) -> np.ndarray:
    codes = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}
    return np.ascontiguousarray(cv2.rotate(bgr, codes[clockwise])) if clockwise else bgr


#: Decoder output formats whose first plane is 8-bit luma (what H.264/VP8/VP9 decode to).
_LUMA8 = {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "nv12", "nv21"}


def thumbnail(frame: Any) -> np.ndarray:
    """A 32×32 grid of luma samples, read from the decoded plane without any conversion
    (swscale to a thumbnail costs 7 ms a 720p frame; this costs microseconds)."""
    if frame.format.name in _LUMA8:
        plane = frame.planes[0]
        luma = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)
        rows = np.linspace(0, frame.height - 1, 32).astype(int)
        cols = np.linspace(0, frame.width - 1, 32).astype(int)
        return np.asarray(luma[np.ix_(rows, cols)], np.int16)
    return np.asarray(frame.reformat(width=32, height=32, format="gray").to_ndarray(), np.int16)


def duplicate_ratio(thumbnails: list[np.ndarray], tolerance: float = 0.05) -> float:
    """Share of consecutive thumbnails whose mean absolute difference is under ``tolerance``."""
    if len(thumbnails) < 2:
        return 0.0
    same = sum(float(np.mean(np.abs(a - b))) < tolerance for a, b in itertools.pairwise(thumbnails))
    return same / (len(thumbnails) - 1)


def sample_targets(duration_s: float, count: int) -> list[float]:
    """Times at the middle of ``count`` equal slices of the duration."""
    return [duration_s * (k + 0.5) / count for k in range(count)]


class Sampler:
    """Picks, as frames go by, the frame nearest each target time; with no known duration,
    every ``stride``-th frame, halving the kept ones (and doubling the stride) past 2×count."""

    def __init__(self, duration_s: float, count: int, max_side: int) -> None:
        timed = duration_s > 0
        self.targets = collections.deque(sample_targets(duration_s, count)) if timed else None
        self.count, self.max_side, self.stride = count, max_side, 1
        self.picked: list[tuple[int, float, np.ndarray]] = []
        self.prev: tuple[int, float, Any] | None = None

    def _take(self, index: int, t: float, frame: Any) -> None:
        if not self.picked or self.picked[-1][0] < index:
            self.picked.append((index, t, _upright(frame, self.max_side)))

    def offer(self, index: int, t: float, frame: Any) -> None:
        if self.targets is None:
            if index % self.stride == 0:
                self._take(index, t, frame)
                if len(self.picked) > 2 * self.count:
                    self.picked, self.stride = self.picked[::2], self.stride * 2
        else:
            while self.targets and self.targets[0] <= t:
                target = self.targets.popleft()
                if self.prev is not None and target - self.prev[1] <= t - target:
                    self._take(*self.prev)
                else:
                    self._take(index, t, frame)
        self.prev = (index, t, frame)

    def finish(self) -> list[tuple[int, float, np.ndarray]]:
        if self.targets and self.prev is not None:  # targets past the last frame
            self._take(*self.prev)
        if self.targets is None and len(self.picked) > self.count:
            spread = np.linspace(0, len(self.picked) - 1, self.count)
            self.picked = [self.picked[round(i)] for i in spread]
        return self.picked
