"""Gesture detectors: pure functions on a sequence of per-frame signals with capture times.

Every gesture is judged against the person's own neutral face (a baseline), never an absolute
value: the first ``baseline_s`` of the answer for pose, smile and size (the person starts facing
the camera), the median of the whole answer for the eyes (a blink is short, so most frames show
open eyes). Gestures are searched in the challenge's order: each must happen after the previous
one and within ``window_s`` of it (the first within ``window_s`` of the first frame).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from vigil.inference.gestures.signals import FrameSignals


class Gesture(StrEnum):
    BLINK = "blink"
    SMILE = "smile"
    TURN_LEFT = "turn_left"
    TURN_RIGHT = "turn_right"
    TILT_UP = "tilt_up"
    TILT_DOWN = "tilt_down"
    MOVE_CLOSER = "move_closer"


@dataclass(frozen=True)
class GestureThresholds:
    """How far a signal must move from the person's baseline (the server's settings
    ``VIGIL_GESTURE_*``; see server/settings.py for how each was chosen)."""

    #: Blink: the eye aspect ratio falls below this fraction of the open-eye baseline…
    blink_ratio: float = 0.6
    #: …for at least this long…
    blink_min_ms: float = 100.0
    #: …and reopens within this long (a longer closure is not a blink).
    blink_max_ms: float = 400.0
    #: Smile: mouth width / inter-ocular distance grows by this fraction of its baseline.
    smile_growth: float = 0.12
    #: Turn left/right: yaw changes by at least this many degrees from the baseline.
    turn_degrees: float = 12.0
    #: Tilt up/down: pitch changes by at least this many degrees from the baseline.
    tilt_degrees: float = 8.0
    #: Move closer: the inter-ocular distance grows by this fraction of its baseline.
    closer_growth: float = 0.25
    #: The neutral face: frames in the first this many seconds (at least two frames).
    baseline_s: float = 0.5


@dataclass(frozen=True)
class Sample:
    """One analysed frame: its index in the answer, capture time and signals."""

    index: int
    time_s: float
    signals: FrameSignals


@dataclass(frozen=True)
class GestureEvidence:
    """What a detector found (or the closest it came): the frames and the signal's values."""

    gesture: Gesture
    passed: bool
    signal: str
    baseline: float
    #: The signal's most extreme value in the window (toward the gesture).
    extreme: float
    #: The value it had to reach.
    threshold: float
    #: The frames of the event (first → last), -1 when none.
    start_index: int = -1
    end_index: int = -1
    start_s: float = 0.0
    end_s: float = 0.0
    reason: str = ""


def _median(values: Sequence[float]) -> float:
    return float(np.median(values)) if values else 0.0


def baseline_of(samples: Sequence[Sample], signal: str, seconds: float) -> float:
    """The median of ``signal`` over the first ``seconds`` of the answer (at least two frames)."""
    if not samples:
        return 0.0
    first = samples[0].time_s
    early = [s for s in samples if s.time_s - first <= seconds] or list(samples[:2])
    if len(early) < 2:
        early = list(samples[:2])
    return _median([getattr(s.signals, signal) for s in early])


def _threshold_run(
    gesture: Gesture,
    samples: Sequence[Sample],
    signal: str,
    baseline: float,
    target: float,
    rising: bool,
) -> GestureEvidence:
    """The first frame whose ``signal`` reaches ``target`` (≥ when ``rising``, else ≤), and the
    run of frames that stays there."""
    values = [getattr(s.signals, signal) for s in samples]
    extreme = (max if rising else min)(values, default=baseline)
    for i, value in enumerate(values):
        if (value >= target) if rising else (value <= target):
            end = i
            while end + 1 < len(values) and (
                (values[end + 1] >= target) if rising else (values[end + 1] <= target)
            ):
                end += 1
            return GestureEvidence(
                gesture,
                True,
                signal,
                baseline,
                float(extreme),
                target,
                samples[i].index,
                samples[end].index,
                samples[i].time_s,
                samples[end].time_s,
            )
    return GestureEvidence(
        gesture,
        False,
        signal,
        baseline,
        float(extreme),
        target,
        reason=f"{signal} reached {extreme:.3f}, needed {'≥' if rising else '≤'} {target:.3f} "
        f"(baseline {baseline:.3f})",
    )


def detect_blink(
    samples: Sequence[Sample], baseline: float, thresholds: GestureThresholds
) -> GestureEvidence:
    """A dip of the eye aspect ratio below ``blink_ratio`` × baseline lasting 100–400 ms: from the
    first closed frame to the first reopened one (so the frame rate bounds the precision)."""
    target = baseline * thresholds.blink_ratio
    values = [s.signals.ear for s in samples]
    extreme = min(values, default=baseline)
    best_reason = ""
    i = 0
    while i < len(samples):
        if values[i] > target:
            i += 1
            continue
        end = i
        while end + 1 < len(samples) and values[end + 1] <= target:
            end += 1
        if end + 1 >= len(samples):
            best_reason = "the eyes closed and did not reopen"
            break
        duration_ms = (samples[end + 1].time_s - samples[i].time_s) * 1000
        if thresholds.blink_min_ms <= duration_ms <= thresholds.blink_max_ms:
            return GestureEvidence(
                Gesture.BLINK,
                True,
                "ear",
                baseline,
                float(min(values[i : end + 1])),
                target,
                samples[i].index,
                samples[end].index,
                samples[i].time_s,
                samples[end].time_s,
            )
        best_reason = (
            f"the eyes closed for {duration_ms:.0f} ms; a blink lasts "
            f"{thresholds.blink_min_ms:.0f}–{thresholds.blink_max_ms:.0f} ms"
        )
        i = end + 1
    return GestureEvidence(
        Gesture.BLINK,
        False,
        "ear",
        baseline,
        float(extreme),
        target,
        reason=best_reason
        or f"ear fell to {extreme:.3f}, needed ≤ {target:.3f} (baseline {baseline:.3f})",
    )


def _detector(
    gesture: Gesture, signal: str, rising: bool, amount: Callable[[GestureThresholds], float]
) -> Callable[[Sequence[Sample], float, GestureThresholds], GestureEvidence]:
    additive = signal in ("yaw", "pitch")

    def detect(
        samples: Sequence[Sample], baseline: float, thresholds: GestureThresholds
    ) -> GestureEvidence:
        step = amount(thresholds)
        if additive:
            target = baseline + step if rising else baseline - step
        else:
            target = baseline * (1 + step)
        return _threshold_run(gesture, samples, signal, baseline, target, rising)

    return detect


DETECTORS: dict[Gesture, Callable[[Sequence[Sample], float, GestureThresholds], GestureEvidence]]
DETECTORS = {
    Gesture.BLINK: detect_blink,
    Gesture.SMILE: _detector(Gesture.SMILE, "smile", True, lambda t: t.smile_growth),
    Gesture.TURN_LEFT: _detector(Gesture.TURN_LEFT, "yaw", True, lambda t: t.turn_degrees),
    Gesture.TURN_RIGHT: _detector(Gesture.TURN_RIGHT, "yaw", False, lambda t: t.turn_degrees),
    Gesture.TILT_UP: _detector(Gesture.TILT_UP, "pitch", True, lambda t: t.tilt_degrees),
    Gesture.TILT_DOWN: _detector(Gesture.TILT_DOWN, "pitch", False, lambda t: t.tilt_degrees),
    Gesture.MOVE_CLOSER: _detector(Gesture.MOVE_CLOSER, "size", True, lambda t: t.closer_growth),
}

#: The signal each gesture reads.
SIGNAL_OF = {
    Gesture.BLINK: "ear",
    Gesture.SMILE: "smile",
    Gesture.TURN_LEFT: "yaw",
    Gesture.TURN_RIGHT: "yaw",
    Gesture.TILT_UP: "pitch",
    Gesture.TILT_DOWN: "pitch",
    Gesture.MOVE_CLOSER: "size",
}


def detect_sequence(
    gestures: Sequence[Gesture],
    samples: Sequence[Sample],
    window_s: float,
    thresholds: GestureThresholds,
) -> list[GestureEvidence]:
    """Each gesture in order, each searched after the previous one's event and within
    ``window_s`` of it; once one fails, the rest are reported as not reached."""
    results: list[GestureEvidence] = []
    if not samples:
        return [
            GestureEvidence(g, False, SIGNAL_OF[g], 0.0, 0.0, 0.0, reason="no frames")
            for g in gestures
        ]
    cursor = 0
    since = samples[0].time_s
    for position, gesture in enumerate(gestures):
        signal = SIGNAL_OF[gesture]
        if signal == "ear":
            baseline = _median([s.signals.ear for s in samples])
        else:
            baseline = baseline_of(samples, signal, thresholds.baseline_s)
        in_window = [s for s in samples[cursor:] if s.time_s - since <= window_s]
        found = DETECTORS[gesture](in_window, baseline, thresholds)
        if not found.passed:
            late = DETECTORS[gesture](samples[cursor:], baseline, thresholds)
            if late.passed:
                found = dataclasses.replace(
                    found,
                    reason=f"performed at {late.start_s - since:.2f} s, after its "
                    f"{window_s:.1f} s window",
                )
            results.append(found)
            results += [
                GestureEvidence(
                    g, False, SIGNAL_OF[g], 0.0, 0.0, 0.0, reason=f"gesture {position + 1} failed"
                )
                for g in gestures[position + 1 :]
            ]
            return results
        results.append(found)
        # the next gesture starts after this one's event (its last frame)
        cursor = next(i for i, s in enumerate(samples) if s.index == found.end_index) + 1
        since = found.end_s
    return results
