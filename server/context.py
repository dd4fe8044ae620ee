"""What every servicer shares: settings, the engine, the database, the blob store; and who calls.

Repository work is synchronous (SQLModel); ``AppContext.db`` runs it in a thread so the event
loop never blocks on the database. A call's database work is bounded by the call itself (its
:class:`CallScope`, set by the auth interceptor): each company may run at most
``VIGIL_COMPANY_MAX_CONCURRENT_QUERIES`` transactions at once, waits for a turn no longer than
the call's deadline, and on PostgreSQL every statement is cancelled when that deadline passes
(``statement_timeout``), so one tenant's heavy calls cannot hold every database thread.
Credential lookups run on threads of their own (``AppContext.auth_db``) and never queue behind
any company's queries.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from vigil.inference.engine import Engine
from vigil.inference.errors import DeadlineExpired, Overloaded
from vigil.server.metrics import CACHE_ENTRIES, COMPANY_QUERIES_REFUSED, DB_CALLS_WAITING
from vigil.server.settings import Settings
from vigil.server.shared_state import SharedState
from vigil.storage.blobs import LocalBlobStore
from vigil.storage.db import Database
from vigil.storage.face_changes import ChangeFollower
from vigil.storage.face_index import FaceIndex

T = TypeVar("T")

#: PostgreSQL's SQLSTATE for a statement cancelled by statement_timeout (query_canceled).
_QUERY_CANCELED = "57014"
#: Threads reserved for credential lookups.
AUTH_DB_THREADS = 2


@dataclass(frozen=True)
class CallScope:
    """The company a call's database work counts against, and when the call gives up."""

    company_id: str
    #: ``time.monotonic()`` at the call's deadline; None when the caller set none.
    deadline: float | None = None

    def remaining_s(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()


#: Set by the auth interceptor for the duration of a call; None for background work.
CALL_SCOPE: contextvars.ContextVar[CallScope | None] = contextvars.ContextVar(
    "call_scope", default=None
)


class CompanySlots:
    """A semaphore per company, created on first use and forgotten when idle (bounded memory)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._slots: dict[str, tuple[asyncio.Semaphore, list[int]]] = {}

    def __len__(self) -> int:
        return len(self._slots)

    async def acquire(self, company_id: str, wait_s: float | None) -> None:
        """A turn for ``company_id``; Overloaded when none frees up within ``wait_s``."""
        semaphore, users = self._slots.setdefault(company_id, (asyncio.Semaphore(self.limit), [0]))
        users[0] += 1
        try:
            if semaphore.locked() and wait_s is not None and wait_s <= 0:
                raise TimeoutError
            if not semaphore.locked():
                await semaphore.acquire()  # a turn is free: taken without waiting
                return
            DB_CALLS_WAITING.inc()
            try:
                await asyncio.wait_for(semaphore.acquire(), wait_s)
            finally:
                DB_CALLS_WAITING.dec()
        except TimeoutError:
            self._leave(company_id)
            COMPANY_QUERIES_REFUSED.inc()
            raise Overloaded(
                f"this company already runs {self.limit} database calls on this replica "
                "(VIGIL_COMPANY_MAX_CONCURRENT_QUERIES) and none finished before the call's "
                "deadline; retry later"
            ) from None
        except BaseException:
            self._leave(company_id)
            raise

    def release(self, company_id: str) -> None:
        entry = self._slots.get(company_id)
        if entry is not None:
            entry[0].release()
            self._leave(company_id)

    def _leave(self, company_id: str) -> None:
        entry = self._slots.get(company_id)
        if entry is not None:
            entry[1][0] -= 1
            if entry[1][0] <= 0:
                del self._slots[company_id]


@dataclass
class AppContext:
    settings: Settings
    engine: Engine
    database: Database
    blobs: LocalBlobStore
    db_executor: ThreadPoolExecutor = field(init=False)
    #: Credential lookups only: a tenant's heavy queries never delay authentication.
    auth_executor: ThreadPoolExecutor = field(init=False)
    #: Set when analyses are queued on this replica, so idle workers start at once.
    jobs_queued: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set when webhook deliveries are queued on this replica, so the dispatcher wakes at once.
    deliveries_queued: asyncio.Event = field(default_factory=asyncio.Event)
    #: Collections' embeddings in memory for 1:N search (see vigil.storage.face_index).
    face_index: FaceIndex = field(default_factory=FaceIndex)
    #: Applies the collections' change log to ``face_index`` in the background (open_app).
    change_follower: ChangeFollower | None = None
    #: The loop the server runs on (DB threads use it to wake waiters).
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)
    #: Fire-and-forget writes (audit events) still running; kept so they are not collected.
    background_writes: set[asyncio.Task[None]] = field(default_factory=set)
    company_slots: CompanySlots = field(init=False)
    #: The Redis the replicas share (VIGIL_REDIS_URL); None: everything stays in this process.
    shared: SharedState | None = None

    def __post_init__(self) -> None:
        self.db_executor = ThreadPoolExecutor(
            max(1, self.settings.db_threads), thread_name_prefix="vigil-db"
        )
        self.auth_executor = ThreadPoolExecutor(AUTH_DB_THREADS, thread_name_prefix="vigil-auth")
        self.company_slots = CompanySlots(self.settings.company_max_concurrent_queries)
        CACHE_ENTRIES.labels("company_slots").set_function(lambda: len(self.company_slots))

    async def db(self, work: Callable[[Session], T]) -> T:
        """Run ``work(session)`` in a database thread and commit; roll back if it raises.

        Inside a call, the work takes one of its company's turns and is cut at the call's
        deadline (see the module's docstring)."""
        scope = CALL_SCOPE.get()
        limited = scope is not None and self.company_slots.limit > 0
        if scope is not None:
            remaining = scope.remaining_s()
            if remaining is not None and remaining <= 0:
                raise DeadlineExpired("the call's deadline passed before its database work")
            if limited:
                await self.company_slots.acquire(scope.company_id, remaining)
        try:
            future = self.db_executor.submit(self._run, work, scope)
        except BaseException:
            if limited and scope is not None:
                self.company_slots.release(scope.company_id)
            raise
        if limited and scope is not None:
            company = scope.company_id
            # The turn is the thread's: released when the work really ends, not when a
            # cancelled caller stops waiting for it.
            future.add_done_callback(lambda _: self._call_soon(self.company_slots.release, company))
        return await asyncio.wrap_future(future)

    async def auth_db(self, work: Callable[[Session], T]) -> T:
        """``work(session)`` on the credential lookups' own threads, outside any company's share."""
        future: Future[T] = self.auth_executor.submit(self._run, work, None)
        return await asyncio.wrap_future(future)

    def _run(self, work: Callable[[Session], T], scope: CallScope | None) -> T:
        with self.database.session() as session:
            if not self.database.sqlite:
                self._limit_statements(session, scope)
            try:
                result = work(session)
                session.commit()
            except OperationalError as exc:
                if getattr(exc.orig, "sqlstate", None) == _QUERY_CANCELED:
                    raise DeadlineExpired(
                        "the call's database work ran past its deadline "
                        "(or VIGIL_DB_STATEMENT_TIMEOUT_S) and was cancelled"
                    ) from None
                raise
            return result

    def _limit_statements(self, session: Session, scope: CallScope | None) -> None:
        """PostgreSQL: this transaction's statements end at the deadline or the cap."""
        limits = [self.settings.db_statement_timeout_s or None]
        if scope is not None:
            limits.append(scope.remaining_s())
        bounded = [s for s in limits if s is not None]
        if not bounded:
            return
        ms = max(1, int(min(bounded) * 1000))
        session.execute(text("SELECT set_config('statement_timeout', :ms, true)"), {"ms": str(ms)})

    def _call_soon(self, fn: Callable[[str], None], arg: str) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing waits any more
            self.loop.call_soon_threadsafe(fn, arg)

    async def io(self, fn: Callable[..., T], *args: object) -> T:
        """Run blocking file work (blobs) in a database thread."""
        return await asyncio.get_running_loop().run_in_executor(self.db_executor, fn, *args)

    def close(self) -> None:
        if self.change_follower is not None:
            self.change_follower.stop()
            self.face_index.save_snapshots()
        self.db_executor.shutdown(wait=True)
        self.auth_executor.shutdown(wait=True)
        self.database.dispose()
