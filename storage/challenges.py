"""Active-liveness challenges: issued with a random gesture order and a 128-bit nonce, bound to a
company, answered at most once, before they expire.

``consume`` is one atomic ``UPDATE … WHERE consumed_at IS NULL AND expires_at > now``: of two
answers racing for the same challenge, on any database, exactly one changes the row; the other
is told why it lost (already used, expired) by re-reading it.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, update
from sqlmodel import Session, col

from vigil.inference.errors import FailedPrecondition, InvalidArgument
from vigil.storage.common import not_found
from vigil.storage.tables import Challenge, utcnow

MIN_GESTURES, MAX_GESTURES = 2, 3


def create_challenge(
    allowed: Sequence[str],
    count: int,
    *,
    window_ms: int,
    ttl: timedelta,
    company_id: str,
    session: Session,
) -> Challenge:
    """A challenge of ``count`` distinct gestures (0: 2 or 3 at random) drawn from ``allowed``
    in a random order (``secrets``: the order must not be predictable)."""
    pool = sorted(set(allowed))
    if count and not MIN_GESTURES <= count <= MAX_GESTURES:
        raise InvalidArgument(
            f"count is {count}; a challenge has {MIN_GESTURES} to {MAX_GESTURES} gestures "
            "(0: the server chooses)"
        )
    if len(pool) < MIN_GESTURES:
        raise InvalidArgument(
            f"{len(pool)} gesture(s) allowed ({', '.join(pool) or 'none'}); a challenge needs "
            f"at least {MIN_GESTURES} distinct gestures"
        )
    wanted = count or MIN_GESTURES + secrets.randbelow(MAX_GESTURES - MIN_GESTURES + 1)
    wanted = min(wanted, len(pool))
    chosen: list[str] = []
    while len(chosen) < wanted:
        pick = pool[secrets.randbelow(len(pool))]
        if pick not in chosen:
            chosen.append(pick)
    now = utcnow()
    row = Challenge(
        company_id=company_id,
        nonce=secrets.token_hex(16),
        gestures=chosen,
        gesture_window_ms=window_ms,
        created_at=now,
        expires_at=now + ttl,
    )
    session.add(row)
    session.commit()
    session.refresh(row)
    return row


def get_challenge(challenge_id: str, *, company_id: str, session: Session) -> Challenge:
    """The company's challenge; another company's is NOT_FOUND (never "forbidden")."""
    row = session.get(Challenge, challenge_id) if challenge_id else None
    if row is None or row.company_id != company_id:
        raise not_found("challenge", challenge_id)
    return row


def consume(
    challenge_id: str, *, company_id: str, session: Session, now: datetime | None = None
) -> Challenge:
    """Mark the challenge used (once). FAILED_PRECONDITION ``CHALLENGE_USED`` when it was
    answered before, ``CHALLENGE_EXPIRED`` after its TTL; NOT_FOUND for another company's."""
    row = get_challenge(challenge_id, company_id=company_id, session=session)
    now = now or utcnow()
    result = cast(
        CursorResult[Any],
        session.execute(
            update(Challenge)
            .where(
                col(Challenge.id) == challenge_id,
                col(Challenge.company_id) == company_id,
                col(Challenge.consumed_at).is_(None),
                col(Challenge.expires_at) > now,
            )
            .values(consumed_at=now)
        ),
    )
    session.commit()
    session.refresh(row)
    if result.rowcount == 1:
        return row
    if row.consumed_at is not None:
        raise FailedPrecondition(
            f"challenge {challenge_id} was already answered; request a new one",
            reason="CHALLENGE_USED",
        )
    raise FailedPrecondition(
        f"challenge {challenge_id} expired at {row.expires_at.isoformat()}; request a new one",
        reason="CHALLENGE_EXPIRED",
    )


def record_outcome(challenge_id: str, outcome: str, *, company_id: str, session: Session) -> None:
    row = get_challenge(challenge_id, company_id=company_id, session=session)
    row.outcome = outcome
    session.add(row)
    session.commit()
