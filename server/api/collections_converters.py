"""Conversions of the Collections API: rows to protos, faces to and from their stored JSON."""

from __future__ import annotations

from vigil.inference.decisions import is_match, similarity
from vigil.inference.errors import InvalidArgument
from vigil.server.api.converters import chosen_threshold, face_message, timestamp
from vigil.storage.face_index import SearchHit as IndexHit
from vigil.storage.results import face_record
from vigil.storage.tables import Collection, CollectionFace
from vigil.v1 import collections_pb2

DEFAULT_TOP_K = 5
MAX_TOP_K = 100


def collection_message(collection: Collection) -> collections_pb2.Collection:
    return collections_pb2.Collection(
        id=collection.id,
        name=collection.name,
        meta=collection.meta,
        face_count=collection.face_count,
        model=collection.model_name,
        model_version=collection.model_version,
        created_at=timestamp(collection.created_at),
    )


def collection_face_message(
    face: CollectionFace, collection_name: str
) -> collections_pb2.CollectionFace:
    return collections_pb2.CollectionFace(
        id=face.id,
        collection=collection_name,
        person_label=face.person_label,
        meta=face.meta,
        source_media_id=face.source_media_id or "",
        model=face.model_name,
        model_version=face.model_version,
        created_at=timestamp(face.created_at),
        face=face_message(stored) if (stored := face_record(face.face)) is not None else None,
    )


def search_hit(
    hit: IndexHit, face: CollectionFace, collection_name: str, threshold: float
) -> collections_pb2.SearchHit:
    return collections_pb2.SearchHit(
        face=collection_face_message(face, collection_name),
        distance=hit.distance,
        similarity=similarity(hit.distance, threshold),
        match=is_match(hit.distance, threshold),
    )


def require_collection(name: str) -> str:
    if not name:
        raise InvalidArgument("collection is required")
    return name


def top_k_of(requested: int) -> int:
    """SearchRequest.top_k: 1..100, 0 meaning the default (5)."""
    if requested == 0:
        return DEFAULT_TOP_K
    if not 1 <= requested <= MAX_TOP_K:
        raise InvalidArgument(f"top_k is {requested}; it must be 1..{MAX_TOP_K} (0: default)")
    return requested


def threshold_of(requested: float, default: float) -> float:
    """SearchRequest.threshold: a positive distance up to MAX_DISTANCE_THRESHOLD, 0 meaning the
    server's default."""
    if requested == 0:
        return default
    return chosen_threshold(requested, False, "threshold")


def min_sequence_of(requested: int) -> int:
    """SearchRequest.min_sequence: a sequence number a write returned, 0 for none."""
    if requested < 0:
        raise InvalidArgument(f"min_sequence is {requested}; it must not be negative (0: none)")
    return requested
