"""A company's analysis statistics (the operator console's page), counted in the database."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import func
from sqlmodel import Session, col, select

from vigil.storage.tables import Analysis

#: Resolutions that are a decision (PROCESSING / FAILED / none are not).
DECIDED = ("SUCCESS", "DECLINED", "OPERATOR_REQUIRED")


@dataclass(frozen=True)
class Statistics:
    #: (day, type, resolution or "", count), ordered.
    days: list[tuple[str, str, str, int]]
    analyses: int
    decided: int
    declined: int
    operator_backlog: int
    median_processing_ms: float


def _day(value: object) -> str:
    """SQLite's date() gives a string, PostgreSQL's a date."""
    return value.isoformat() if isinstance(value, date) else str(value)


def statistics(
    since: datetime, until: datetime, *, company_id: str, session: Session
) -> Statistics:
    in_range = (
        col(Analysis.company_id) == company_id,
        col(Analysis.created_at) >= since,
        col(Analysis.created_at) < until,
    )
    day = func.date(col(Analysis.created_at))
    rows = session.exec(
        select(day, Analysis.type, Analysis.resolution, func.count())
        .where(*in_range)
        .group_by(day, col(Analysis.type), col(Analysis.resolution))
    ).all()
    days = sorted((_day(d), t, r or "", int(n)) for d, t, r, n in rows)
    analyses = sum(n for *_, n in days)
    decided = sum(n for _, _, r, n in days if r in DECIDED)
    declined = sum(n for _, _, r, n in days if r == "DECLINED")
    backlog = session.exec(
        select(func.count()).where(
            col(Analysis.company_id) == company_id,
            col(Analysis.resolution) == "OPERATOR_REQUIRED",
        )
    ).one()
    finished = (*in_range, col(Analysis.state) == "FINISHED")
    count = session.exec(select(func.count()).where(*finished)).one()
    median = 0.0
    if count:
        # the middle row (the lower middle for an even count), by an ordered offset: portable SQL
        median = session.exec(
            select(Analysis.processing_ms)
            .where(*finished)
            .order_by(col(Analysis.processing_ms))
            .offset((count - 1) // 2)
            .limit(1)
        ).one()
    return Statistics(days, analyses, decided, declined, int(backlog), float(median))
