"""Folders, their metadata, and their media. Every function is scoped to one company."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, and_, delete, false, func, or_, tuple_
from sqlmodel import Session, col, select

from vigil.inference.errors import InvalidArgument
from vigil.storage.common import (
    MetaLimits,
    QuotaExceeded,
    decode_keyset_token,
    encode_page_token,
    not_found,
    validate_meta,
)
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


def folders_created_since(since: datetime, *, company_id: str, session: Session) -> int:
    """How many folders the company created since ``since`` (deleted ones are not counted)."""
    stmt = select(func.count()).where(Folder.company_id == company_id, Folder.created_at >= since)
    return int(session.exec(stmt).one())


def create_folder(
    meta: dict[str, str],
    *,
    company_id: str,
    session: Session,
    folder_id: str | None = None,
    meta_limits: MetaLimits | None = None,
    max_per_hour: int = 0,
) -> Folder:
    """A new folder; QuotaExceeded when the company created ``max_per_hour`` in the last hour
    (0: no quota)."""
    meta = validate_meta(meta, limits=meta_limits)
    if max_per_hour > 0:
        since = utcnow() - timedelta(hours=1)
        created = folders_created_since(since, company_id=company_id, session=session)
        if created >= max_per_hour:
            raise QuotaExceeded(
                f"this company created {created} folders in the last hour; the limit is "
                f"{max_per_hour} (VIGIL_FOLDERS_PER_COMPANY_PER_HOUR)"
            )
    folder = Folder(company_id=company_id, meta=meta)
    if folder_id is not None:
        folder.id = folder_id
    session.add(folder)
    session.flush()
    for key, value in folder.meta.items():
        session.add(FolderMeta(folder_id=folder.id, key=key, value=value, company_id=company_id))
    return folder


def update_folder_meta(
    folder_id: str,
    set_: dict[str, str],
    remove: list[str],
    *,
    company_id: str,
    session: Session,
    meta_limits: MetaLimits | None = None,
) -> Folder:
    limits = meta_limits or MetaLimits()
    if len(remove) > limits.max_keys:
        raise InvalidArgument(
            f"remove names {len(remove)} keys; at most {limits.max_keys} are allowed "
            "(VIGIL_META_MAX_KEYS)"
        )
    folder = get_folder(folder_id, company_id=company_id, session=session)
    both = sorted(set(set_) & set(remove))
    if both:
        raise InvalidArgument(f"{len(both)} keys both set and removed, e.g. {both[0][:80]!r}")
    meta = {k: v for k, v in folder.meta.items() if k not in remove}
    meta.update(set_)
    folder.meta = validate_meta(meta, limits=limits)
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


def _meta_filters(stmt: Any, query: FolderQuery, company_id: str) -> Any:
    """The metadata filters as two subqueries over ``folder_meta``, whatever their number: one
    index scan per pair and one aggregate, where one EXISTS per filter made the plan (and the
    planner's work) grow with every filter. A folder has one value per key, so it matches all
    the ``eq`` pairs exactly when it has as many rows among them as there are pairs."""
    wanted = set(query.meta_eq)
    if wanted:
        if len({key for key, _ in wanted}) < len(wanted):
            return stmt.where(false())  # one key asked to equal two values: nothing matches
        matching = (
            select(FolderMeta.folder_id)
            .where(
                col(FolderMeta.company_id) == company_id,
                tuple_(col(FolderMeta.key), col(FolderMeta.value)).in_(sorted(wanted)),
            )
            .group_by(col(FolderMeta.folder_id))
            .having(func.count() == len(wanted))
        )
        stmt = stmt.where(col(Folder.id).in_(matching))
    unwanted = set(query.meta_ne)
    if unwanted:
        excluded = select(FolderMeta.folder_id).where(
            col(FolderMeta.company_id) == company_id,
            tuple_(col(FolderMeta.key), col(FolderMeta.value)).in_(sorted(unwanted)),
        )
        stmt = stmt.where(col(Folder.id).not_in(excluded))
    return stmt


def list_folders(
    query: FolderQuery, *, company_id: str, session: Session
) -> tuple[list[Folder], str]:
    """A page of folders and the next page's token ('' on the last page). Keyset pagination."""
    stmt = select(Folder).where(Folder.company_id == company_id)
    stmt = _meta_filters(stmt, query, company_id)
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
        moment, last_id = decode_keyset_token(query.page_token)
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


def add_media(media: Media, *, session: Session, max_per_folder: int = 0) -> Media:
    """Record an uploaded media (its blob is already committed) and touch its folder;
    QuotaExceeded when the folder already holds ``max_per_folder`` media (0: no limit)."""
    folder = get_folder(media.folder_id, company_id=media.company_id, session=session)
    if max_per_folder > 0:
        held = session.exec(select(func.count()).where(Media.folder_id == folder.id)).one()
        if held >= max_per_folder:
            raise QuotaExceeded(
                f"the folder holds {held} media; the limit is {max_per_folder} "
                "(VIGIL_MAX_MEDIA_PER_FOLDER)"
            )
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
