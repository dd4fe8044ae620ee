"""Collections (watch-lists) and their faces. Every function is scoped to one company.

A face's embedding is stored as float32 little-endian bytes with the name and version of the model
that made it; a collection accepts only embeddings of its own model. Every change bumps the
collection's ``revision`` and appends to the change log (``storage.face_changes``) in the same
transaction, so each replica's in-memory index (``storage.face_index``) applies it as one row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import numpy as np
from sqlalchemy import CursorResult, and_, delete, or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from vigil.inference.catalog import DLIB_RESNET
from vigil.inference.errors import AlreadyExists, InvalidArgument, InvalidTemplate
from vigil.storage import face_changes
from vigil.storage.common import decode_page_token, encode_page_token, not_found, validate_meta
from vigil.storage.results import FaceRecord
from vigil.storage.tables import Collection, CollectionFace

#: Collections are made for the server's embedding model.
MODEL_NAME = DLIB_RESNET.name
MODEL_VERSION = DLIB_RESNET.version
EMBEDDING_SIZE = int(DLIB_RESNET.outputs[0].shape[-1] or 128)
MAX_LABEL = 200
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_DTYPE = np.dtype("<f4")


def validate_name(name: str) -> str:
    if not _NAME.match(name):
        raise InvalidArgument(
            f"collection name {name[:80]!r} is invalid: 1-64 characters of letters, digits, '_.-'"
        )
    return name


def encode_embedding(values: np.ndarray) -> bytes:
    return np.ascontiguousarray(values, dtype=_DTYPE).tobytes()


def check_model(collection: Collection, model_name: str, model_version: str) -> None:
    """A collection compares templates of its own model only (InvalidArgument otherwise)."""
    if (model_name, model_version) != (collection.model_name, collection.model_version):
        raise InvalidTemplate(
            f"template was made by {model_name}:{model_version}; collection {collection.name} "
            f"holds {collection.model_name}:{collection.model_version} templates only"
        )


def check_embedding(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float32)
    if values.shape != (EMBEDDING_SIZE,):
        raise InvalidTemplate(
            f"template has {values.size} values; collection templates have {EMBEDDING_SIZE}"
        )
    if not np.all(np.isfinite(values)):
        raise InvalidTemplate("template holds NaN or infinite values")
    return values


# ---- collections -------------------------------------------------------------------------------


def create_collection(
    name: str,
    meta: dict[str, str],
    *,
    company_id: str,
    session: Session,
    model_name: str = MODEL_NAME,
    model_version: str = MODEL_VERSION,
) -> Collection:
    validate_name(name)
    meta = validate_meta(meta)
    existing = session.exec(
        select(Collection.id).where(Collection.company_id == company_id, Collection.name == name)
    ).first()
    if existing is not None:
        raise AlreadyExists(f"collection {name} already exists")
    collection = Collection(
        company_id=company_id,
        name=name,
        meta=meta,
        model_name=model_name,
        model_version=model_version,
    )
    session.add(collection)
    try:
        session.flush()
    except IntegrityError:  # created by a concurrent call since the check above
        raise AlreadyExists(f"collection {name} already exists") from None
    return collection


def get_collection(name: str, *, company_id: str, session: Session) -> Collection:
    collection = session.exec(
        select(Collection).where(Collection.company_id == company_id, Collection.name == name)
    ).first()
    if collection is None:
        raise not_found("collection", name)
    return collection


def list_collections(*, company_id: str, session: Session) -> list[Collection]:
    stmt = (
        select(Collection).where(Collection.company_id == company_id).order_by(col(Collection.name))
    )
    return list(session.exec(stmt).all())


def delete_collection(name: str, *, company_id: str, session: Session) -> int:
    """Delete a collection with its faces; returns how many faces went with it."""
    collection = get_collection(name, company_id=company_id, session=session)
    result = session.execute(
        delete(CollectionFace).where(
            col(CollectionFace.collection_id) == collection.id,
            col(CollectionFace.company_id) == company_id,
        )
    )
    session.delete(collection)
    session.flush()
    face_changes.record(
        face_changes.DROP, company_id=company_id, collection_id=collection.id, session=session
    )
    return int(cast(CursorResult[Any], result).rowcount or 0)


def _bump(collection: Collection, faces: int, *, session: Session) -> None:
    """Count a change atomically (no lost update between replicas) and refresh the object."""
    session.execute(
        update(Collection)
        .where(col(Collection.id) == collection.id)
        .values(
            revision=col(Collection.revision) + 1,
            face_count=col(Collection.face_count) + faces,
        )
    )
    session.refresh(collection)


# ---- faces -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewFace:
    """A face to add: its embedding and what is recorded with it."""

    embedding: np.ndarray
    model_name: str = MODEL_NAME
    model_version: str = MODEL_VERSION
    person_label: str = ""
    meta: dict[str, str] | None = None
    source_media_id: str | None = None
    #: The detected face (None when the face came as a template).
    face: FaceRecord | None = None


def add_face(
    collection_name: str, new: NewFace, *, company_id: str, session: Session
) -> tuple[Collection, CollectionFace]:
    collection, face, _ = add_face_with_sequence(
        collection_name, new, company_id=company_id, session=session
    )
    return collection, face


def add_face_with_sequence(
    collection_name: str, new: NewFace, *, company_id: str, session: Session
) -> tuple[Collection, CollectionFace, int]:
    """Add a face; also returns the change's sequence number (for read-your-writes)."""
    collection = get_collection(collection_name, company_id=company_id, session=session)
    check_model(collection, new.model_name, new.model_version)
    values = check_embedding(new.embedding)
    if len(new.person_label) > MAX_LABEL:
        raise InvalidArgument(
            f"person_label is {len(new.person_label)} characters; the limit is {MAX_LABEL}"
        )
    face = CollectionFace(
        company_id=company_id,
        collection_id=collection.id,
        person_label=new.person_label,
        meta=validate_meta(new.meta or {}),
        embedding=encode_embedding(values),
        model_name=new.model_name,
        model_version=new.model_version,
        source_media_id=new.source_media_id,
        face=new.face.to_json() if new.face is not None else {},
    )
    session.add(face)
    session.flush()
    _bump(collection, 1, session=session)
    seq = face_changes.record(
        face_changes.ADD,
        company_id=company_id,
        collection_id=collection.id,
        face_id=face.id,
        session=session,
    )
    return collection, face, seq


def remove_face(collection_name: str, face_id: str, *, company_id: str, session: Session) -> int:
    """Remove a face; returns the change's sequence number."""
    collection = get_collection(collection_name, company_id=company_id, session=session)
    result = session.execute(
        delete(CollectionFace).where(
            col(CollectionFace.id) == face_id,
            col(CollectionFace.collection_id) == collection.id,
            col(CollectionFace.company_id) == company_id,
        )
    )
    if not cast(CursorResult[Any], result).rowcount:
        raise not_found("face", face_id)
    _bump(collection, -1, session=session)
    return face_changes.record(
        face_changes.REMOVE,
        company_id=company_id,
        collection_id=collection.id,
        face_id=face_id,
        session=session,
    )


def list_faces(
    collection_name: str, page_size: int, page_token: str, *, company_id: str, session: Session
) -> tuple[Collection, list[CollectionFace], str]:
    """A page of faces, oldest first, and the next page's token ('' on the last page)."""
    collection = get_collection(collection_name, company_id=company_id, session=session)
    stmt = select(CollectionFace).where(
        CollectionFace.collection_id == collection.id, CollectionFace.company_id == company_id
    )
    created = col(CollectionFace.created_at)
    if page_token:
        values = decode_page_token(page_token)
        try:
            last_time, last_id = values
            moment = datetime.fromisoformat(last_time)
        except (TypeError, ValueError):
            raise InvalidArgument("page_token is not one this server issued") from None
        stmt = stmt.where(
            or_(created > moment, and_(created == moment, col(CollectionFace.id) > last_id))
        )
    rows = list(
        session.exec(stmt.order_by(created, col(CollectionFace.id)).limit(page_size + 1)).all()
    )
    token = ""
    if len(rows) > page_size:
        rows = rows[:page_size]
        token = encode_page_token([rows[-1].created_at.isoformat(), rows[-1].id])
    return collection, rows, token


def faces_by_id(
    collection_id: str, face_ids: list[str], *, company_id: str, session: Session
) -> dict[str, CollectionFace]:
    if not face_ids:
        return {}
    rows = session.exec(
        select(CollectionFace).where(
            col(CollectionFace.id).in_(face_ids),
            CollectionFace.collection_id == collection_id,
            CollectionFace.company_id == company_id,
        )
    ).all()
    return {row.id: row for row in rows}


@dataclass(frozen=True)
class Embeddings:
    """All faces of a collection as one matrix: row i is face ``ids[i]`` of ``labels[i]``."""

    ids: list[str]
    labels: list[str]
    matrix: np.ndarray  # (n, EMBEDDING_SIZE) float32


def load_embeddings(collection_id: str, *, company_id: str, session: Session) -> Embeddings:
    rows = session.execute(
        select(
            col(CollectionFace.id), col(CollectionFace.person_label), col(CollectionFace.embedding)
        ).where(
            col(CollectionFace.collection_id) == collection_id,
            col(CollectionFace.company_id) == company_id,
        )
    ).all()
    ids = [row[0] for row in rows]
    labels = [row[1] for row in rows]
    blob = b"".join(row[2] for row in rows)
    if len(blob) != len(rows) * EMBEDDING_SIZE * _DTYPE.itemsize:
        raise ValueError(f"collection {collection_id} holds embeddings of another size")
    matrix = np.frombuffer(blob, dtype=_DTYPE).reshape(len(rows), EMBEDDING_SIZE)
    return Embeddings(ids, labels, matrix.astype(np.float32, copy=False))


def existing_ids(collection_ids: list[str], *, session: Session) -> set[str]:
    """Which of these collections still exist (for evicting deleted ones from memory)."""
    if not collection_ids:
        return set()
    return set(
        session.exec(select(Collection.id).where(col(Collection.id).in_(collection_ids))).all()
    )
