"""Challenges: issue an active-liveness challenge, read it, and judge a recorded answer.

An answer is decoded first (a malformed upload does not burn the challenge), then the challenge
is consumed atomically (single use, not expired, the caller's company), then every sampled frame
is read by the server's own models and the verdict is signed with the challenge's nonce and the
frames' hash.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta

from vigil.inference.errors import InvalidArgument
from vigil.inference.gestures.detectors import Gesture
from vigil.inference.gestures.verify import (
    AnswerFrame,
    AnswerPolicy,
    AnswerVerdict,
    AnswerVerifier,
    Check,
    FramesDigest,
)
from vigil.inference.types import Timings
from vigil.inference.video.decode import decode_video
from vigil.inference.video.signals import capture_signals
from vigil.server.api import challenges_converters as cconv
from vigil.server.api import converters as conv
from vigil.server.api.stream_liveness import decode_frame
from vigil.server.gestures import answer_policy, answer_sampling
from vigil.server.rpc import Context
from vigil.server.security.principal import acting_company
from vigil.server.security.state import Security
from vigil.server.settings import Settings
from vigil.server.video import capture_of, replay_memory_for, video_config
from vigil.storage import challenges
from vigil.storage.tables import Challenge
from vigil.v1 import challenges_pb2, challenges_pb2_grpc

MAX_ID_CHARS = 128
#: A stream's capture span may exceed its arrival span by this much (the first frame's upload).
STREAM_PACE_SLACK_S = 1.0


def _challenge_id(value: str) -> str:
    if not value:
        raise InvalidArgument("challenge_id is required")
    if len(value) > MAX_ID_CHARS:
        raise InvalidArgument(f"challenge_id is {len(value)} characters; ids are at most 128")
    return value


class ChallengesServicer(challenges_pb2_grpc.ChallengesServicer):
    def __init__(self, security: Security) -> None:
        self.security = security
        self.app = security.app
        settings = self.app.settings
        self.default_gestures = cconv.parse_gesture_setting(settings.challenge_gestures)
        self.verifier = AnswerVerifier(
            self.app.engine, replay_memory_for(self.app.engine, settings)
        )

    @property
    def settings(self) -> Settings:
        return self.app.settings

    async def CreateChallenge(
        self, request: challenges_pb2.CreateChallengeRequest, context: Context
    ) -> challenges_pb2.Challenge:
        allowed = self.default_gestures
        if request.allowed:
            asked = cconv.gestures_of(request.allowed)
            outside = sorted({g.value for g in asked} - {g.value for g in self.default_gestures})
            if outside:
                raise InvalidArgument(
                    f"allowed names {outside}, which this server does not issue "
                    f"(VIGIL_CHALLENGE_GESTURES: {', '.join(g.value for g in allowed)})"
                )
            allowed = asked
        company = acting_company()
        window_ms = round(self.settings.challenge_gesture_window_s * 1000)
        ttl = timedelta(seconds=self.settings.challenge_ttl_s)
        row = await self.app.db(
            lambda s: challenges.create_challenge(
                [g.value for g in allowed],
                request.count,
                window_ms=window_ms,
                ttl=ttl,
                company_id=company,
                session=s,
            )
        )
        return cconv.challenge_message(row)

    async def GetChallenge(
        self, request: challenges_pb2.GetChallengeRequest, context: Context
    ) -> challenges_pb2.Challenge:
        challenge_id = _challenge_id(request.challenge_id)
        company = acting_company()
        row = await self.app.db(
            lambda s: challenges.get_challenge(challenge_id, company_id=company, session=s)
        )
        return cconv.challenge_message(row)

    async def AnswerChallenge(
        self, request: challenges_pb2.AnswerChallengeRequest, context: Context
    ) -> challenges_pb2.ChallengeVerdict:
        challenge_id = _challenge_id(request.challenge_id)
        data = conv.require_media(request.video, "video")
        company = acting_company()
        deadline = conv.deadline_of(context)
        engine = self.app.engine
        # the challenge must exist for this company before any decoding
        await self.app.db(
            lambda s: challenges.get_challenge(challenge_id, company_id=company, session=s)
        )
        limits, sampling = answer_sampling(self.settings)
        limit = engine.config.max_inflight_images
        admitted = min(sampling.count, limit) if limit else sampling.count
        async with engine.admission(admitted):
            video = await engine.in_thread(decode_video, data, limits, sampling)
            row = await self._consume(challenge_id, company)
            policy = self._policy(row)
            frames = [AnswerFrame(f.index, f.time_s, f.image) for f in video.frames]
            verdict = await self.verifier.verify(
                frames,
                [Gesture(name) for name in row.gestures],
                policy,
                origin=challenge_id,
                media_sha256=video.info.sha256,
                deadline=deadline,
            )
        verdict = replace(verdict, checks=[*verdict.checks, *self._capture_checks(request)])
        return await self._signed(row, company, verdict)

    def _capture_checks(self, request: challenges_pb2.AnswerChallengeRequest) -> list[Check]:
        """The answer's capture metadata as checks: the same virtual-camera and timing signals
        (and VIGIL_DECLINE_ON_* policy) as the Instant API's CaptureInfo; a signal that declines
        fails its check. None without capture metadata."""
        if not request.HasField("capture"):
            return []
        capture = capture_of(request.capture)
        policy = video_config(self.settings).policy
        signals = capture_signals(
            policy, capture.camera_label, capture.device, capture.timestamps_ms, None
        )
        return [Check(s.name, not s.declines, s.detail) for s in signals]

    async def StreamAnswer(
        self,
        requests: AsyncIterator[challenges_pb2.StreamAnswerRequest],
        context: Context,
    ) -> challenges_pb2.ChallengeVerdict:
        """Frames analysed one at a time as they arrive (one in flight: the client's stream
        waits, gRPC flow control slows it); only the best frame keeps its pixels."""
        company = acting_company()
        deadline = conv.deadline_of(context)
        engine = self.app.engine
        limits = engine.config.image_limits
        _, sampling = answer_sampling(self.settings)
        min_gap_s = 0.9 / self.settings.challenge_sample_fps
        row: Challenge | None = None
        frames: list[AnswerFrame] = []
        digest = FramesDigest()
        timings = Timings()
        started = time.perf_counter()
        received: list[float] = []
        skipped = 0
        best: AnswerFrame | None = None
        async with engine.admission(1):
            async for request in requests:
                kind = request.WhichOneof("message")
                if kind == "challenge_id":
                    if row is not None:
                        raise InvalidArgument(
                            "challenge_id must be the stream's first message, once"
                        )
                    row = await self._consume(_challenge_id(request.challenge_id), company)
                    continue
                if kind != "frame":
                    raise InvalidArgument("each message must be a challenge_id or a frame")
                if row is None:
                    raise InvalidArgument("the first message must carry the challenge_id")
                frame = request.frame
                if frame.WhichOneof("pixels") is None:
                    raise InvalidArgument("frame.encoded or frame.raw is required")
                time_s = frame.capture_time_ms / 1000
                if frames and 0 <= time_s - frames[-1].time_s < min_gap_s:
                    skipped += 1  # the camera is faster than the analysis needs
                    continue
                if len(frames) >= sampling.count:
                    raise InvalidArgument(
                        f"more than {sampling.count} frames (VIGIL_CHALLENGE_SAMPLE_FPS × "
                        "VIGIL_CHALLENGE_TTL_S); end the stream sooner"
                    )
                received.append(time.monotonic())
                image = await engine.in_thread(decode_frame, frame, limits)
                answer = AnswerFrame(len(frames) + skipped, time_s, image)
                await self.verifier.analyse(answer, timings, deadline)
                await engine.in_thread(digest.add, answer)
                if answer.face is not None and (best is None or answer.quality > best.quality):
                    if best is not None:
                        best.image = None
                    best = answer
                elif answer is not best:
                    answer.image = None
                frames.append(answer)
            if row is None:
                raise InvalidArgument("the stream carried no challenge_id")
            captured = frames[-1].time_s - frames[0].time_s if frames else 0.0
            arrived = received[-1] - received[0] if received else 0.0
            # a recording sent faster than it was filmed: capture times the camera could not have
            pace = Check(
                "pace",
                captured <= arrived + STREAM_PACE_SLACK_S,
                f"{captured:.2f} s of capture arrived in {arrived:.2f} s",
            )
            verdict = await self.verifier.conclude(
                frames,
                [Gesture(name) for name in row.gestures],
                self._policy(row),
                row.id,
                None,
                digest.hexdigest(),
                timings,
                started,
                deadline,
                extra_checks=[pace],
            )
        return await self._signed(row, company, verdict)

    async def _consume(self, challenge_id: str, company: str) -> Challenge:
        return await self.app.db(
            lambda s: challenges.consume(challenge_id, company_id=company, session=s)
        )

    def _policy(self, row: Challenge) -> AnswerPolicy:
        return answer_policy(self.settings, row.gesture_window_ms / 1000)

    async def _signed(
        self, row: Challenge, company: str, verdict: AnswerVerdict
    ) -> challenges_pb2.ChallengeVerdict:
        """The verdict message, its outcome recorded on the challenge, and its signed token."""
        challenge_id = row.id
        message = cconv.verdict_message(challenge_id, verdict)
        await self.app.db(
            lambda s: challenges.record_outcome(
                challenge_id, message.resolution, company_id=company, session=s
            )
        )
        claims = {
            "company": company,
            "challenge": challenge_id,
            "nonce": row.nonce,
            "gestures": list(row.gestures),
            "resolution": message.resolution,
            "frames_sha256": verdict.frames_sha256,
        }
        ttl = timedelta(seconds=self.settings.verdict_ttl_s)
        token, expires = self.security.signer.sign(claims, ttl, "challenge_verdict")
        message.verdict_token = token
        message.verdict_expires_at.CopyFrom(conv.stamp(expires))
        message.key_id = self.security.signer.key_id
        return message
