"""Health follows the engine: NOT_SERVING once a model can no longer run.

A sticky CUDA error (e.g. ``cudaErrorIllegalAddress``) leaves the process's CUDA context
unusable: every later GPU call fails until the process restarts. The TensorRT backend marks its
model failed (``failure``); this watch sees it on :attr:`Engine.failure` and turns the health
service to NOT_SERVING for the server and every service, so that a load balancer stops sending
calls and an orchestrator restarts the container, instead of a replica that answers
SERVING while failing every call with UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Protocol

from grpc_health.v1 import health, health_pb2

log = logging.getLogger(__name__)


class Failing(Protocol):
    """What the watch reads: the engine's reason to stop serving, or None."""

    @property
    def failure(self) -> str | None: ...


class HealthWatch:
    """A background task: every ``interval_s`` it reads ``engine.failure``; on the first one it
    sets NOT_SERVING for ``""`` and ``services``, logs it, and ends (a failed GPU context does
    not come back without a restart)."""

    def __init__(
        self,
        engine: Failing,
        servicer: health.aio.HealthServicer,
        services: Sequence[str],
        interval_s: float = 1.0,
    ) -> None:
        self.engine = engine
        self.servicer = servicer
        self.services = tuple(services)
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="vigil-health")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            failure = self.engine.failure
            if failure is not None:
                break
            await asyncio.sleep(self.interval_s)
        log.critical("health NOT_SERVING: %s; restart the server", failure)
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *self.services):
            await self.servicer.set(name, not_serving)
