"""The collections' change log: each face added or removed gets a sequence number.

Writers append to table ``facechange`` in the transaction of the change itself. On PostgreSQL they
first take a transaction-scoped advisory lock, so sequence numbers are handed out in commit order:
a reader that has applied every change up to ``seq`` can never see a lower one commit later. (On
SQLite writers are serialized by the database anyway.) On PostgreSQL the writer also sends
``NOTIFY vigil_face_changes`` (delivered at commit), which ``ChangeFollower`` listens for; on
SQLite the follower polls.

Each replica's ``FaceIndex`` applies the log to the collections it holds (``FaceIndex.sync``), so a
single add or delete costs one row, not a reload.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import func, text
from sqlalchemy import select as sa_select
from sqlalchemy.engine import make_url
from sqlmodel import Session, col

from vigil.storage.tables import CollectionFace, FaceChange

log = logging.getLogger(__name__)

#: The NOTIFY channel of the change log (PostgreSQL).
CHANNEL = "vigil_face_changes"
#: pg_advisory_xact_lock key serializing the log's writers ("vigil-fc" as an int64).
_WRITE_LOCK = 0x7669_6769_6C2D_6663

ADD, REMOVE, DROP = "add", "remove", "drop"


def record(
    op: str, *, company_id: str, collection_id: str, face_id: str = "", session: Session
) -> int:
    """Append one change in the caller's transaction; returns its sequence number."""
    postgres = session.get_bind().dialect.name == "postgresql"
    if postgres:
        # Held to commit: the next writer gets a higher seq and commits after this one.
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _WRITE_LOCK})
    change = FaceChange(company_id=company_id, collection_id=collection_id, face_id=face_id, op=op)
    session.add(change)
    session.flush()
    assert change.seq is not None
    if postgres:
        session.execute(
            text("SELECT pg_notify(:channel, :seq)"), {"channel": CHANNEL, "seq": str(change.seq)}
        )
    return change.seq


def libpq_url(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL as psycopg.connect takes it (no driver name)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def latest(session: Session) -> int:
    """The newest sequence number committed (0 for an empty log)."""
    value = session.execute(sa_select(func.max(col(FaceChange.seq)))).scalar()
    return int(value or 0)


@dataclass(frozen=True)
class Change:
    seq: int
    op: str
    company_id: str
    collection_id: str
    face_id: str
    #: For an add whose face still exists: its label and float32 embedding bytes.
    person_label: str | None = None
    embedding: bytes | None = None


def since(
    seq: int, *, session: Session, collection_id: str | None = None, limit: int = 10_000
) -> list[Change]:
    """Changes after ``seq``, oldest first, with the added faces' rows (an add whose face was
    removed since has none: its removal follows in the log)."""
    stmt = (
        sa_select(
            col(FaceChange.seq),
            col(FaceChange.op),
            col(FaceChange.company_id),
            col(FaceChange.collection_id),
            col(FaceChange.face_id),
            col(CollectionFace.person_label),
            col(CollectionFace.embedding),
        )
        .outerjoin(
            CollectionFace,
            (col(CollectionFace.id) == col(FaceChange.face_id)) & (col(FaceChange.op) == ADD),
        )
        .where(col(FaceChange.seq) > seq)
    )
    if collection_id is not None:
        stmt = stmt.where(col(FaceChange.collection_id) == collection_id)
    rows = session.execute(stmt.order_by(col(FaceChange.seq)).limit(limit)).all()
    return [
        Change(
            seq=int(row[0] or 0),
            op=row[1],
            company_id=row[2],
            collection_id=row[3],
            face_id=row[4],
            person_label=row[5],
            embedding=row[6],
        )
        for row in rows
    ]


class ChangeFollower:
    """Keeps an index current in the background: ``apply()`` on each NOTIFY (PostgreSQL) and at
    least every ``poll_s`` seconds (the only trigger on SQLite).

    ``apply`` is ``FaceIndex.sync`` bound to a session factory; its errors are logged and retried
    at the next turn (a search with ``min_sequence`` syncs by itself in any case).
    """

    def __init__(
        self, apply: Callable[[], object], *, listen_url: str | None, poll_s: float
    ) -> None:
        self._apply = apply
        self._listen_url = listen_url
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="face-change-follower", daemon=True)

    def start(self) -> ChangeFollower:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._listen_url is not None:
                try:
                    self._listen(self._listen_url)
                except Exception:  # connection lost: poll until it is back
                    log.exception("change log: LISTEN failed; polling")
            self._turn()
            self._stop.wait(self._poll_s)

    def _turn(self) -> None:
        try:
            self._apply()
        except Exception:
            log.exception("change log: applying changes failed; retrying")

    def _listen(self, url: str) -> None:
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"LISTEN {CHANNEL}")
            self._turn()  # what committed before LISTEN took effect
            last_turn = time.monotonic()
            while not self._stop.is_set():
                # Wake on the first notification (short waits, so stop() is prompt), take the
                # rest of a burst, then apply; without notifications, apply every poll_s.
                woken = list(conn.notifies(timeout=min(self._poll_s, 0.25), stop_after=1))
                if woken:
                    list(conn.notifies(timeout=0.01))
                if woken or time.monotonic() - last_turn >= self._poll_s:
                    self._turn()
                    last_turn = time.monotonic()
