"""Runs one analysis on the engine and says what to write: Oz's semantics for each type.

The runner reads media bytes from the blob store and never writes; the worker writes its
outcome in one transaction (see ``vigil.storage.analyses.complete``). What it concludes is typed
(``vigil.storage.results``); the decisions "live" and "match" are ``vigil.inference.decisions``'.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np
from sqlmodel import Session

from vigil.inference.catalog import DLIB_RESNET, MINIFASNET_V1SE, MINIFASNET_V2, YUNET, ModelSpec
from vigil.inference.decisions import distance, is_live, is_match, similarity
from vigil.inference.errors import VigilError
from vigil.server.context import AppContext
from vigil.server.jobs.gestures import GestureCheck
from vigil.server.jobs.video import video_best, video_liveness_result
from vigil.server.video import video_liveness
from vigil.storage.analyses import aggregate
from vigil.storage.face_index import SearchHit
from vigil.storage.results import (
    AnalysisState,
    AnalysisType,
    FaceRecord,
    Match,
    MediaResult,
    ModelRef,
    Resolution,
    StoredResult,
)
from vigil.storage.tables import Analysis, Media

SELFIE_PREFIXES = ("photo_selfie", "video_selfie")
ID_BACK = "photo_id_back"
#: BLACKLIST: watch-list candidates reported per face.
BLACKLIST_TOP_K = 5


@dataclass(frozen=True)
class BestShotOutput:
    """BEST_SHOT: the image media to create from ``source``, tagged best_shot."""

    source: Media
    #: A video's best frame as JPEG (a new blob); None copies the source image's blob.
    jpeg: bytes | None = None


@dataclass(frozen=True)
class Outcome:
    """What an analysis concluded: its state and resolution, and the results to store."""

    state: AnalysisState
    resolution: Resolution
    stored: StoredResult
    best_shot: BestShotOutput | None = None


def _ref(spec: ModelSpec) -> ModelRef:
    return ModelRef(name=spec.name, version=spec.version, sha256=spec.sha256)


def _failed(message: str, stored: StoredResult | None = None) -> Outcome:
    stored = (stored or StoredResult()).model_copy(update={"error": message})
    return Outcome(AnalysisState.FAILED, Resolution.FAILED, stored)


def _is_selfie(media: Media) -> bool:
    return any(tag.startswith(SELFIE_PREFIXES) for tag in media.tags)


def _finish(results: list[MediaResult], meta: StoredResult) -> Outcome:
    """FINISHED with the aggregate resolution, unless every media failed with an error."""
    stored = meta.model_copy(update={"results": results})
    if results and all(r.error and r.resolution == Resolution.FAILED for r in results):
        return _failed("; ".join(sorted({r.error for r in results})), stored)
    resolution = aggregate([r.resolution for r in results]) or Resolution.FAILED
    return Outcome(AnalysisState.FINISHED, Resolution(resolution), stored)


@dataclass(frozen=True)
class _Found:
    """A media with a face: its embedding and the face."""

    media: Media
    embedding: np.ndarray
    face: FaceRecord


class AnalysisRunner:
    def __init__(self, app: AppContext) -> None:
        self.app = app
        self.thresholds = app.engine.config.thresholds
        self.video = video_liveness(app.engine, app.settings)
        self.gestures = GestureCheck(app.engine, app.settings)
        self._handlers: dict[str, Callable[[Analysis, list[Media]], Awaitable[Outcome]]] = {
            AnalysisType.LIVENESS: self.liveness,
            AnalysisType.BIOMETRY: self.biometry,
            AnalysisType.BLACKLIST: self.blacklist,
            AnalysisType.BEST_SHOT: self.best_shot,
        }

    async def run(self, analysis: Analysis, media: list[Media]) -> Outcome:
        handler = self._handlers.get(analysis.type)
        if handler is None:
            return _failed(f"unknown analysis type {analysis.type}")
        if not media:
            return _failed("the folder has no media")
        return await handler(analysis, media)

    async def _bytes(self, media: Media) -> bytes:
        return await self.app.io(self.app.blobs.get, media.blob_key)

    def _threshold(self, analysis: Analysis, default: float) -> float:
        """The analysis's own threshold when it asked for one, else the server's."""
        return float(analysis.params.get("threshold", default))

    async def liveness(self, analysis: Analysis, media: list[Media]) -> Outcome:
        threshold = self._threshold(analysis, self.thresholds.liveness)
        targets = [m for m in media if _is_selfie(m)] or [
            m for m in media if not any(t.startswith("photo_id") for t in m.tags)
        ]
        meta = StoredResult(
            thresholds={"liveness": threshold},
            models=[_ref(YUNET), _ref(MINIFASNET_V2), _ref(MINIFASNET_V1SE)],
        )
        if not targets:
            return _failed(
                "no selfie media in the folder (tag photo_selfie or video_selfie_*)", meta
            )
        results: list[MediaResult] = []
        for item in targets:
            if item.media_type == "VIDEO":
                data = await self._bytes(item)
                result = await video_liveness_result(self.video, item, data, threshold)
                results.append(await self.gestures.add_to(result, item, data))
                continue
            try:
                data = await self._bytes(item)
                subject, verdict = await self.app.engine.liveness(data, admit=False)
            except VigilError as exc:
                # An unreadable or faceless selfie cannot pass a liveness check.
                results.append(
                    MediaResult(media_id=item.id, resolution=Resolution.DECLINED, error=exc.message)
                )
                continue
            results.append(
                MediaResult(
                    media_id=item.id,
                    resolution=Resolution.SUCCESS
                    if is_live(verdict.score, threshold)
                    else Resolution.DECLINED,
                    score=verdict.score,
                    face=FaceRecord.of(subject.face),
                    face_count=subject.face_count,
                )
            )
        return _finish(results, meta)

    async def _embeddings(self, media: list[Media]) -> tuple[list[_Found], list[MediaResult]]:
        """Each media with a face and its embedding; per-media failures for the rest."""
        found: list[_Found] = []
        skipped: list[MediaResult] = []
        for item in media:
            try:
                data = await self._bytes(item)
                if item.media_type == "VIDEO":  # a video's face is its best shot's
                    _, embedding, face = await video_best(self.video, data)
                    found.append(_Found(item, embedding, face))
                    continue
                result = await self.app.engine.embed(data, admit=False)
            except VigilError as exc:
                skipped.append(MediaResult.failed(item.id, exc.message))
                continue
            found.append(_Found(item, result.embedding, FaceRecord.of(result.subject.face)))
        return found, skipped

    async def biometry(self, analysis: Analysis, media: list[Media]) -> Outcome:
        threshold = self._threshold(analysis, self.thresholds.match_distance)
        grey = self.thresholds.biometry_grey_zone
        meta = StoredResult(
            thresholds={"distance": threshold, "grey_zone": grey},
            models=[_ref(YUNET), _ref(DLIB_RESNET)],
        )
        faces, skipped = await self._embeddings([m for m in media if ID_BACK not in m.tags])
        if len(faces) < 2:
            reasons = "; ".join(f"{s.media_id}: {s.error}" for s in skipped)
            return _failed(
                f"BIOMETRY needs at least two media with a face; found {len(faces)}"
                + (f" ({reasons})" if reasons else ""),
                meta.model_copy(update={"results": skipped}),
            )
        pairs: list[MediaResult] = []
        for a, b in itertools.combinations(faces, 2):
            apart = distance(a.embedding, b.embedding)
            if is_match(apart, threshold):
                resolution = Resolution.SUCCESS
            elif is_match(apart, threshold + grey):
                resolution = Resolution.OPERATOR_REQUIRED
            else:
                resolution = Resolution.DECLINED
            pairs.append(
                MediaResult(
                    media_id=a.media.id,
                    other_media_id=b.media.id,
                    distance=apart,
                    score=similarity(apart, threshold),
                    resolution=resolution,
                    face=a.face,
                )
            )
        decisive = max(pairs, key=lambda pair: pair.distance)
        stored = meta.model_copy(update={"results": pairs + skipped, "decisive": decisive})
        return Outcome(AnalysisState.FINISHED, decisive.resolution, stored)

    async def blacklist(self, analysis: Analysis, media: list[Media]) -> Outcome:
        threshold = self._threshold(analysis, self.thresholds.search_distance)
        collection = str(analysis.params["collection"])
        meta = StoredResult(
            thresholds={"distance": threshold}, models=[_ref(YUNET), _ref(DLIB_RESNET)]
        )
        faces, skipped = await self._embeddings(media)
        if not faces:
            return _failed(
                "no face to search in the folder's media",
                meta.model_copy(update={"results": skipped}),
            )
        results: list[MediaResult] = []
        for found in faces:

            def search(session: Session, query: np.ndarray = found.embedding) -> list[SearchHit]:
                return self.app.face_index.search(
                    analysis.company_id, collection, query, BLACKLIST_TOP_K, session=session
                )

            try:
                hits = await self.app.db(search)
            except VigilError as exc:
                return _failed(f"collection {collection}: {exc.message}", meta)
            matches = [
                Match(
                    face_id=hit.face_id,
                    person_label=hit.person_label,
                    distance=hit.distance,
                    similarity=similarity(hit.distance, threshold),
                )
                for hit in hits
            ]
            on_list = any(is_match(hit.distance, threshold) for hit in hits)
            results.append(
                MediaResult(
                    media_id=found.media.id,
                    resolution=Resolution.DECLINED if on_list else Resolution.SUCCESS,
                    face=found.face,
                    matches=matches,
                    score=matches[0].similarity if matches else 0.0,
                    distance=matches[0].distance if matches else 0.0,
                )
            )
        return _finish(results + skipped, meta)

    async def best_shot(self, analysis: Analysis, media: list[Media]) -> Outcome:
        """The best face image. Videos first (their best frame by face quality × liveness, saved
        as a new JPEG); else the images: detection confidence × face size (saturating at 224 px).
        """
        candidates = [m for m in media if "best_shot" not in m.tags]
        videos = [m for m in candidates if m.media_type == "VIDEO"]
        models = [_ref(YUNET)]
        if videos:
            models += [_ref(MINIFASNET_V2), _ref(MINIFASNET_V1SE), _ref(DLIB_RESNET)]
        meta = StoredResult(models=models)
        pool = videos or [m for m in candidates if m.media_type == "IMAGE"]
        preferred = [m for m in pool if _is_selfie(m)] or pool
        best: tuple[float, Media, FaceRecord, bytes | None] | None = None
        errors: list[MediaResult] = []
        for item in preferred:
            try:
                data = await self._bytes(item)
                if item.media_type == "VIDEO":
                    shot, _, face = await video_best(self.video, data)
                    if best is None or shot.quality > best[0]:
                        best = (shot.quality, item, face, shot.jpeg)
                    continue
                _, faces, _ = await self.app.engine.detect(data, admit=False)
            except VigilError as exc:
                errors.append(MediaResult.failed(item.id, exc.message))
                continue
            if not faces:
                errors.append(MediaResult.failed(item.id, "no face"))
                continue
            top = faces[0]
            quality = top.score * min(1.0, math.sqrt(top.area) / 224.0)
            if best is None or quality > best[0]:
                best = (quality, item, FaceRecord.of(top), None)
        if best is None:
            return _failed("no media with a face", meta.model_copy(update={"results": errors}))
        quality, item, face, jpeg = best
        result = MediaResult(
            media_id=item.id, resolution=Resolution.SUCCESS, score=quality, face=face
        )
        stored = meta.model_copy(update={"results": [result, *errors], "decisive": result})
        return Outcome(
            AnalysisState.FINISHED, Resolution.SUCCESS, stored, BestShotOutput(item, jpeg)
        )
