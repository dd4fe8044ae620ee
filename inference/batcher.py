"""Dynamic batching across concurrent requests, one batcher per model.

A bounded ``asyncio.Queue`` holds one future per request. Worker tasks take the first waiting
request, gather more until ``max_batch_size`` or ``max_queue_delay`` has passed, drop the ones that
were cancelled or whose deadline has passed, and run the batch on the backend in an executor
thread. A full queue refuses at once (``Overloaded``) instead of growing. The batcher wraps a
:class:`LoadedModel` by composition; ``instances`` workers let a fixed-batch model (YuNet) or a GPU
with several execution contexts run batches side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from inference import metrics
from inference.backends.base import LoadedModel
from inference.errors import DeadlineExpired, Overloaded, Unavailable

log = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class BatcherConfig:
    max_batch_size: int = 32
    max_queue_delay_s: float = 0.002
    max_queue_size: int = 256
    instances: int = 1


@dataclass
class _Request:
    inputs: Arrays
    future: asyncio.Future[tuple[Arrays, float]]
    enqueued: float
    deadline: float | None = None
    started: float = field(default=0.0)


class Batcher:
    """Gathers single items into batches for one model. Create and use inside the running loop."""

    def __init__(
        self,
        model: LoadedModel,
        executor: Executor | None,
        config: BatcherConfig,
        name: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if config.max_batch_size < 1 or config.instances < 1 or config.max_queue_size < 1:
            raise ValueError("max_batch_size, max_queue_size and instances must be at least 1")
        self.model = model
        self.executor = executor
        self.config = config
        self.name = name or model.spec.name
        self.clock = clock
        self._queue: asyncio.Queue[_Request] = asyncio.Queue(maxsize=config.max_queue_size)
        self._workers: list[asyncio.Task[None]] = []
        self._closed = False
        self._depth = metrics.QUEUE_DEPTH.labels(self.name)

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
    def depth(self) -> int:
        return self._queue.qsize()

    async def submit(self, inputs: Arrays, deadline: float | None = None) -> tuple[Arrays, float]:
        """Run one item (arrays without the batch axis); returns its outputs and seconds queued.

        ``deadline`` is on this batcher's clock (``time.monotonic`` by default).
        """
        if self._closed:
            raise Unavailable(f"{self.name} is shutting down")
        future: asyncio.Future[tuple[Arrays, float]] = asyncio.get_running_loop().create_future()
        request = _Request(inputs=inputs, future=future, enqueued=self.clock(), deadline=deadline)
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
            batch = [first]
            limit = self.config.max_batch_size
            if limit > 1:
                window_end = self.clock() + self.config.max_queue_delay_s
                while len(batch) < limit:
                    if self._queue.empty():
                        remaining = window_end - self.clock()
                        if remaining <= 0:
                            break
                        try:
                            batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                        except TimeoutError:
                            break
                    else:
                        batch.append(self._queue.get_nowait())
            self._depth.set(self._queue.qsize())
            live = self._admit(batch)
            if live:
                await self._run(live)

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
        names = list(batch[0].inputs)
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            stacked = {name: np.stack([r.inputs[name] for r in batch]) for name in names}
            outputs = await loop.run_in_executor(self.executor, self.model.infer, stacked)
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
        for index, request in enumerate(batch):
            if not request.future.done():
                row = {name: value[index] for name, value in outputs.items()}
                request.future.set_result((row, request.started - request.enqueued))
