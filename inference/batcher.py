"""Dynamic batching across concurrent requests, one batcher per model.

A bounded ``asyncio.Queue`` holds one future per request. Worker tasks take the first waiting
request, gather more until ``max_batch_size`` or ``max_queue_delay`` has passed, drop the ones that
were cancelled or whose deadline has passed, and run the batch in an executor thread. A full queue
refuses at once (``Overloaded``) instead of growing. ``instances`` workers let a fixed-batch model
(YuNet) or a GPU with several execution contexts run batches side by side.

What a batch *is* comes from a ``run_batch`` function (items in, one result per item out; an
exception in place of a result fails only that item's request): :meth:`Batcher.for_model` stacks
arrays into one backend call, :func:`run_jobs` runs zero-argument callables one after another
(the detector's whole per-image job, so an image costs one or two thread hops, not four).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vigil.inference import metrics
from vigil.inference.backends.base import LoadedModel
from vigil.inference.errors import DeadlineExpired, Overloaded, Unavailable

log = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]
#: Items in, one result (or the exception that failed it) per item out, in order.
RunBatch = Callable[[list[Any]], Sequence[Any]]


def model_runner(model: LoadedModel, alone: Callable[[], bool] = lambda: False) -> RunBatch:
    """One backend call per batch: stack each input along a new batch axis, split the outputs.
    ``alone`` says, when the batch starts, whether nothing else is running (a backend hint)."""

    def run(items: list[Arrays]) -> list[Arrays]:
        names = list(items[0])
        if len(items) == 1:  # a view, not a copy (YuNet's inputs are megabytes)
            stacked = {name: items[0][name][None] for name in names}
        else:
            stacked = {name: np.stack([item[name] for item in items]) for name in names}
        outputs = model.infer(stacked, alone=alone())
        return [{name: value[i] for name, value in outputs.items()} for i in range(len(items))]

    return run


def run_jobs(jobs: list[Callable[[], Any]]) -> list[Any]:
    """Run each job; a job that raises fails only its own request."""
    results: list[Any] = []
    for job in jobs:
        try:
            results.append(job())
        except Exception as exc:
            results.append(exc)
    return results


@dataclass(frozen=True)
class BatcherConfig:
    max_batch_size: int = 32
    #: How long a batch always waits to fill after its first request.
    max_queue_delay_s: float = 0.002
    max_queue_size: int = 256
    instances: int = 1
    #: How long a batch may wait for requests still upstream (e.g. being detected), when the
    #: batcher is told of any: under load batches fill, a lone request never waits.
    max_fill_wait_s: float = 0.0


@dataclass
class _Request:
    item: Any
    future: asyncio.Future[tuple[Any, float]]
    enqueued: float
    deadline: float | None = None
    started: float = field(default=0.0)


class Batcher:
    """Gathers single items into batches for one model. Create and use inside the running loop."""

    def __init__(
        self,
        run_batch: RunBatch,
        executor: Executor | None,
        config: BatcherConfig,
        name: str,
        clock: Callable[[], float] = time.monotonic,
        upstream: Callable[[], int] = lambda: 0,
    ) -> None:
        if config.max_batch_size < 1 or config.instances < 1 or config.max_queue_size < 1:
            raise ValueError("max_batch_size, max_queue_size and instances must be at least 1")
        self.run_batch = run_batch
        self.executor = executor
        self.config = config
        self.name = name
        self.clock = clock
        self.upstream = upstream
        #: Requests taken from the queue by a worker and not yet answered.
        self._held = 0
        self._queue: asyncio.Queue[_Request] = asyncio.Queue(maxsize=config.max_queue_size)
        self._workers: list[asyncio.Task[None]] = []
        self._closed = False
        self._depth = metrics.QUEUE_DEPTH.labels(self.name)

    @classmethod
    def for_model(
        cls,
        model: LoadedModel,
        executor: Executor | None,
        config: BatcherConfig,
        name: str | None = None,
        alone: Callable[[], bool] = lambda: False,
        upstream: Callable[[], int] = lambda: 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> Batcher:
        """A batcher whose items are rows of ``model``'s inputs (arrays without the batch axis).
        ``upstream`` counts requests on their way to it (see ``max_fill_wait_s``)."""
        return cls(
            model_runner(model, alone),
            executor,
            config,
            name or model.spec.name,
            clock=clock,
            upstream=upstream,
        )

    def start(self) -> None:
        if not self._workers:
            self._workers = [
                asyncio.get_running_loop().create_task(
                    self._work(), name=f"batcher-{self.name}-{i}"
                )
                for i in range(self.config.instances)
            ]

    async def stop(self) -> None:
        """Stop taking requests, fail the queued ones with UNAVAILABLE, and end the workers."""
        self._closed = True
        for worker in self._workers:
            worker.cancel()
        for worker in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        self._workers = []
        while not self._queue.empty():
            request = self._queue.get_nowait()
            if not request.future.done():
                request.future.set_exception(Unavailable(f"{self.name} is shutting down"))
        self._depth.set(0)

    @property
    def load(self) -> int:
        """Requests waiting, gathering or running here now."""
        return self._queue.qsize() + self._held

    async def submit(self, item: Any, deadline: float | None = None) -> tuple[Any, float]:
        """Run one item; returns its result and the seconds it waited in the queue.

        ``deadline`` is on this batcher's clock (``time.monotonic`` by default).
        """
        if self._closed:
            raise Unavailable(f"{self.name} is shutting down")
        future: asyncio.Future[tuple[Any, float]] = asyncio.get_running_loop().create_future()
        request = _Request(item=item, future=future, enqueued=self.clock(), deadline=deadline)
        try:
            self._queue.put_nowait(request)
        except asyncio.QueueFull:
            metrics.REJECTED.labels(self.name).inc()
            raise Overloaded(
                f"model {self.name} has {self.config.max_queue_size} requests waiting; retry later"
            ) from None
        self._depth.set(self._queue.qsize())
        # If the caller is cancelled, the future is cancelled too and the worker skips it.
        return await future

    async def _work(self) -> None:
        while True:
            first = await self._queue.get()
            self._held += 1
            batch = [first]
            try:
                await self._gather(batch)
                self._depth.set(self._queue.qsize())
                live = self._admit(batch)
                if live:
                    await self._run(live)
            except asyncio.CancelledError:  # stopped while gathering: answer what was taken
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(Unavailable(f"{self.name} is shutting down"))
                raise
            finally:
                self._held -= len(batch)

    async def _gather(self, batch: list[_Request]) -> None:
        """Add to ``batch`` what is queued, then what arrives within the waiting windows: always
        ``max_queue_delay_s``, and ``max_fill_wait_s`` while requests are still upstream."""
        limit = self.config.max_batch_size
        began = self.clock()
        window_end = began + self.config.max_queue_delay_s
        fill_end = began + self.config.max_fill_wait_s
        while len(batch) < limit:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                self._held += 1
                continue
            end = max(window_end, fill_end) if self.upstream() > 0 else window_end
            remaining = end - self.clock()
            if remaining <= 0:
                return
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                return
            self._held += 1

    def _admit(self, batch: list[_Request]) -> list[_Request]:
        """Drop cancelled requests and fail expired ones before they cost any compute."""
        now = self.clock()
        live = []
        for request in batch:
            if request.future.done():
                continue
            if request.deadline is not None and now >= request.deadline:
                metrics.EXPIRED.labels(self.name).inc()
                request.future.set_exception(
                    DeadlineExpired(f"deadline passed while waiting for {self.name}")
                )
                continue
            request.started = now
            metrics.QUEUE_WAIT.labels(self.name).observe(now - request.enqueued)
            live.append(request)
        return live

    async def _run(self, batch: list[_Request]) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            items = [request.item for request in batch]
            results = await loop.run_in_executor(self.executor, self.run_batch, items)
            if len(results) != len(batch):
                raise RuntimeError(f"{self.name} answered {len(results)} of {len(batch)} items")
        except asyncio.CancelledError:
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(Unavailable(f"{self.name} is shutting down"))
            raise
        except Exception as exc:
            metrics.BATCH_FAILURES.labels(self.name).inc()
            log.exception("batch of %d failed on %s", len(batch), self.name)
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(exc)
            return
        metrics.INFERENCE_TIME.labels(self.name).observe(time.perf_counter() - started)
        metrics.BATCH_SIZE.labels(self.name).observe(len(batch))
        for request, result in zip(batch, results, strict=True):
            if request.future.done():
                continue
            if isinstance(result, BaseException):
                request.future.set_exception(result)
            else:
                request.future.set_result((result, request.started - request.enqueued))
