"""Analyses and the job queue they form.

A PROCESSING analysis without a live lease is a job. ``claim`` takes one with a single atomic
``UPDATE … WHERE id = (SELECT … FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING``: on PostgreSQL several
replicas share the queue without blocking each other; on SQLite the statement holds the write lock.
A worker that dies leaves a lease that expires, and the job is taken again (``attempts`` counts
the tries). Results are written only by the lease's owner while the job is PROCESSING, so a late
duplicate never overwrites a result.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, and_, or_, update
from sqlmodel import Session, col, select

from vigil.storage.common import not_found
from vigil.storage.folders import get_folder
from vigil.storage.tables import Analysis, Folder, utcnow

FINAL_STATES = ("FINISHED", "FAILED")
#: Order of precedence when a folder's analyses disagree.
_PRECEDENCE = ("PROCESSING", "DECLINED", "OPERATOR_REQUIRED", "FAILED", "SUCCESS")


def create_analyses(
    folder_id: str, requests: list[dict[str, Any]], *, company_id: str, session: Session
) -> list[Analysis]:
    """Queue analyses (each ``{"type": ..., "params": {...}}``) on a folder."""
    folder = get_folder(folder_id, company_id=company_id, session=session)
    now = utcnow()
    analyses = [
        Analysis(
            company_id=company_id,
            folder_id=folder.id,
            type=request["type"],
            params=request.get("params", {}),
            created_at=now,
            updated_at=now,
        )
        for request in requests
    ]
    session.add_all(analyses)
    folder.analyses_count += len(analyses)
    folder.resolution = "PROCESSING"
    folder.updated_at = now
    session.add(folder)
    session.flush()
    return analyses


def get_analysis(analysis_id: str, *, company_id: str, session: Session) -> Analysis:
    analysis = session.exec(
        select(Analysis).where(Analysis.id == analysis_id, Analysis.company_id == company_id)
    ).first()
    if analysis is None:
        raise not_found("analysis", analysis_id)
    return analysis


def folder_analyses(folder_id: str, *, company_id: str, session: Session) -> list[Analysis]:
    stmt = (
        select(Analysis)
        .where(Analysis.folder_id == folder_id, Analysis.company_id == company_id)
        .order_by(col(Analysis.created_at), col(Analysis.id))
    )
    return list(session.exec(stmt).all())


def claim(worker: str, lease_s: float, max_attempts: int, *, session: Session) -> Analysis | None:
    """Take the oldest available job under a lease, or None. Commits."""
    now = utcnow()
    available = (
        select(Analysis.id)
        .where(
            Analysis.state == "PROCESSING",
            or_(col(Analysis.lease_expires_at).is_(None), col(Analysis.lease_expires_at) < now),
            Analysis.attempts < max_attempts,
        )
        .order_by(col(Analysis.created_at))
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    claimed = session.execute(
        update(Analysis)
        .where(col(Analysis.id) == available)
        .values(
            lease_owner=worker,
            lease_expires_at=now + timedelta(seconds=lease_s),
            attempts=Analysis.attempts + 1,
            updated_at=now,
        )
        .returning(col(Analysis.id))
    ).first()
    session.commit()
    if claimed is None:
        return None
    return session.get(Analysis, claimed[0], populate_existing=True)


def renew(analysis_id: str, worker: str, lease_s: float, *, session: Session) -> bool:
    """Extend a lease this worker holds; False when it lost it."""
    result = session.execute(
        update(Analysis)
        .where(
            col(Analysis.id) == analysis_id,
            col(Analysis.lease_owner) == worker,
            col(Analysis.state) == "PROCESSING",
        )
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_s))
    )
    session.commit()
    return bool(cast(CursorResult[Any], result).rowcount)


def complete(
    analysis_id: str,
    worker: str,
    *,
    state: str,
    resolution: str,
    values: dict[str, Any],
    session: Session,
    on_success: Callable[[Session, Analysis, Folder], None] | None = None,
) -> bool:
    """Write the final result if this worker still holds the job; recompute the folder.

    ``on_success`` runs in the same transaction (rows the result creates, webhook events), so
    they exist exactly when the result does. Returns False (and writes nothing) when the lease
    was lost or the job is already final.
    """
    now = utcnow()
    result = session.execute(
        update(Analysis)
        .where(
            col(Analysis.id) == analysis_id,
            col(Analysis.lease_owner) == worker,
            col(Analysis.state) == "PROCESSING",
        )
        .values(
            state=state,
            resolution=resolution,
            finished_at=now,
            updated_at=now,
            lease_expires_at=None,
            **values,
        )
    )
    if not cast(CursorResult[Any], result).rowcount:
        session.rollback()
        return False
    analysis = session.get(Analysis, analysis_id, populate_existing=True)
    assert analysis is not None
    folder = refresh_folder_resolution(analysis.folder_id, session=session)
    if on_success is not None and folder is not None:
        on_success(session, analysis, folder)
    session.commit()
    return True


def fail_exhausted(max_attempts: int, *, session: Session) -> list[Analysis]:
    """Jobs whose every attempt died (lease expired, attempts used up) become FAILED."""
    now = utcnow()
    stuck = session.exec(
        select(Analysis).where(
            Analysis.state == "PROCESSING",
            Analysis.attempts >= max_attempts,
            and_(col(Analysis.lease_expires_at).is_not(None), col(Analysis.lease_expires_at) < now),
        )
    ).all()
    for analysis in stuck:
        analysis.state, analysis.resolution = "FAILED", "FAILED"
        analysis.error = (
            f"gave up after {analysis.attempts} attempts (the worker stopped each time)"
        )
        analysis.finished_at = analysis.updated_at = now
        analysis.lease_expires_at = None
        session.add(analysis)
    session.flush()
    for folder_id in {a.folder_id for a in stuck}:
        refresh_folder_resolution(folder_id, session=session)
    session.commit()
    return list(stuck)


def aggregate(resolutions: list[str]) -> str | None:
    """A folder's resolution from its analyses' (None when it has none)."""
    if not resolutions:
        return None
    for candidate in _PRECEDENCE:
        if candidate in resolutions:
            return candidate
    return "FAILED"


def refresh_folder_resolution(folder_id: str, *, session: Session) -> Folder | None:
    """Recompute a folder's resolution from its analyses, under a lock on the folder row.

    Two workers finishing the folder's last two analyses at once would each read the other's
    as still PROCESSING (READ COMMITTED) and leave the folder PROCESSING for ever; the row lock
    makes the second wait for the first's commit and read its result.
    """
    folder = session.exec(
        select(Folder).where(Folder.id == folder_id).with_for_update(),
        execution_options={"populate_existing": True},
    ).first()
    if folder is None:
        return None
    rows = session.exec(
        select(Analysis.state, Analysis.resolution).where(Analysis.folder_id == folder_id)
    ).all()
    folder.resolution = aggregate(
        [
            "PROCESSING" if state == "PROCESSING" else (resolution or "FAILED")
            for state, resolution in rows
        ]
    )
    folder.updated_at = utcnow()
    session.add(folder)
    session.flush()
    return folder


def queue_depth(*, session: Session) -> int:
    from sqlalchemy import func

    return int(
        session.exec(
            select(func.count()).select_from(Analysis).where(Analysis.state == "PROCESSING")
        ).one()
    )
