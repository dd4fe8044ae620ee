"""The persistent API's gestures: a LIVENESS analysis of a video tagged with one of Oz's gesture
tags (``video_selfie_smile``, ``_eyes``, ``_left``, ``_right``, ``_high``, ``_down``, ``_zoom``)
also checks that the video shows that gesture, within VIGIL_CHALLENGE_GESTURE_WINDOW_S of its
start, read by the server's FaceMesh. The result is one more signal, ``gesture_<name>``, which
declines the media when the gesture is missing.

There is no server challenge here (Oz's persistent API has none): the tag names the gesture, so a
recording of the same gesture can be replayed; the replay signals of video liveness still apply.
"""

from __future__ import annotations

import asyncio

from vigil.inference.engine import Engine
from vigil.inference.errors import VigilError
from vigil.inference.gestures.detectors import detect_sequence
from vigil.inference.gestures.verify import AnswerFrame, AnswerVerifier
from vigil.inference.types import Timings
from vigil.inference.video.decode import decode_video
from vigil.server.gestures import GESTURE_TAGS, answer_policy, answer_sampling
from vigil.server.settings import Settings
from vigil.server.video import replay_memory_for
from vigil.storage.results import MediaResult, Resolution, SignalRecord
from vigil.storage.tables import Media


class GestureCheck:
    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self.verifier = AnswerVerifier(engine, replay_memory_for(engine, settings))

    async def signal(self, media: Media, data: bytes) -> SignalRecord | None:
        """The ``gesture_<name>`` signal of a video tagged with a gesture; None without a tag."""
        gestures = [GESTURE_TAGS[tag] for tag in media.tags if tag in GESTURE_TAGS]
        if not gestures:
            return None
        gesture = gestures[0]
        name = f"gesture_{gesture.value}"
        limits, sampling = answer_sampling(self.settings)
        try:
            video = await self.engine.in_thread(decode_video, data, limits, sampling)
        except VigilError as exc:
            return SignalRecord(
                name=name, triggered=True, declines=True, value=0.0, detail=exc.message
            )
        frames = [AnswerFrame(f.index, f.time_s, f.image) for f in video.frames]
        timings = Timings()
        await asyncio.gather(*(self.verifier.analyse(f, timings, None) for f in frames))
        samples = [f.sample for f in frames if f.sample is not None]
        policy = answer_policy(self.settings, self.settings.challenge_gesture_window_s)
        (found,) = detect_sequence([gesture], samples, policy.window_s, policy.thresholds)
        detail = (
            f"{found.signal} from {found.baseline:.3f} to {found.extreme:.3f} "
            f"(needed {found.threshold:.3f}), frames {found.start_index}–{found.end_index}"
            if found.passed
            else found.reason
        )
        return SignalRecord(
            name=name,
            triggered=not found.passed,
            declines=not found.passed,
            value=found.extreme,
            detail=detail,
        )

    async def add_to(self, result: MediaResult, media: Media, data: bytes) -> MediaResult:
        """``result`` with the gesture's signal; DECLINED when the gesture is missing."""
        found = await self.signal(media, data)
        if found is None:
            return result
        changes: dict[str, object] = {"signals": [*result.signals, found]}
        if found.declines:
            changes["resolution"] = Resolution.DECLINED
            reason = f"declined by {found.name}"
            changes["error"] = f"{result.error}; {reason}" if result.error else reason
        return result.model_copy(update=changes)
