"""The tables. Every row carries its ``company_id``; ids are random hex strings.

Times are aware UTC datetimes (SQLModel's UTCDateTime stores them in UTC on both databases).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, Integer, LargeBinary, UniqueConstraint
from sqlmodel import Field, SQLModel


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


def _json(default: Any = None) -> Any:
    return Field(default_factory=default or dict, sa_column=Column(JSON, nullable=False))


class Company(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    name: str = Field(unique=True, max_length=200)
    created_at: datetime = Field(default_factory=utcnow)


class Folder(SQLModel, table=True):
    __table_args__ = (
        Index("ix_folder_company_created", "company_id", "created_at", "id"),
        Index("ix_folder_company_updated", "company_id", "updated_at", "id"),
    )
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    company_id: str = Field(foreign_key="company.id", max_length=32)
    meta: dict[str, str] = _json()
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    #: Aggregate of the analyses (a Resolution name), None while the folder has none.
    resolution: str | None = Field(default=None, max_length=32, index=True)
    analyses_count: int = 0


class FolderMeta(SQLModel, table=True):
    """One row per metadata key of a folder, so ``key == value`` filters use an index."""

    __table_args__ = (Index("ix_folder_meta_lookup", "company_id", "key", "value"),)
    folder_id: str = Field(
        foreign_key="folder.id", primary_key=True, max_length=32, ondelete="CASCADE"
    )
    key: str = Field(primary_key=True, max_length=64)
    company_id: str = Field(max_length=32)
    value: str = Field(max_length=1024)


class Media(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    company_id: str = Field(foreign_key="company.id", max_length=32, index=True)
    folder_id: str = Field(foreign_key="folder.id", max_length=32, index=True, ondelete="CASCADE")
    media_type: str = Field(max_length=16)  # IMAGE | VIDEO
    tags: list[str] = _json(list)
    meta: dict[str, str] = _json()
    sha256: str = Field(max_length=64, index=True)
    size: int
    content_type: str = Field(max_length=100)
    declared_content_type: str = Field(default="", max_length=100)
    original_name: str = Field(default="", max_length=255)
    blob_key: str = Field(max_length=128)
    source_media_id: str | None = Field(default=None, max_length=32)
    created_at: datetime = Field(default_factory=utcnow)


class Analysis(SQLModel, table=True):
    """An analysis is also a job: PROCESSING rows are taken by workers under a lease."""

    __table_args__ = (Index("ix_analysis_queue", "state", "lease_expires_at", "created_at"),)
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    company_id: str = Field(foreign_key="company.id", max_length=32, index=True)
    folder_id: str = Field(foreign_key="folder.id", max_length=32, index=True, ondelete="CASCADE")
    type: str = Field(max_length=16)  # LIVENESS | BIOMETRY | BLACKLIST | BEST_SHOT
    state: str = Field(default="PROCESSING", max_length=16)  # PROCESSING | FINISHED | FAILED
    resolution: str | None = Field(default=None, max_length=32)
    params: dict[str, Any] = _json()
    results: list[dict[str, Any]] = _json(list)
    decisive: dict[str, Any] = _json()
    thresholds: dict[str, float] = _json()
    models: list[dict[str, str]] = _json(list)
    error: str = Field(default="", max_length=2000)
    attempts: int = 0
    lease_owner: str | None = Field(default=None, max_length=64)
    lease_expires_at: datetime | None = None
    processing_ms: float = 0.0
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
    #: An operator's decision on an OPERATOR_REQUIRED result: who, when, why.
    decided_by: str | None = Field(default=None, max_length=100)
    decided_at: datetime | None = None
    decision_comment: str = Field(default="", max_length=2000)


class Collection(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("company_id", "name"),)
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    company_id: str = Field(foreign_key="company.id", max_length=32, index=True)
    name: str = Field(max_length=64)
    meta: dict[str, str] = _json()
    model_name: str = Field(max_length=64)
    model_version: str = Field(max_length=64)
    #: Bumped on every change, so each replica knows when its in-memory matrix is stale.
    revision: int = 0
    face_count: int = 0
    created_at: datetime = Field(default_factory=utcnow)


class CollectionFace(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    company_id: str = Field(max_length=32, index=True)
    collection_id: str = Field(
        foreign_key="collection.id", max_length=32, index=True, ondelete="CASCADE"
    )
    person_label: str = Field(default="", max_length=200)
    meta: dict[str, str] = _json()
    #: float32 little-endian.
    embedding: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    model_name: str = Field(max_length=64)
    model_version: str = Field(max_length=64)
    source_media_id: str | None = Field(default=None, max_length=32)
    face: dict[str, Any] = _json()
    created_at: datetime = Field(default_factory=utcnow)


class Webhook(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    company_id: str = Field(foreign_key="company.id", max_length=32, index=True)
    folder_id: str | None = Field(default=None, max_length=32, index=True)
    url: str = Field(max_length=2048)
    secret: str = Field(max_length=128)
    created_at: datetime = Field(default_factory=utcnow)


class WebhookDelivery(SQLModel, table=True):
    __table_args__ = (Index("ix_delivery_due", "state", "next_attempt_at"),)
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    company_id: str = Field(max_length=32, index=True)
    webhook_id: str | None = Field(default=None, max_length=32, index=True)
    folder_id: str = Field(max_length=32, index=True)
    url: str = Field(max_length=2048)
    secret: str = Field(max_length=128)
    payload: dict[str, Any] = _json()
    state: str = Field(default="PENDING", max_length=16)  # PENDING | DELIVERED | FAILED
    attempts: list[dict[str, Any]] = _json(list)
    lease_owner: str | None = Field(default=None, max_length=64)
    lease_expires_at: datetime | None = None
    next_attempt_at: datetime = Field(default_factory=utcnow)
    created_at: datetime = Field(default_factory=utcnow)


class User(SQLModel, table=True):
    """A person who logs in (email + password) for short-lived access tokens."""

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    company_id: str = Field(foreign_key="company.id", max_length=32, index=True)
    email: str = Field(unique=True, max_length=320)
    password_hash: str = Field(max_length=256)
    role: str = Field(max_length=32)
    result_mode: str = Field(default="FULL", max_length=8)
    disabled: bool = False
    created_at: datetime = Field(default_factory=utcnow)


class ApiKey(SQLModel, table=True):
    """A service credential. Only the SHA-256 of the secret part is stored."""

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    company_id: str = Field(foreign_key="company.id", max_length=32, index=True)
    name: str = Field(default="", max_length=200)
    prefix: str = Field(max_length=16, index=True)
    secret_hash: str = Field(max_length=64)
    role: str = Field(max_length=32)
    result_mode: str = Field(default="FULL", max_length=8)
    created_by: str = Field(default="", max_length=64)
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None


class RefreshToken(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    user_id: str = Field(foreign_key="user.id", max_length=32, index=True, ondelete="CASCADE")
    token_hash: str = Field(max_length=64, unique=True)
    expires_at: datetime
    used_at: datetime | None = None


class AuditEvent(SQLModel, table=True):
    """Who did what to which object. Never the media, a template or a credential."""

    __table_args__ = (Index("ix_audit_company_at", "company_id", "at", "id"),)
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    at: datetime = Field(default_factory=utcnow)
    company_id: str = Field(max_length=32)
    actor: str = Field(max_length=100)
    method: str = Field(max_length=100)
    object_type: str = Field(default="", max_length=32)
    object_id: str = Field(default="", max_length=64)
    status: str = Field(max_length=32)


class Challenge(SQLModel, table=True):
    """An active-liveness challenge: gestures the server chose, answered at most once.

    ``consumed_at`` is set atomically by the first answer (an UPDATE guarded by ``consumed_at IS
    NULL``), so a second answer, or a replay of the first, is refused.
    """

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    company_id: str = Field(foreign_key="company.id", max_length=32, index=True)
    #: 128 random bits, hex; the signed verdict carries it.
    nonce: str = Field(max_length=32)
    #: The gesture names, in the order they must be performed.
    gestures: list[str] = _json(list)
    #: Each gesture must be performed within this many ms (of the previous one / the start).
    gesture_window_ms: int
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime
    consumed_at: datetime | None = None
    #: The answer's resolution (a Resolution name), "" until answered.
    outcome: str = Field(default="", max_length=32)


class FaceChange(SQLModel, table=True):
    """The collections' change log: every face added or removed, and every collection dropped.

    ``seq`` grows in commit order (writers serialize on a lock, storage.face_changes), so a replica
    that has applied every change up to ``seq`` is current to it.
    """

    __table_args__ = (Index("ix_facechange_collection_seq", "collection_id", "seq"),)
    seq: int | None = Field(
        default=None,
        sa_column=Column(
            BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
        ),
    )
    company_id: str = Field(max_length=32)
    collection_id: str = Field(max_length=32)
    #: The face added or removed ("" for a dropped collection).
    face_id: str = Field(default="", max_length=32)
    #: "add", "remove" or "drop".
    op: str = Field(max_length=8)
    created_at: datetime = Field(default_factory=utcnow)
