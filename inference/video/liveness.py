"""Video liveness: sampled frames → detect → MiniFASNet ensemble + embedding per frame (batched
across frames by the engine's batchers) → one tracked subject → robust score, best shot, signals.

The subject is tracked by identity, not by position: every frame's largest face is embedded and
compared with the medoid face of the video, so a face swapped mid-video or two people taking
turns shows up as frames far from the subject (``subject_changed``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field

from vigil.inference.decisions import is_match
from vigil.inference.engine import Engine
from vigil.inference.errors import FaceNotFound, MultipleFaces
from vigil.inference.face_quality import face_quality
from vigil.inference.media import DecodedImage
from vigil.inference.types import Timings
from vigil.inference.video.decode import (
    DecodedVideo,
    VideoInfo,
    VideoLimits,
    VideoSampling,
    decode_video,
)
from vigil.inference.video.replay import ReplayMemory, frame_hash
from vigil.inference.video.signals import (
    IdentityCheck,
    Signal,
    SignalPolicy,
    capture_signals,
    identity_check,
    interquartile_mean,
    subject_changed,
)
from vigil.inference.video.types import BestShot, Capture, FrameResult, VideoVerdict, encode_jpeg


@dataclass(frozen=True)
class VideoConfig:
    limits: VideoLimits = field(default_factory=VideoLimits)
    sampling: VideoSampling = field(default_factory=VideoSampling)
    policy: SignalPolicy = field(default_factory=SignalPolicy)
    #: Frames with a face needed for a verdict.
    min_face_frames: int = 3
    #: A replay of frames: at least this share of the frames seen before under another origin.
    replay_frame_share: float = 0.6


class VideoLiveness:
    def __init__(self, engine: Engine, config: VideoConfig, replay: ReplayMemory) -> None:
        self.engine = engine
        self.config = config
        self.replay = replay

    @property
    def threshold(self) -> float:
        return self.engine.config.thresholds.liveness

    async def decode(self, data: bytes, timings: Timings) -> DecodedVideo:
        started = time.perf_counter()
        video = await self.engine.in_thread(
            decode_video, data, self.config.limits, self.config.sampling
        )
        timings.decode_ms += (time.perf_counter() - started) * 1000
        return video

    async def frame(
        self,
        image: DecodedImage,
        index: int,
        time_s: float,
        timings: Timings,
        deadline: float | None = None,
    ) -> FrameResult:
        """Detect, then liveness, embedding, quality and hash of the frame's largest face."""
        result = FrameResult(index, time_s, image=image)
        faces = await self.engine.detect_faces(image, timings, deadline)
        result.face_count = len(faces)
        if not faces:
            result.hash = await self.engine.in_thread(frame_hash, image.bgr)
            return result
        face = faces[0]
        liveness, embedding, quality, hashed = await asyncio.gather(
            self.engine.liveness_of(image, face, timings, deadline),
            self.engine.embedding_of(image, face, timings, deadline),
            self.engine.in_thread(face_quality, image.bgr, face),
            self.engine.in_thread(frame_hash, image.bgr),
        )
        result.face, result.score, result.per_model = face, liveness.score, liveness.per_model
        result.embedding, result.quality, result.hash = embedding, quality, hashed
        return result

    async def analyze(
        self,
        data: bytes,
        capture: Capture | None = None,
        origin: str | None = None,
        require_single: bool = False,
        deadline: float | None = None,
        *,
        admit: bool = True,
    ) -> VideoVerdict:
        """The whole video: decode + sample, every sampled frame at once, then the verdict.
        Admitted as many images as frames are sampled (``admit=False``: a background job)."""
        if admit:
            async with self.engine.admission(self.config.sampling.count):
                return await self.analyze(
                    data, capture, origin, require_single, deadline, admit=False
                )
        timings = Timings()
        started = time.perf_counter()
        video = await self.decode(data, timings)
        frames = await asyncio.gather(
            *(self.frame(f.image, f.index, f.time_s, timings, deadline) for f in video.frames)
        )
        if require_single:
            for frame in frames:
                if frame.face_count > 1:
                    raise MultipleFaces(
                        f"{frame.face_count} faces in frame {frame.index}; "
                        "the request requires exactly one"
                    )
        capture = capture or Capture()
        verdict = await self.conclude(
            list(frames),
            origin or uuid.uuid4().hex,
            video.info.sha256,
            capture,
            video.duplicate_ratio,
            timings,
        )
        verdict.info = video.info
        timings.total_ms = (time.perf_counter() - started) * 1000
        return verdict

    def require_faces(self, frames: list[FrameResult]) -> list[FrameResult]:
        with_face = [f for f in frames if f.face is not None]
        needed = min(self.config.min_face_frames, len(frames))
        if not with_face:
            raise FaceNotFound(
                f"no face in any of the {len(frames)} sampled frames "
                f"(faces smaller than {self.engine.config.min_face_px:.0f} px are ignored)"
            )
        if len(with_face) < needed:
            raise FaceNotFound(
                f"a face in only {len(with_face)} of {len(frames)} sampled frames; "
                f"{needed} are needed (VIGIL_VIDEO_MIN_FACE_FRAMES)"
            )
        return with_face

    def mark_subject(self, frames: list[FrameResult]) -> tuple[list[FrameResult], IdentityCheck]:
        """Compare every face with the medoid face; mark the frames that show the subject."""
        with_face = [f for f in frames if f.face is not None and f.embedding is not None]
        threshold = self.engine.config.thresholds.match_distance
        check = identity_check(
            [f.embedding for f in with_face if f.embedding is not None], threshold
        )
        for frame, distance in zip(with_face, check.distances, strict=True):
            frame.identity_distance, frame.is_subject = distance, is_match(distance, threshold)
        return with_face, check

    async def best_of(
        self, data: bytes, deadline: float | None = None
    ) -> tuple[BestShot, FrameResult, VideoInfo]:
        """The best shot of a video and its frame (embedding included); no replay bookkeeping.
        For background jobs: not admitted (see ``Engine.admission``)."""
        timings = Timings()
        video = await self.decode(data, timings)
        frames = await asyncio.gather(
            *(self.frame(f.image, f.index, f.time_s, timings, deadline) for f in video.frames)
        )
        self.require_faces(list(frames))
        self.mark_subject(list(frames))
        best = await self.best_shot(list(frames))
        if best is None:
            raise FaceNotFound("no frame of the video shows its subject")
        frame = next(f for f in frames if f.index == best.index)
        return best, frame, video.info

    def signals(
        self,
        frames: list[FrameResult],
        origin: str,
        sha256: str | None,
        capture: Capture,
        duplicates: float | None,
    ) -> list[Signal]:
        """Subject change, replay (media and frames), virtual camera, timing, duplicates."""
        policy = self.config.policy
        with_face, check = self.mark_subject(frames)
        changed = subject_changed(check)
        signals = [
            policy.signal(
                "subject_changed",
                "subject_change",
                changed,
                float(max(check.distances, default=0.0)),
                f"{check.outliers} of {len(with_face)} frames show another person",
            )
        ]
        earlier = self.replay.check_media(sha256, origin) if sha256 else None
        signals.append(
            policy.signal(
                "replay_media",
                "replay",
                earlier is not None,
                1.0 if earlier else 0.0,
                "the same bytes were submitted before" if earlier else "first time seen",
            )
        )
        hashes = [f.hash for f in frames if f.hash is not None]
        replay = self.replay.check_frames(hashes, origin)
        repeated = replay.matched >= 3 and replay.share >= self.config.replay_frame_share
        signals.append(
            policy.signal(
                "replay_frames",
                "replay",
                repeated,
                replay.share,
                f"{replay.matched} of {replay.total} frames were seen before",
            )
        )
        signals += capture_signals(
            policy, capture.camera_label, capture.device, capture.timestamps_ms, duplicates
        )
        return signals

    async def conclude(
        self,
        frames: list[FrameResult],
        origin: str,
        sha256: str | None,
        capture: Capture,
        duplicates: float | None,
        timings: Timings,
    ) -> VideoVerdict:
        with_face = self.require_faces(frames)
        # identity, replay lookups (up to 50k hashes) and timing: numpy work, off the loop
        signals = await self.engine.in_thread(
            self.signals, frames, origin, sha256, capture, duplicates
        )
        score = interquartile_mean([f.score for f in with_face if f.score is not None])
        best = await self.best_shot(frames)
        face_count = max(f.face_count for f in frames)
        return VideoVerdict(score, self.threshold, frames, signals, best, None, timings, face_count)

    async def best_shot(self, frames: list[FrameResult]) -> BestShot | None:
        candidates = [f for f in frames if f.is_subject and f.image is not None]
        if not candidates:
            return None
        best = max(candidates, key=lambda f: f.rank)
        assert best.image is not None and best.face is not None and best.quality is not None
        jpeg = await self.engine.in_thread(encode_jpeg, best.image.bgr)
        return BestShot(
            best.index,
            best.time_s,
            best.face,
            best.quality.value,
            jpeg,
            best.image.width,
            best.image.height,
        )
