"""What every servicer shares: settings, the engine, the database, the blob store; and who calls.

Repository work is synchronous (SQLModel); ``AppContext.db`` runs it in a thread so the event
loop never blocks on the database.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from sqlmodel import Session

from vigil.inference.engine import Engine
from vigil.server.settings import Settings
from vigil.storage.blobs import LocalBlobStore
from vigil.storage.db import Database
from vigil.storage.face_index import FaceIndex

T = TypeVar("T")


@dataclass
class AppContext:
    settings: Settings
    engine: Engine
    database: Database
    blobs: LocalBlobStore
    db_executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(8, thread_name_prefix="vigil-db")
    )
    #: Set when analyses are queued on this replica, so idle workers start at once.
    jobs_queued: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set when webhook deliveries are queued on this replica, so the dispatcher wakes at once.
    deliveries_queued: asyncio.Event = field(default_factory=asyncio.Event)
    #: Collections' embeddings in memory for 1:N search (see vigil.storage.face_index).
    face_index: FaceIndex = field(default_factory=FaceIndex)
    #: The loop the server runs on (DB threads use it to wake waiters).
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)
    #: Fire-and-forget writes (audit events) still running; kept so they are not collected.
    background_writes: set[asyncio.Task[None]] = field(default_factory=set)

    async def db(self, work: Callable[[Session], T]) -> T:
        """Run ``work(session)`` in a database thread and commit; roll back if it raises."""

        def run() -> T:
            with self.database.session() as session:
                result = work(session)
                session.commit()
                return result

        return await asyncio.get_running_loop().run_in_executor(self.db_executor, run)

    async def io(self, fn: Callable[..., T], *args: object) -> T:
        """Run blocking file work (blobs) in a database thread."""
        return await asyncio.get_running_loop().run_in_executor(self.db_executor, fn, *args)

    def close(self) -> None:
        self.db_executor.shutdown(wait=True)
        self.database.dispose()
