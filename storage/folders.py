"""Folders, their metadata, and their media. Every function is scoped to one company."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, and_, delete, exists, or_
from sqlmodel import Session, col, select

from vigil.inference.errors import InvalidArgument
from vigil.storage.common import decode_page_token, encode_page_token, not_found, validate_meta
from vigil.storage.tables import (
    Analysis,
    Company,
    Folder,
    FolderMeta,
    Media,
    WebhookDelivery,
    utcnow,
)

DEFAULT_COMPANY = "default"


def ensure_company(name: str, *, session: Session) -> Company:
    company = session.exec(select(Company).where(Company.name == name)).first()
    if company is None:
        company = Company(name=name)
        session.add(company)
        session.flush()
    return company


def get_folder(folder_id: str, *, company_id: str, session: Session) -> Folder:
    folder = session.exec(
        select(Folder).where(Folder.id == folder_id, Folder.company_id == company_id)
    ).first()
    if folder is None:
        raise not_found("folder", folder_id)
    return folder


def create_folder(
    meta: dict[str, str], *, company_id: str, session: Session, folder_id: str | None = None
) -> Folder:
    folder = Folder(company_id=company_id, meta=validate_meta(meta))
    if folder_id is not None:
        folder.id = folder_id
    session.add(folder)
    session.flush()
    for key, value in folder.meta.items():
        session.add(FolderMeta(folder_id=folder.id, key=key, value=value, company_id=company_id))
    return folder


def update_folder_meta(
    folder_id: str, set_: dict[str, str], remove: list[str], *, company_id: str, session: Session
) -> Folder:
    folder = get_folder(folder_id, company_id=company_id, session=session)
    if set(set_) & set(remove):
        raise InvalidArgument(f"keys both set and removed: {sorted(set(set_) & set(remove))}")
    meta = {k: v for k, v in folder.meta.items() if k not in remove}
    meta.update(set_)
    folder.meta = validate_meta(meta)
    folder.updated_at = utcnow()
    session.add(folder)
    session.execute(
        delete(FolderMeta).where(
            col(FolderMeta.folder_id) == folder.id, col(FolderMeta.key).in_(list(set_) + remove)
        )
    )
    for key, value in set_.items():
        session.add(FolderMeta(folder_id=folder.id, key=key, value=value, company_id=company_id))
    return folder


def unreferenced_blobs(keys: set[str], *, session: Session) -> list[str]:
    """Blob keys that no media row refers to any more (blobs are shared across companies)."""
    if not keys:
        return []
    used = set(session.exec(select(Media.blob_key).where(col(Media.blob_key).in_(keys))).all())
    return sorted(keys - used)


def delete_folder(
    folder_id: str, *, company_id: str, session: Session
) -> tuple[int, int, list[str]]:
    """Delete a folder with its media, analyses and deliveries.

    Returns (media deleted, analyses deleted, blob keys now unreferenced): the caller deletes
    those blobs after the transaction commits.
    """
    folder = get_folder(folder_id, company_id=company_id, session=session)
    media = session.exec(select(Media).where(Media.folder_id == folder.id)).all()
    keys = {m.blob_key for m in media}
    removed = session.execute(delete(Analysis).where(col(Analysis.folder_id) == folder.id))
    analyses = cast(CursorResult[Any], removed).rowcount
    session.execute(delete(Media).where(col(Media.folder_id) == folder.id))
    session.execute(delete(FolderMeta).where(col(FolderMeta.folder_id) == folder.id))
    session.execute(delete(WebhookDelivery).where(col(WebhookDelivery.folder_id) == folder.id))
    session.delete(folder)
    session.flush()
    return len(media), int(analyses or 0), unreferenced_blobs(keys, session=session)


@dataclass
class FolderQuery:
    """Filters of ListFolders; all ANDed."""

    meta_eq: list[tuple[str, str]] = field(default_factory=list)
    meta_ne: list[tuple[str, str]] = field(default_factory=list)
    created_after: datetime | None = None
    created_before: datetime | None = None
    updated_after: datetime | None = None
    updated_before: datetime | None = None
    resolutions: list[str] = field(default_factory=list)
    #: None: any; True: only folders with analyses; False: only without.
    with_analyses: bool | None = None
    order_by: str = "created_at"  # or updated_at
    descending: bool = True
    page_size: int = 50
    page_token: str = ""


def list_folders(
    query: FolderQuery, *, company_id: str, session: Session
) -> tuple[list[Folder], str]:
    """A page of folders and the next page's token ('' on the last page). Keyset pagination."""
    stmt = select(Folder).where(Folder.company_id == company_id)
    for key, value in query.meta_eq:
        stmt = stmt.where(
            exists().where(
                col(FolderMeta.company_id) == company_id,
                col(FolderMeta.key) == key,
                col(FolderMeta.value) == value,
                col(FolderMeta.folder_id) == col(Folder.id),
            )
        )
    for key, value in query.meta_ne:
        stmt = stmt.where(
            ~exists().where(
                col(FolderMeta.folder_id) == col(Folder.id),
                col(FolderMeta.key) == key,
                col(FolderMeta.value) == value,
            )
        )
    bounds = (
        (Folder.created_at, query.created_after, query.created_before),
        (Folder.updated_at, query.updated_after, query.updated_before),
    )
    for column, after, before in bounds:
        if after is not None:
            stmt = stmt.where(column >= after)
        if before is not None:
            stmt = stmt.where(column < before)
    if query.resolutions:
        stmt = stmt.where(col(Folder.resolution).in_(query.resolutions))
    if query.with_analyses is True:
        stmt = stmt.where(Folder.analyses_count > 0)
    elif query.with_analyses is False:
        stmt = stmt.where(Folder.analyses_count == 0)
    sort = col(Folder.created_at) if query.order_by == "created_at" else col(Folder.updated_at)
    if query.page_token:
        last_time, last_id = decode_page_token(query.page_token)
        try:
            moment = datetime.fromisoformat(last_time)
        except (TypeError, ValueError):
            raise InvalidArgument("page_token is not one this server issued") from None
        if query.descending:
            stmt = stmt.where(or_(sort < moment, and_(sort == moment, col(Folder.id) < last_id)))
        else:
            stmt = stmt.where(or_(sort > moment, and_(sort == moment, col(Folder.id) > last_id)))
    ordering: list[Any] = (
        [sort.desc(), col(Folder.id).desc()]
        if query.descending
        else [sort.asc(), col(Folder.id).asc()]
    )
    rows = list(session.exec(stmt.order_by(*ordering).limit(query.page_size + 1)).all())
    token = ""
    if len(rows) > query.page_size:
        rows = rows[: query.page_size]
        last = rows[-1]
        token = encode_page_token([getattr(last, query.order_by).isoformat(), last.id])
    return rows, token


# ---- media -------------------------------------------------------------------------------------


def add_media(media: Media, *, session: Session) -> Media:
    """Record an uploaded media (its blob is already committed) and touch its folder."""
    folder = get_folder(media.folder_id, company_id=media.company_id, session=session)
    session.add(media)
    folder.updated_at = utcnow()
    session.add(folder)
    session.flush()
    return media


def add_best_shot(
    source: Media, media_id: str, *, blob_key: str, size: int, content_type: str, session: Session
) -> Media:
    """The image a BEST_SHOT analysis made of ``source`` (its blob already committed)."""
    media = Media(
        id=media_id,
        company_id=source.company_id,
        folder_id=source.folder_id,
        media_type="IMAGE",
        tags=["best_shot"],
        sha256=blob_key,
        size=size,
        content_type=content_type,
        original_name=f"best_shot_of_{source.id}",
        blob_key=blob_key,
        source_media_id=source.id,
    )
    session.add(media)
    return media


def get_media(media_id: str, *, company_id: str, session: Session) -> Media:
    media = session.exec(
        select(Media).where(Media.id == media_id, Media.company_id == company_id)
    ).first()
    if media is None:
        raise not_found("media", media_id)
    return media


def folder_media(folder_id: str, *, company_id: str, session: Session) -> list[Media]:
    stmt = (
        select(Media)
        .where(Media.folder_id == folder_id, Media.company_id == company_id)
        .order_by(col(Media.created_at), col(Media.id))
    )
    return list(session.exec(stmt).all())


def delete_media(media_id: str, *, company_id: str, session: Session) -> list[str]:
    """Delete one media; returns the blob keys now unreferenced."""
    media = get_media(media_id, company_id=company_id, session=session)
    session.delete(media)
    session.flush()
    return unreferenced_blobs({media.blob_key}, session=session)
