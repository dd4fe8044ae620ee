"""Analyses and the job queue they form.

A PROCESSING analysis without a live lease is a job. ``claim`` takes one with a single atomic
``UPDATE … WHERE id = (SELECT … FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING``: on PostgreSQL several
replicas share the queue without blocking each other; on SQLite the statement holds the write lock.
A worker that dies leaves a lease that expires, and the job is taken again (``attempts`` counts
the tries); leases are short and renewed often, so that takes seconds. A worker that stops
gracefully hands its jobs back at once (``release``), without counting the interrupted try.
Results are written only by the lease's owner while the job is PROCESSING, so a late duplicate
never overwrites a result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, and_, or_, update
from sqlmodel import Session, col, select

from vigil.inference.errors import FailedPrecondition
from vigil.storage.common import not_found
from vigil.storage.folders import get_folder
from vigil.storage.results import AnalysisState, AnalysisType, Resolution, StoredResult
from vigil.storage.tables import Analysis, Folder, utcnow

#: Order of precedence when a folder's analyses disagree.
_PRECEDENCE = (
    Resolution.PROCESSING,
    Resolution.DECLINED,
    Resolution.OPERATOR_REQUIRED,
    Resolution.FAILED,
    Resolution.SUCCESS,
)


@dataclass(frozen=True)
class NewAnalysis:
    """An analysis to queue: its type and what it was asked with."""

    type: AnalysisType
    #: ``collection`` (BLACKLIST), ``threshold`` (when the caller chose one).
    params: dict[str, Any] = field(default_factory=dict)


def create_analyses(
    folder_id: str, requests: list[NewAnalysis], *, company_id: str, session: Session
) -> list[Analysis]:
    """Queue analyses on a folder."""
    folder = get_folder(folder_id, company_id=company_id, session=session)
    now = utcnow()
    analyses = [
        Analysis(
            company_id=company_id,
            folder_id=folder.id,
            type=request.type,
            params=dict(request.params),
            created_at=now,
            updated_at=now,
        )
        for request in requests
    ]
    session.add_all(analyses)
    folder.analyses_count += len(analyses)
    folder.resolution = Resolution.PROCESSING
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
            Analysis.state == AnalysisState.PROCESSING,
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
            col(Analysis.state) == AnalysisState.PROCESSING,
        )
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_s))
    )
    session.commit()
    return bool(cast(CursorResult[Any], result).rowcount)


def release(analysis_ids: list[str], worker: str, *, session: Session) -> int:
    """Hand jobs this worker holds back to the queue at once (graceful shutdown): available to
    any worker now, and the interrupted try is not counted. Returns how many were released."""
    if not analysis_ids:
        return 0
    result = session.execute(
        update(Analysis)
        .where(
            col(Analysis.id).in_(analysis_ids),
            col(Analysis.lease_owner) == worker,
            col(Analysis.state) == AnalysisState.PROCESSING,
        )
        .values(
            lease_owner=None,
            lease_expires_at=None,
            attempts=Analysis.attempts - 1,
            updated_at=utcnow(),
        )
    )
    session.commit()
    return int(cast(CursorResult[Any], result).rowcount or 0)


def complete(
    analysis_id: str,
    worker: str,
    *,
    state: AnalysisState,
    resolution: Resolution,
    stored: StoredResult,
    processing_ms: float,
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
            col(Analysis.state) == AnalysisState.PROCESSING,
        )
        .values(
            state=state,
            resolution=resolution,
            finished_at=now,
            updated_at=now,
            lease_expires_at=None,
            processing_ms=processing_ms,
            **stored.columns(),
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
            Analysis.state == AnalysisState.PROCESSING,
            Analysis.attempts >= max_attempts,
            and_(col(Analysis.lease_expires_at).is_not(None), col(Analysis.lease_expires_at) < now),
        )
    ).all()
    for analysis in stuck:
        analysis.state, analysis.resolution = AnalysisState.FAILED, Resolution.FAILED
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


def aggregate(resolutions: list[str]) -> Resolution | None:
    """A folder's resolution from its analyses' (None when it has none)."""
    if not resolutions:
        return None
    for candidate in _PRECEDENCE:
        if candidate in resolutions:
            return candidate
    return Resolution.FAILED


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
            Resolution.PROCESSING
            if state == AnalysisState.PROCESSING
            else (resolution or Resolution.FAILED)
            for state, resolution in rows
        ]
    )
    folder.updated_at = utcnow()
    session.add(folder)
    session.flush()
    return folder


def stored_result(analysis: Analysis) -> StoredResult:
    """The analysis's result columns, typed."""
    return StoredResult.of_columns(
        analysis.results, analysis.decisive, analysis.thresholds, analysis.models, analysis.error
    )


def resolve_by_operator(
    analysis_id: str,
    resolution: Resolution,
    comment: str,
    *,
    actor: str,
    company_id: str,
    session: Session,
) -> Analysis:
    """An operator's decision on an OPERATOR_REQUIRED analysis: recorded with who and when; the
    folder's resolution follows. FailedPrecondition when the analysis awaits no operator."""
    row = get_analysis(analysis_id, company_id=company_id, session=session)
    if row.state != AnalysisState.FINISHED or row.resolution != Resolution.OPERATOR_REQUIRED:
        raise FailedPrecondition(
            f"analysis {row.id} is {row.state}/{row.resolution}, not awaiting an operator"
        )
    row.resolution = resolution
    row.decided_by, row.decided_at = actor, utcnow()
    row.decision_comment = comment[:2000]
    session.add(row)
    session.flush()
    refresh_folder_resolution(row.folder_id, session=session)
    return row


def final_resolution(
    folder_id: str, analysis_id: str | None, *, company_id: str, session: Session
) -> tuple[Folder, Resolution]:
    """The final resolution of a folder (or of one of its analyses) and the folder, for a
    signed verdict. NotFound for another folder's analysis; FailedPrecondition while it runs."""
    folder = get_folder(folder_id, company_id=company_id, session=session)
    resolution: str | None = folder.resolution
    if analysis_id is not None:
        row = get_analysis(analysis_id, company_id=company_id, session=session)
        if row.folder_id != folder.id:
            raise not_found("analysis", analysis_id)
        resolution = None if row.state == AnalysisState.PROCESSING else row.resolution
    if resolution in (None, Resolution.PROCESSING):
        raise FailedPrecondition("the verdict is not final yet")
    return folder, Resolution(resolution)
