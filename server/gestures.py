"""Active liveness settings → the engine's gesture thresholds and answer policy, and Oz's
``video_selfie_*`` gesture tags (shared by the Challenges API and the persistent LIVENESS jobs)."""

from __future__ import annotations

import math

from vigil.inference.gestures.detectors import Gesture, GestureThresholds
from vigil.inference.gestures.verify import AnswerPolicy
from vigil.inference.video.decode import VideoLimits, VideoSampling
from vigil.server.settings import Settings

#: Oz's media tags that ask for a gesture (``video_selfie_blank`` and ``_scan`` ask for none).
GESTURE_TAGS: dict[str, Gesture] = {
    "video_selfie_eyes": Gesture.BLINK,
    "video_selfie_smile": Gesture.SMILE,
    "video_selfie_left": Gesture.TURN_LEFT,
    "video_selfie_right": Gesture.TURN_RIGHT,
    "video_selfie_high": Gesture.TILT_UP,
    "video_selfie_down": Gesture.TILT_DOWN,
    "video_selfie_zoom": Gesture.MOVE_CLOSER,
}


def gesture_thresholds(settings: Settings) -> GestureThresholds:
    return GestureThresholds(
        blink_ratio=settings.gesture_blink_ratio,
        blink_min_ms=settings.gesture_blink_min_ms,
        blink_max_ms=settings.gesture_blink_max_ms,
        smile_growth=settings.gesture_smile_growth,
        turn_degrees=settings.gesture_turn_degrees,
        tilt_degrees=settings.gesture_tilt_degrees,
        closer_growth=settings.gesture_closer_growth,
    )


def answer_policy(settings: Settings, window_s: float) -> AnswerPolicy:
    return AnswerPolicy(
        thresholds=gesture_thresholds(settings),
        window_s=window_s,
        max_duration_s=settings.challenge_ttl_s,
        max_frame_gap_s=settings.challenge_max_frame_gap_ms / 1000,
    )


def answer_sampling(settings: Settings) -> tuple[VideoLimits, VideoSampling]:
    """The video limits, and every frame at VIGIL_CHALLENGE_SAMPLE_FPS up to the longest answer."""
    span = min(settings.challenge_ttl_s, settings.max_video_duration_s)
    limits = VideoLimits(
        max_bytes=settings.max_video_bytes,
        max_duration_s=settings.max_video_duration_s,
        max_side=settings.max_video_side,
        max_frames=settings.max_video_frames,
    )
    count = math.ceil(span * settings.challenge_sample_fps)
    return limits, VideoSampling(count=count, fps=settings.challenge_sample_fps)
