"""Runs one analysis on the engine and says what to write: Oz's semantics for each type.

The runner reads media bytes from the blob store and never writes; the worker writes its
outcome in one transaction (see ``vigil.storage.analyses.complete``).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vigil.inference.catalog import DLIB_RESNET, MINIFASNET_V1SE, MINIFASNET_V2, YUNET
from vigil.inference.errors import VigilError
from vigil.inference.models import similarity_from_distance
from vigil.server.api.folders_converters import face_json
from vigil.server.context import AppContext
from vigil.server.jobs.video import video_best, video_liveness_result
from vigil.server.video import video_liveness
from vigil.storage.analyses import aggregate
from vigil.storage.tables import Analysis, Media

SELFIE_PREFIXES = ("photo_selfie", "video_selfie")
ID_BACK = "photo_id_back"


@dataclass
class Outcome:
    """What an analysis concluded: state, resolution, and the columns to write."""

    state: str
    resolution: str
    results: list[dict[str, Any]] = field(default_factory=list)
    decisive: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    models: list[dict[str, str]] = field(default_factory=list)
    error: str = ""
    #: BEST_SHOT: the media to create (copy of ``source``'s blob), tagged best_shot.
    best_shot_of: Media | None = None
    #: BEST_SHOT of a video: the new image's bytes (JPEG of the best frame), stored as a new blob.
    best_shot_jpeg: bytes | None = None


def _ref(spec: Any) -> dict[str, str]:
    return {"name": spec.name, "version": spec.version, "sha256": spec.sha256}


def _failed(message: str, **extra: Any) -> Outcome:
    return Outcome(state="FAILED", resolution="FAILED", error=message, **extra)


def _is_selfie(media: Media) -> bool:
    return any(tag.startswith(SELFIE_PREFIXES) for tag in media.tags)


def _finish(results: list[dict[str, Any]], **extra: Any) -> Outcome:
    """FINISHED with the aggregate resolution, unless every media failed with an error."""
    if results and all(r.get("error") and r["resolution"] == "FAILED" for r in results):
        return _failed("; ".join(sorted({r["error"] for r in results})), results=results, **extra)
    return Outcome(
        "FINISHED", aggregate([r["resolution"] for r in results]) or "FAILED", results, **extra
    )


class AnalysisRunner:
    def __init__(self, app: AppContext) -> None:
        self.app = app
        self.settings = app.settings
        self.video = video_liveness(app.engine, app.settings)

    async def run(self, analysis: Analysis, media: list[Media]) -> Outcome:
        handler = {
            "LIVENESS": self.liveness,
            "BIOMETRY": self.biometry,
            "BLACKLIST": self.blacklist,
            "BEST_SHOT": self.best_shot,
        }.get(analysis.type)
        if handler is None:
            return _failed(f"unknown analysis type {analysis.type}")
        if not media:
            return _failed("the folder has no media")
        return await handler(analysis, media)

    async def _bytes(self, media: Media) -> bytes:
        return await self.app.io(self.app.blobs.get, media.blob_key)

    async def liveness(self, analysis: Analysis, media: list[Media]) -> Outcome:
        threshold = float(analysis.params.get("threshold", self.settings.liveness_threshold))
        targets = [m for m in media if _is_selfie(m)] or [
            m for m in media if not any(t.startswith("photo_id") for t in m.tags)
        ]
        meta: dict[str, Any] = {
            "thresholds": {"liveness": threshold},
            "models": [_ref(YUNET), _ref(MINIFASNET_V2), _ref(MINIFASNET_V1SE)],
        }
        if not targets:
            return _failed(
                "no selfie media in the folder (tag photo_selfie or video_selfie_*)", **meta
            )
        results: list[dict[str, Any]] = []
        for item in targets:
            result: dict[str, Any] = {"media_id": item.id}
            if item.media_type == "VIDEO":
                data = await self._bytes(item)
                results.append(await video_liveness_result(self.video, item, data, threshold))
                continue
            try:
                subject, verdict = await self.app.engine.liveness(await self._bytes(item))
            except VigilError as exc:
                # An unreadable or faceless selfie cannot pass a liveness check.
                results.append({**result, "resolution": "DECLINED", "error": exc.message})
                continue
            live = verdict.score >= threshold
            results.append(
                {
                    **result,
                    "resolution": "SUCCESS" if live else "DECLINED",
                    "score": verdict.score,
                    "face": face_json(subject.face),
                    "face_count": subject.face_count,
                }
            )
        return _finish(results, **meta)

    async def _embeddings(
        self, media: list[Media]
    ) -> tuple[list[tuple[Media, np.ndarray, dict[str, Any]]], list[dict[str, Any]]]:
        """(media, embedding, face) for each image with a face; per-media errors for the rest."""
        found: list[tuple[Media, np.ndarray, dict[str, Any]]] = []
        skipped: list[dict[str, Any]] = []
        for item in media:
            try:
                if item.media_type == "VIDEO":  # a video's face is its best shot's
                    _, embedding, face = await video_best(self.video, await self._bytes(item))
                    found.append((item, embedding, face))
                    continue
                result = await self.app.engine.embed(await self._bytes(item))
            except VigilError as exc:
                skipped.append({"media_id": item.id, "resolution": "FAILED", "error": exc.message})
                continue
            found.append((item, result.embedding, face_json(result.subject.face)))
        return found, skipped

    async def biometry(self, analysis: Analysis, media: list[Media]) -> Outcome:
        threshold = float(analysis.params.get("threshold", self.settings.match_distance_threshold))
        grey = self.settings.biometry_grey_zone
        meta: dict[str, Any] = {
            "thresholds": {"distance": threshold, "grey_zone": grey},
            "models": [_ref(YUNET), _ref(DLIB_RESNET)],
        }
        faces, skipped = await self._embeddings([m for m in media if ID_BACK not in m.tags])
        if len(faces) < 2:
            reasons = "; ".join(f"{s['media_id']}: {s['error']}" for s in skipped)
            return _failed(
                f"BIOMETRY needs at least two media with a face; found {len(faces)}"
                + (f" ({reasons})" if reasons else ""),
                results=skipped,
                **meta,
            )
        pairs: list[dict[str, Any]] = []
        for (a, emb_a, face_a), (b, emb_b, _) in itertools.combinations(faces, 2):
            distance = float(np.linalg.norm(emb_a - emb_b))
            if distance < threshold:
                resolution = "SUCCESS"
            elif distance < threshold + grey:
                resolution = "OPERATOR_REQUIRED"
            else:
                resolution = "DECLINED"
            pairs.append(
                {
                    "media_id": a.id,
                    "other_media_id": b.id,
                    "distance": distance,
                    "score": similarity_from_distance(distance, threshold),
                    "resolution": resolution,
                    "face": face_a,
                }
            )
        decisive = max(pairs, key=lambda pair: pair["distance"])
        return Outcome(
            "FINISHED", decisive["resolution"], pairs + skipped, decisive=decisive, **meta
        )

    async def blacklist(self, analysis: Analysis, media: list[Media]) -> Outcome:
        threshold = float(analysis.params.get("threshold", self.settings.search_threshold))
        collection = analysis.params["collection"]
        meta: dict[str, Any] = {
            "thresholds": {"distance": threshold},
            "models": [_ref(YUNET), _ref(DLIB_RESNET)],
        }
        faces, skipped = await self._embeddings(media)
        if not faces:
            return _failed("no face to search in the folder's media", results=skipped, **meta)
        results: list[dict[str, Any]] = []
        for item, embedding, face in faces:

            def search(session: Any, query: np.ndarray = embedding) -> list[Any]:
                return list(
                    self.app.face_index.search(
                        analysis.company_id, collection, query, 5, session=session
                    )
                )

            try:
                hits = await self.app.db(search)
            except VigilError as exc:
                return _failed(f"collection {collection}: {exc.message}", **meta)
            matches = [
                {
                    "face_id": hit.face_id,
                    "person_label": hit.person_label,
                    "distance": hit.distance,
                    "similarity": similarity_from_distance(hit.distance, threshold),
                }
                for hit in hits
            ]
            on_list = any(hit.distance < threshold for hit in hits)
            results.append(
                {
                    "media_id": item.id,
                    "resolution": "DECLINED" if on_list else "SUCCESS",
                    "face": face,
                    "matches": matches,
                    "score": matches[0]["similarity"] if matches else 0.0,
                    "distance": matches[0]["distance"] if matches else 0.0,
                }
            )
        return _finish(results + skipped, **meta)

    async def best_shot(self, analysis: Analysis, media: list[Media]) -> Outcome:
        """The best face image. Videos first (their best frame by face quality × liveness, saved
        as a new JPEG); else the images: detection confidence × face size (saturating at 224 px).
        """
        meta: dict[str, Any] = {"models": [_ref(YUNET)]}
        candidates = [m for m in media if "best_shot" not in m.tags]
        videos = [m for m in candidates if m.media_type == "VIDEO"]
        if videos:
            meta["models"] += [_ref(MINIFASNET_V2), _ref(MINIFASNET_V1SE), _ref(DLIB_RESNET)]
        pool = videos or [m for m in candidates if m.media_type == "IMAGE"]
        preferred = [m for m in pool if _is_selfie(m)] or pool
        best: tuple[float, Media, dict[str, Any], bytes | None] | None = None
        errors = []
        for item in preferred:
            try:
                if item.media_type == "VIDEO":
                    shot, _, face = await video_best(self.video, await self._bytes(item))
                    if best is None or shot.quality > best[0]:
                        best = (shot.quality, item, face, shot.jpeg)
                    continue
                _, faces, _ = await self.app.engine.detect(await self._bytes(item))
            except VigilError as exc:
                errors.append({"media_id": item.id, "resolution": "FAILED", "error": exc.message})
                continue
            if not faces:
                errors.append({"media_id": item.id, "resolution": "FAILED", "error": "no face"})
                continue
            top = faces[0]
            quality = top.score * min(1.0, math.sqrt(top.area) / 224.0)
            if best is None or quality > best[0]:
                best = (quality, item, face_json(top), None)
        if best is None:
            return _failed("no media with a face", results=errors, **meta)
        quality, item, face, jpeg = best
        result = {"media_id": item.id, "resolution": "SUCCESS", "score": quality, "face": face}
        return Outcome(
            "FINISHED",
            "SUCCESS",
            [result, *errors],
            decisive=result,
            best_shot_of=item,
            best_shot_jpeg=jpeg,
            **meta,
        )
