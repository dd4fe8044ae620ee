"""Verify an answer to a challenge: frames with capture times → per frame (batched by the engine)
the tracked face, its embedding and FaceMesh landmarks → gesture signals → the gestures in order,
one identity, one face, plausible timing, no replay, passive liveness on the best frame.

The client's landmarks are never trusted: the server reads every frame itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from vigil.inference.decisions import distance, is_live, is_match
from vigil.inference.engine import Engine
from vigil.inference.face_quality import face_quality
from vigil.inference.gestures.detectors import (
    Gesture,
    GestureEvidence,
    GestureThresholds,
    Sample,
    detect_sequence,
)
from vigil.inference.gestures.signals import frame_signals
from vigil.inference.media import DecodedImage
from vigil.inference.types import Face, Timings
from vigil.inference.video.replay import ReplayMemory, frame_hash


@dataclass(frozen=True)
class AnswerPolicy:
    thresholds: GestureThresholds
    #: Each gesture within this of the previous one.
    window_s: float
    #: The answer may not span more than this (the challenge's TTL).
    max_duration_s: float
    #: Largest gap between two analysed frames.
    max_frame_gap_s: float
    #: Share of frames that must show the face.
    min_face_share: float = 0.9
    #: A replay: at least this share of the frames seen before in another answer.
    replay_frame_share: float = 0.6


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class AnswerFrame:
    index: int
    time_s: float
    #: Dropped after analysis by a stream (only the best frame keeps its pixels).
    image: DecodedImage | None
    face_count: int = 0
    face: Face | None = None
    embedding: np.ndarray | None = field(default=None, repr=False)
    sample: Sample | None = None
    quality: float = 0.0
    hash: np.ndarray | None = field(default=None, repr=False)


@dataclass
class AnswerVerdict:
    gestures: list[GestureEvidence]
    checks: list[Check]
    liveness_score: float
    liveness_threshold: float
    frames_analysed: int
    frames_sha256: str
    timings: Timings

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gestures) and all(c.passed for c in self.checks)


class FramesDigest:
    """SHA-256 over the analysed frames' pixels, in order, with their sizes and capture times
    (fed frame by frame, so a stream need not keep its frames)."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()

    def add(self, frame: AnswerFrame) -> None:
        assert frame.image is not None
        bgr = frame.image.bgr
        self._digest.update(f"{bgr.shape[1]}x{bgr.shape[0]}@{frame.time_s:.6f};".encode())
        self._digest.update(np.ascontiguousarray(bgr).tobytes())

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def fully_in_view(face: Face, width: int, height: int, margin: float = 0.02) -> bool:
    """The face's box keeps ``margin`` × the image's shorter side from every edge (YuNet clips
    a box cut by the edge onto it, and a box a few pixels from the edge is usually cut too)."""
    x, y, w, h = face.box
    gap = margin * min(width, height)
    return x >= gap and y >= gap and x + w <= width - gap and y + h <= height - gap


def frames_digest(frames: Sequence[AnswerFrame]) -> str:
    digest = FramesDigest()
    for frame in frames:
        digest.add(frame)
    return digest.hexdigest()


class AnswerVerifier:
    def __init__(self, engine: Engine, replay: ReplayMemory) -> None:
        self.engine = engine
        self.replay = replay

    async def analyse(self, frame: AnswerFrame, timings: Timings, deadline: float | None) -> None:
        """Detect the frame's faces; of the largest: embedding, FaceMesh signals, quality."""
        image = frame.image
        assert image is not None
        faces = await self.engine.detect_faces(image, timings, deadline)
        frame.face_count = len(faces)
        frame.hash = await self.engine.in_thread(frame_hash, image.bgr)
        if not faces:
            return
        face = faces[0]
        embedding, mesh, quality = await asyncio.gather(
            self.engine.embedding_of(image, face, timings, deadline),
            self.engine.mesh_of(image, face, timings, deadline),
            self.engine.in_thread(face_quality, image.bgr, face),
        )
        frame.face, frame.embedding, frame.quality = face, embedding, quality.value
        if not fully_in_view(face, image.width, image.height):
            # FaceMesh would read a face cut by the frame's edge from padding: its pose and eyes
            # are unreliable (a still with the forehead cut read pitch jumps of 20°+)
            return
        signals = frame_signals(mesh.points, image.width, image.height)
        frame.sample = Sample(frame.index, frame.time_s, signals)

    async def verify(
        self,
        frames: list[AnswerFrame],
        gestures: Sequence[Gesture],
        policy: AnswerPolicy,
        origin: str,
        media_sha256: str | None = None,
        deadline: float | None = None,
    ) -> AnswerVerdict:
        """Judge ``frames`` (in capture order) as the answer ``origin`` (the challenge id)."""
        timings = Timings()
        started = time.perf_counter()
        await asyncio.gather(*(self.analyse(f, timings, deadline) for f in frames))
        digest = await self.engine.in_thread(frames_digest, frames)
        return await self.conclude(
            frames, gestures, policy, origin, media_sha256, digest, timings, started, deadline
        )

    async def conclude(
        self,
        frames: list[AnswerFrame],
        gestures: Sequence[Gesture],
        policy: AnswerPolicy,
        origin: str,
        media_sha256: str | None,
        digest: str,
        timings: Timings,
        started: float,
        deadline: float | None = None,
        extra_checks: Sequence[Check] = (),
    ) -> AnswerVerdict:
        """The verdict on analysed frames (see :meth:`analyse`)."""
        checks = [
            self._timing(frames, policy),
            self._faces(frames, policy),
            self._identity(frames),
            await self.engine.in_thread(self._replay, frames, origin, media_sha256, policy),
        ]
        samples = [f.sample for f in frames if f.sample is not None]
        found = detect_sequence(gestures, samples, policy.window_s, policy.thresholds)
        score, liveness = await self._liveness(frames, timings, deadline)
        checks.append(liveness)
        checks += extra_checks
        timings.total_ms = (time.perf_counter() - started) * 1000
        return AnswerVerdict(
            found,
            checks,
            score,
            self.engine.config.thresholds.liveness,
            len(frames),
            digest,
            timings,
        )

    @staticmethod
    def _timing(frames: Sequence[AnswerFrame], policy: AnswerPolicy) -> Check:
        times = [f.time_s for f in frames]
        if len(times) < 2:
            return Check("timing", False, f"{len(times)} frame(s); an answer needs a video")
        gaps = np.diff(times)
        if np.any(gaps <= 0):
            at = int(np.argmax(gaps <= 0)) + 1
            return Check("timing", False, f"capture times go backwards at frame {at}")
        span = times[-1] - times[0]
        if span > policy.max_duration_s:
            return Check(
                "timing",
                False,
                f"the answer spans {span:.1f} s; the challenge lived {policy.max_duration_s:.0f} s",
            )
        widest = float(gaps.max())
        if widest > policy.max_frame_gap_s:
            return Check(
                "timing",
                False,
                f"{widest * 1000:.0f} ms between two frames; at most "
                f"{policy.max_frame_gap_s * 1000:.0f} ms",
            )
        return Check(
            "timing", True, f"{len(times)} frames over {span:.2f} s, gaps ≤ {widest * 1000:.0f} ms"
        )

    @staticmethod
    def _faces(frames: Sequence[AnswerFrame], policy: AnswerPolicy) -> Check:
        crowded = [f.index for f in frames if f.face_count > 1]
        if crowded:
            return Check(
                "single_face",
                False,
                f"{len(crowded)} frames show more than one face (first: frame {crowded[0]})",
            )
        with_face = sum(1 for f in frames if f.sample is not None)
        share = with_face / max(1, len(frames))
        if share < policy.min_face_share:
            return Check(
                "single_face",
                False,
                f"a whole face (inside the frame) in {with_face} of {len(frames)} frames; "
                f"{policy.min_face_share:.0%} needed",
            )
        return Check("single_face", True, f"one whole face in {with_face} of {len(frames)} frames")

    def _identity(self, frames: Sequence[AnswerFrame]) -> Check:
        """Every face is the first face's person (embedding distance below the match threshold)."""
        threshold = self.engine.config.thresholds.match_distance
        embedded = [f for f in frames if f.embedding is not None]
        if not embedded:
            return Check("identity", False, "no face to compare")
        first = embedded[0].embedding
        assert first is not None
        apart = [
            (distance(first, f.embedding), f.index) for f in embedded if f.embedding is not None
        ]
        worst, at = max(apart)
        if not is_match(worst, threshold):
            return Check(
                "identity",
                False,
                f"frame {at} shows another person (distance {worst:.3f} to "
                f"the first frame's face; same person below {threshold:.2f})",
            )
        return Check("identity", True, f"one person throughout (largest distance {worst:.3f})")

    def _replay(
        self,
        frames: Sequence[AnswerFrame],
        origin: str,
        media_sha256: str | None,
        policy: AnswerPolicy,
    ) -> Check:
        """An answer is made for its challenge: media or frames that answered another challenge
        are a replay."""
        if media_sha256:
            earlier = self.replay.check_media(media_sha256, origin)
            if earlier is not None:
                return Check("replay", False, "the same video answered another challenge")
        hashes = [f.hash for f in frames if f.hash is not None]
        seen = self.replay.check_frames(hashes, origin)
        if seen.matched >= 3 and seen.share >= policy.replay_frame_share:
            return Check(
                "replay", False, f"{seen.matched} of {seen.total} frames answered another challenge"
            )
        return Check("replay", True, "a fresh answer")

    async def _liveness(
        self, frames: Sequence[AnswerFrame], timings: Timings, deadline: float | None
    ) -> tuple[float, Check]:
        """Passive liveness of the best frame (highest face quality)."""
        threshold = self.engine.config.thresholds.liveness
        candidates = [f for f in frames if f.face is not None and f.image is not None]
        if not candidates:
            return 0.0, Check("liveness", False, "no face to judge")
        best = max(candidates, key=lambda f: f.quality)
        assert best.face is not None and best.image is not None
        score = await self.engine.liveness_of(best.image, best.face, timings, deadline)
        live = is_live(score.score, threshold)
        return score.score, Check(
            "liveness",
            live,
            f"frame {best.index}: real-probability {score.score:.3f} "
            f"({'≥' if live else '<'} {threshold:.2f})",
        )
