"""Pure functions behind a video verdict: robust aggregation, subject tracking by identity, and
the injection signals (virtual cameras, implausible capture timing, duplicated frames).

Aggregation is the **interquartile mean** (the mean of the middle half of the per-frame scores):
a quarter of the frames may be wrong in either direction — motion blur, a glare, a frame where
the detector's box slipped, or a momentarily convincing frame of a replay — without moving the
verdict, and unlike the median it still averages half the frames, so it is steadier with the
10-20 frames a video or a stream gives (the running score of the stream does not jump).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vigil.inference.decisions import is_match


@dataclass(frozen=True)
class Signal:
    """One replay/injection/consistency check: ``declines`` when triggered and set to decline."""

    name: str
    triggered: bool
    declines: bool
    value: float
    detail: str


@dataclass(frozen=True)
class SignalPolicy:
    """Which triggered signals decline the verdict (settings ``VIGIL_DECLINE_ON_*``)."""

    replay: bool = True
    virtual_camera: bool = True
    timing: bool = False
    subject_change: bool = True

    def signal(self, name: str, group: str, triggered: bool, value: float, detail: str) -> Signal:
        return Signal(name, triggered, triggered and bool(getattr(self, group)), value, detail)


def interquartile_mean(scores: list[float]) -> float:
    """Mean of the middle half (25 % trimmed each side); the median below four values."""
    if not scores:
        return 0.0
    ordered = sorted(scores)
    n = len(ordered)
    if n < 4:
        return float(np.median(ordered))
    cut = n // 4
    return float(np.mean(ordered[cut : n - cut]))


@dataclass(frozen=True)
class IdentityCheck:
    reference: int  # index (into the embeddings) of the medoid: the subject
    distances: list[float]  # each frame's distance to the subject
    outliers: int


def identity_check(embeddings: list[np.ndarray], threshold: float) -> IdentityCheck:
    """Distances of every frame's face to the medoid face (the one closest to all others)."""
    if not embeddings:
        return IdentityCheck(-1, [], 0)
    matrix = np.stack([e.astype(np.float64) for e in embeddings])
    pairwise = np.linalg.norm(matrix[:, None, :] - matrix[None, :, :], axis=-1)
    medoid = int(np.argmin(pairwise.sum(axis=1)))
    distances = [float(d) for d in pairwise[medoid]]
    return IdentityCheck(medoid, distances, sum(not is_match(d, threshold) for d in distances))


def subject_changed(check: IdentityCheck, min_share: float = 0.2) -> bool:
    """Another person in at least max(2, ``min_share``) of the frames with a face."""
    needed = max(2, math.ceil(min_share * len(check.distances)))
    return check.outliers >= needed


#: Virtual cameras, capture tools and emulators: substrings of a camera label or device name.
VIRTUAL_CAMERAS = (
    "obs virtual",
    "obs-camera",
    "obs camera",
    "manycam",
    "xsplit",
    "splitcam",
    "snap camera",
    "e2esoft",
    "vcam",
    "virtual cam",
    "virtualcam",
    "virtual camera",
    "youcam",
    "camtwist",
    "webcamoid",
    "droidcam",
    "iriun",
    "ivcam",
    "epoccam",
    "avatarify",
    "facerig",
    "chromacam",
    "altercam",
    "mmhmm",
    "nvidia broadcast",
    "dummy video device",
    "v4l2loopback",
    "unity video capture",
    "fake",
)
EMULATORS = (
    "emulator",
    "sdk_gphone",
    "generic_x86",
    "goldfish",
    "ranchu",
    "genymotion",
    "bluestacks",
)


def virtual_camera(camera_label: str, device: str) -> str | None:
    """The known virtual-camera or emulator name found in the capture metadata, if any."""
    label, dev = camera_label.lower(), device.lower()
    for name in VIRTUAL_CAMERAS:
        if name in label or name in dev:
            return name
    for name in EMULATORS:
        if name in dev or name in label:
            return name
    return None


@dataclass(frozen=True)
class TimingCheck:
    regular: bool
    irregular: bool
    jitter_ms: float  # standard deviation of the frame intervals
    detail: str


def timing_check(
    timestamps_ms: list[float], min_frames: int = 8, regular_jitter_ms: float = 0.01
) -> TimingCheck | None:
    """Capture timestamps a real camera would not produce; None when there are too few.

    Too regular: intervals whose standard deviation is under ``regular_jitter_ms`` (10 µs: a
    file played out with timestamps computed from its frame rate; a real sensor's capture times
    jitter by 0.1-2 ms, and browsers round them to 0.1 ms). A player that stamps frames with a
    real clock as it sends them is not caught by this check (its jitter is a scheduler's).
    Too irregular: timestamps that go backwards or repeat, a gap over ten median intervals, or
    intervals varying more than their median (coefficient of variation over 1).
    """
    if len(timestamps_ms) < min_frames:
        return None
    intervals = np.diff(np.asarray(timestamps_ms, dtype=np.float64))
    median = float(np.median(intervals))
    jitter = float(np.std(intervals))
    if np.any(intervals <= 0):
        return TimingCheck(False, True, jitter, "timestamps repeat or go backwards")
    if float(intervals.max()) > 10 * median:
        detail = f"a {intervals.max():.0f} ms gap in frames {median:.1f} ms apart"
        return TimingCheck(False, True, jitter, detail)
    if jitter > median:
        return TimingCheck(False, True, jitter, f"interval jitter {jitter:.1f} ms > {median:.1f}")
    if jitter < regular_jitter_ms:
        detail = f"intervals of {median:.3f} ms with {jitter * 1000:.1f} µs jitter"
        return TimingCheck(True, False, jitter, detail)
    return TimingCheck(False, False, jitter, f"intervals {median:.1f} ± {jitter:.2f} ms")


def capture_signals(
    policy: SignalPolicy,
    camera_label: str,
    device: str,
    timestamps_ms: list[float],
    duplicate_ratio: float | None,
    max_duplicates: float = 0.3,
) -> list[Signal]:
    """virtual_camera, timing_regular, timing_irregular and duplicate_frames."""
    signals = []
    found = virtual_camera(camera_label, device)
    signals.append(
        policy.signal(
            "virtual_camera",
            "virtual_camera",
            found is not None,
            1.0 if found else 0.0,
            f"capture source matches {found!r}" if found else "no known virtual camera",
        )
    )
    timing = timing_check(timestamps_ms)
    if timing is not None:
        signals.append(
            policy.signal(
                "timing_regular", "timing", timing.regular, timing.jitter_ms, timing.detail
            )
        )
        signals.append(
            policy.signal(
                "timing_irregular", "timing", timing.irregular, timing.jitter_ms, timing.detail
            )
        )
    if duplicate_ratio is not None:
        signals.append(
            policy.signal(
                "duplicate_frames",
                "timing",
                duplicate_ratio >= max_duplicates,
                duplicate_ratio,
                f"{duplicate_ratio:.0%} of consecutive frames are identical",
            )
        )
    return signals
