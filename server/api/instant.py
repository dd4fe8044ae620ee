"""The Instant (stateless) API: ten-line adapters between the protos and the engine."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import numpy as np

from vigil.inference.catalog import DEFAULT_MODELS, DLIB_RESNET, YUNET
from vigil.inference.decisions import is_live
from vigil.inference.engine import LIVENESS_MODELS, Engine
from vigil.inference.errors import InvalidArgument, VigilError
from vigil.inference.types import Subject, Timings
from vigil.server import __version__
from vigil.server.api import converters as conv
from vigil.server.api.stream_liveness import stream_liveness
from vigil.server.api.video_converters import video_liveness_response
from vigil.server.rpc import Context
from vigil.server.settings import Settings
from vigil.server.video import capture_of, is_video, stream_config, video_liveness
from vigil.v1 import common_pb2, instant_pb2, instant_pb2_grpc, video_pb2


class InstantServicer(instant_pb2_grpc.InstantServicer):
    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self.video = video_liveness(engine, settings)

    async def Detect(
        self,
        request: instant_pb2.DetectRequest,
        context: Context,
    ) -> instant_pb2.DetectResponse:
        data = conv.require_media(request.image, "image")
        image, faces, timings = await self.engine.detect(data, conv.deadline_of(context))
        return instant_pb2.DetectResponse(
            faces=[conv.face_message(f) for f in faces],
            image=conv.image_info_of(image),
            detector=conv.model_ref(YUNET),
            timings=conv.timings_message(timings),
        )

    async def CheckLiveness(
        self,
        request: instant_pb2.LivenessRequest,
        context: Context,
    ) -> instant_pb2.LivenessResponse:
        single = conv.require_single(request.subject_policy)
        data = conv.require_media(request.image, "image")
        deadline = conv.deadline_of(context)
        if is_video(data):
            capture = capture_of(request.capture)
            video = await self.video.analyze(data, capture, None, single, deadline)
            return video_liveness_response(video)
        subject, verdict = await self.engine.liveness(data, single, deadline)
        threshold = self.engine.config.thresholds.liveness
        return instant_pb2.LivenessResponse(
            live=is_live(verdict.score, threshold),
            score=verdict.score,
            threshold=threshold,
            face=conv.face_message(subject.face),
            face_count=subject.face_count,
            models=[
                instant_pb2.LivenessModelScore(
                    model=conv.model_ref(spec), real_probability=verdict.per_model[spec.name]
                )
                for spec in LIVENESS_MODELS
            ],
            detector=conv.model_ref(YUNET),
            image=conv.subject_info(subject),
            timings=conv.timings_message(subject.timings),
        )

    async def StreamLiveness(
        self,
        requests: AsyncIterator[video_pb2.StreamLivenessRequest],
        context: Context,
    ) -> AsyncIterator[video_pb2.StreamLivenessUpdate]:
        config = stream_config(self.settings)
        async for update in stream_liveness(self.video, config, requests):
            yield update

    async def ExtractTemplate(
        self,
        request: instant_pb2.TemplateRequest,
        context: Context,
    ) -> instant_pb2.TemplateResponse:
        single = conv.require_single(request.subject_policy)
        data = conv.require_media(request.image, "image")
        result = await self.engine.embed(data, single, conv.deadline_of(context))
        subject = result.subject
        return instant_pb2.TemplateResponse(
            template=common_pb2.Template(
                values=result.embedding.tolist(),
                model=DLIB_RESNET.name,
                model_version=DLIB_RESNET.version,
            ),
            face=conv.face_message(subject.face),
            face_count=subject.face_count,
            detector=conv.model_ref(YUNET),
            embedder=conv.model_ref(DLIB_RESNET),
            image=conv.subject_info(subject),
            timings=conv.timings_message(subject.timings),
        )

    async def _side(
        self, side: instant_pb2.FaceInput, name: str, single: bool, deadline: float | None
    ) -> tuple[np.ndarray, Subject | None]:
        source = side.WhichOneof("source")
        if source == "template":
            values = conv.template_values(side.template)
            template = side.template
            return self.engine.check_template(values, template.model, template.model_version), None
        if source == "image":
            data = conv.require_media(side.image, f"{name}.image")
            try:
                result = await self.engine.embed(data, single, deadline)
            except VigilError as exc:  # say which side failed, keeping the error's kind
                raise exc.with_message(f"{name}.image: {exc.message}") from exc
            return result.embedding, result.subject
        raise InvalidArgument(f"{name} is required: set {name}.image or {name}.template")

    async def Verify(
        self,
        request: instant_pb2.VerifyRequest,
        context: Context,
    ) -> instant_pb2.VerifyResponse:
        started = time.perf_counter()
        single = conv.require_single(request.subject_policy)
        deadline = conv.deadline_of(context)
        (emb_a, subj_a), (emb_b, subj_b) = await asyncio.gather(
            self._side(request.a, "a", single, deadline),
            self._side(request.b, "b", single, deadline),
        )
        distance, similarity, match = self.engine.compare(emb_a, emb_b)
        timings = Timings()
        for subject in (subj_a, subj_b):
            if subject is not None:
                timings.add(subject.timings)
        timings.total_ms = (time.perf_counter() - started) * 1000
        return instant_pb2.VerifyResponse(
            match=match,
            similarity=similarity,
            distance=distance,
            distance_threshold=self.engine.config.thresholds.match_distance,
            similarity_threshold=0.5,
            metric="euclidean",
            a=conv.verify_side(subj_a),
            b=conv.verify_side(subj_b),
            embedder=conv.model_ref(DLIB_RESNET),
            detector=conv.model_ref(YUNET),
            timings=conv.timings_message(timings),
        )

    async def GetServerInfo(
        self,
        request: instant_pb2.GetServerInfoRequest,
        context: Context,
    ) -> instant_pb2.ServerInfo:
        config = self.engine.config
        running = self.engine.running
        return instant_pb2.ServerInfo(
            version=__version__,
            backend=running.backend if running else config.backend,
            precision=running.precision if running else "",
            models=[
                instant_pb2.ModelInfo(
                    ref=conv.model_ref(spec),
                    task=spec.task,
                    licence=spec.licence,
                    thresholds=spec.thresholds,
                    max_batch_size=self.engine.batchers[spec.name].config.max_batch_size,
                )
                for spec in DEFAULT_MODELS
            ],
            liveness_threshold=config.thresholds.liveness,
            match_distance_threshold=config.thresholds.match_distance,
            max_image_bytes=config.image_limits.max_bytes,
            max_image_pixels=config.image_limits.max_pixels,
        )
