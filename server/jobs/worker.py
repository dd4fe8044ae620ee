"""Analysis workers: take queued analyses from the database and run them on the engine.

Workers run inside `vigil serve` (``VIGIL_ANALYSIS_WORKERS``) and as `vigil worker` processes;
they share the queue in the database with every other replica. A worker renews its short lease
(``VIGIL_ANALYSIS_LEASE_S``) every third of it while it runs a job: if the process dies, the lease
runs out within seconds and another worker takes the job again. A worker that is stopped
(SIGTERM) hands the jobs it holds back to the queue at once, without counting the try.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
import uuid
from typing import Any

from sqlmodel import Session

from vigil.server.context import AppContext
from vigil.server.jobs.runner import AnalysisRunner, Outcome
from vigil.server.metrics import ANALYSES_FINISHED
from vigil.storage import analyses, folders, webhooks
from vigil.storage.results import AnalysisState, Resolution, StoredResult
from vigil.storage.tables import Analysis, Folder, new_id

log = logging.getLogger(__name__)


def folder_event_payload(folder: Folder, rows: list[Analysis]) -> dict[str, Any]:
    """The webhook body for a folder whose analyses are all final (no media, no templates)."""
    return {
        "event": "folder.final",
        "folder_id": folder.id,
        "meta": folder.meta,
        "resolution": folder.resolution,
        "analyses": [
            {"id": a.id, "type": a.type, "state": a.state, "resolution": a.resolution} for a in rows
        ],
    }


class AnalysisWorkers:
    """``count`` worker tasks on this process's event loop."""

    def __init__(self, app: AppContext, count: int) -> None:
        self.app = app
        self.count = count
        self.runner = AnalysisRunner(app)
        self.name = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        #: Jobs claimed and not yet written, by id: handed back if the workers are stopped.
        self._held: dict[str, str] = {}

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._loop(f"{self.name}/{i}"), name=f"analysis-worker-{i}")
            for i in range(self.count)
        ]

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self._release_held()

    async def _release_held(self) -> None:
        """Hand the interrupted jobs back, so any worker takes them now rather than after the
        lease; a job whose result was written meanwhile is left alone."""
        by_worker: dict[str, list[str]] = {}
        for job_id, worker in self._held.items():
            by_worker.setdefault(worker, []).append(job_id)
        self._held.clear()
        for worker, ids in by_worker.items():
            try:
                released = await self.app.db(functools.partial(self._release, ids, worker))
            except Exception:  # the leases run out anyway
                log.warning("could not hand back %d analyses; their leases will expire", len(ids))
                continue
            log.info("handed back %d unfinished analyses", released)

    @staticmethod
    def _release(ids: list[str], worker: str, session: Session) -> int:
        return analyses.release(ids, worker, session=session)

    async def _claim(self, worker: str) -> Analysis | None:
        """Claim a job; a stop that arrives meanwhile still learns what was claimed."""
        settings = self.app.settings
        claiming = asyncio.ensure_future(
            self.app.db(
                lambda s: analyses.claim(
                    worker, settings.analysis_lease_s, settings.analysis_max_attempts, session=s
                )
            )
        )
        try:
            job = await asyncio.shield(claiming)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                claimed = await claiming
                if claimed is not None:
                    self._held[claimed.id] = worker
            raise
        if job is not None:
            self._held[job.id] = worker
        return job

    async def _loop(self, worker: str) -> None:
        settings = self.app.settings
        event = self.app.jobs_queued
        while not self._stopping:
            try:
                job = await self._claim(worker)
            except Exception:
                log.exception("worker %s cannot reach the queue", worker)
                job = None
            if job is not None:
                await self.run_one(job, worker)
                continue
            await self.app.db(
                lambda s: analyses.fail_exhausted(settings.analysis_max_attempts, session=s)
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), settings.queue_poll_s)
            event.clear()

    async def run_one(self, job: Analysis, worker: str) -> bool:
        """Run a claimed job and write its outcome; False if the lease was lost meanwhile."""
        started = time.perf_counter()
        heartbeat = asyncio.get_running_loop().create_task(self._renew(job.id, worker))
        try:
            media = await self.app.db(
                lambda s: folders.folder_media(job.folder_id, company_id=job.company_id, session=s)
            )
            try:
                outcome = await self.runner.run(job, media)
            except Exception as exc:  # a bug or a backend failure: fail this job, keep the worker
                log.exception("analysis %s (%s) raised", job.id, job.type)
                error = f"internal error: {type(exc).__name__}"
                outcome = Outcome(
                    AnalysisState.FAILED, Resolution.FAILED, StoredResult(error=error)
                )
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        elapsed_ms = (time.perf_counter() - started) * 1000
        written = await self.app.db(lambda s: self._write(job, worker, outcome, elapsed_ms, s))
        self._held.pop(job.id, None)
        if written:
            ANALYSES_FINISHED.labels(job.type, outcome.resolution).inc()
        else:
            log.warning("analysis %s: lease lost before its result was written", job.id)
        return written

    def _write(
        self, job: Analysis, worker: str, outcome: Outcome, elapsed_ms: float, session: Session
    ) -> bool:
        stored, best_shot = outcome.stored, outcome.best_shot
        best_shot_id = new_id() if best_shot is not None else None
        if best_shot_id is not None and stored.decisive is not None:
            # The best shot's result names the image media it becomes.
            decisive = stored.decisive.model_copy(update={"output_media_id": best_shot_id})
            stored = stored.model_copy(
                update={"results": [decisive, *stored.results[1:]], "decisive": decisive}
            )
        queued_deliveries: list[int] = []

        def on_success(s: Session, analysis: Analysis, folder: Folder) -> None:
            if best_shot is not None and best_shot_id is not None:
                jpeg = best_shot.jpeg  # a video's best frame: a new blob; an image: its own
                key = self.app.blobs.put(jpeg) if jpeg is not None else best_shot.source.blob_key
                folders.add_best_shot(
                    best_shot.source,
                    best_shot_id,
                    blob_key=key,
                    size=len(jpeg) if jpeg is not None else best_shot.source.size,
                    content_type="image/jpeg"
                    if jpeg is not None
                    else best_shot.source.content_type,
                    session=s,
                )
            if folder.resolution not in (None, Resolution.PROCESSING):
                rows = analyses.folder_analyses(folder.id, company_id=folder.company_id, session=s)
                payload = folder_event_payload(folder, rows)
                queued_deliveries.append(webhooks.enqueue_folder_event(folder, payload, session=s))

        written = analyses.complete(
            job.id,
            worker,
            state=outcome.state,
            resolution=outcome.resolution,
            stored=stored,
            processing_ms=elapsed_ms,
            session=session,
            on_success=on_success,
        )
        if written and any(queued_deliveries):  # committed: the dispatcher will find them
            self.app.loop.call_soon_threadsafe(self.app.deliveries_queued.set)
        return written

    async def _renew(self, analysis_id: str, worker: str) -> None:
        lease = self.app.settings.analysis_lease_s
        while True:
            await asyncio.sleep(lease / 3)
            kept = await self.app.db(
                lambda s: analyses.renew(analysis_id, worker, lease, session=s)
            )
            if not kept:
                return
