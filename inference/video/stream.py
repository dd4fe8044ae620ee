"""One live stream's state: frames processed so far, the running score, and when to stop.

The verdict is given as soon as it is certain — at least ``min_frames`` frames with a face and
the running score at least ``margin`` away from the threshold, or twice ``min_frames`` frames
with a face whatever the score — or when a limit is reached (``max_frames`` processed,
``max_seconds`` elapsed, ``no_face_frames`` processed without any face), or when the client
stops sending. Memory is bounded: only the few best-ranked frames keep their pixels.
"""

from __future__ import annotations

import enum
import hashlib
import time
import uuid
from dataclasses import dataclass, field

from vigil.inference.errors import FaceNotFound
from vigil.inference.media import DecodedImage
from vigil.inference.types import Timings
from vigil.inference.video.liveness import VideoLiveness
from vigil.inference.video.signals import identity_check, interquartile_mean, subject_changed
from vigil.inference.video.types import Capture, FrameResult, VideoVerdict

#: Frames that keep their pixels as best-shot candidates.
_KEEP_IMAGES = 3


class Outcome(enum.Enum):
    PENDING = "PENDING"
    LIVE = "LIVE"
    SPOOF = "SPOOF"
    DECLINED = "DECLINED"
    NO_FACE = "NO_FACE"
    INCONCLUSIVE = "INCONCLUSIVE"


@dataclass(frozen=True)
class StreamConfig:
    min_frames: int = 8
    max_frames: int = 40
    max_seconds: float = 15.0
    no_face_frames: int = 15
    margin: float = 0.15


@dataclass
class StreamResult:
    outcome: Outcome
    reason: str
    verdict: VideoVerdict | None = None


@dataclass
class StreamSession:
    video: VideoLiveness
    config: StreamConfig
    capture: Capture = field(default_factory=Capture)
    origin: str = field(default_factory=lambda: uuid.uuid4().hex)
    frames: list[FrameResult] = field(default_factory=list)
    timings: Timings = field(default_factory=Timings)
    received: int = 0
    skipped: int = 0
    started: float = field(default_factory=time.monotonic)
    duplicates: int = 0
    _digest: hashlib._Hash = field(default_factory=hashlib.sha256)
    _timestamps: list[float] = field(default_factory=list)
    _last: bytes = b""

    @property
    def with_face(self) -> list[FrameResult]:
        return [f for f in self.frames if f.face is not None]

    @property
    def score(self) -> float:
        return interquartile_mean([f.score for f in self.with_face if f.score is not None])

    def receive(self, payload: bytes, capture_ms: float) -> int:
        """Note a frame as it arrives (before it is processed or skipped); its index."""
        frame_digest = hashlib.sha256(payload).digest()
        self.duplicates += frame_digest == self._last
        self._last = frame_digest
        self._digest.update(frame_digest)
        self._timestamps.append(capture_ms)
        self.received += 1
        return self.received - 1

    @property
    def duplicate_ratio(self) -> float:
        return self.duplicates / (self.received - 1) if self.received > 1 else 0.0

    async def add(self, image: DecodedImage, index: int, capture_ms: float) -> FrameResult:
        result = await self.video.frame(image, index, capture_ms / 1000.0, self.timings)
        self.frames.append(result)
        ranked = sorted(
            (f for f in self.frames if f.image is not None), key=lambda f: f.rank, reverse=True
        )
        for dropped in ranked[_KEEP_IMAGES:]:
            dropped.image = None  # bounded memory: pixels only for best-shot candidates
        return result

    def decision(self) -> str | None:
        """Why the stream should end now, or None to keep going."""
        good = len(self.with_face)
        processed = len(self.frames)
        cfg = self.config
        if good >= cfg.min_frames:
            if abs(self.score - self.video.threshold) >= cfg.margin or good >= 2 * cfg.min_frames:
                return f"{good} frames with a face"
            embeddings = [f.embedding for f in self.with_face if f.embedding is not None]
            check = identity_check(embeddings, self.video.engine.config.thresholds.match_distance)
            if subject_changed(check):
                return "the face changed to another person"
        if good == 0 and processed >= cfg.no_face_frames:
            return f"no face in {processed} frames"
        if processed >= cfg.max_frames:
            return f"{processed} frames processed (VIGIL_STREAM_MAX_FRAMES)"
        if time.monotonic() - self.started >= cfg.max_seconds:
            return f"{cfg.max_seconds:.0f} s elapsed (VIGIL_STREAM_MAX_SECONDS)"
        return None

    def remaining_s(self) -> float:
        return max(0.0, self.config.max_seconds - (time.monotonic() - self.started))

    async def finish(self, reason: str) -> StreamResult:
        """The final verdict on what was processed (signals recorded once, here)."""
        if not self.with_face:
            return StreamResult(Outcome.NO_FACE, reason or "no frame with a face")
        needed = self.video.config.min_face_frames
        if len(self.with_face) < needed:
            detail = f"{len(self.with_face)} frames with a face, {needed} needed"
            return StreamResult(Outcome.INCONCLUSIVE, f"{reason}: {detail}")
        capture = Capture(
            self.capture.camera_label,
            self.capture.device,
            self._timestamps if not self.capture.timestamps_ms else self.capture.timestamps_ms,
        )
        try:
            verdict = await self.video.conclude(
                self.frames,
                self.origin,
                self._digest.hexdigest(),
                capture,
                self.duplicate_ratio if self.received > 1 else None,
                self.timings,
            )
        except FaceNotFound as exc:
            return StreamResult(Outcome.INCONCLUSIVE, f"{reason}: {exc.message}")
        self.timings.total_ms = (time.monotonic() - self.started) * 1000
        if verdict.declined_by:
            outcome = Outcome.DECLINED
            reason = f"{reason}; declined by {', '.join(verdict.declined_by)}"
        else:
            outcome = Outcome.LIVE if verdict.live else Outcome.SPOOF
        return StreamResult(outcome, reason, verdict)
