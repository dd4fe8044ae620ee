"""The batcher's mechanics, on a fake model (it checks the plumbing, not the product's results)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from vigil.inference.batcher import Batcher, BatcherConfig, model_runner, run_jobs
from vigil.inference.catalog import DLIB_RESNET
from vigil.inference.errors import DeadlineExpired, Overloaded, Unavailable


class FakeModel:
    """Doubles its input; records batch sizes; can be made slow, gated, or to fail on a value."""

    spec = DLIB_RESNET

    def __init__(self, delay: float = 0.0, fail_on: float | None = None) -> None:
        self.delay = delay
        self.fail_on = fail_on
        self.batches: list[list[float]] = []
        self.alone: list[bool] = []
        self.gate = threading.Event()
        self.gate.set()
        #: Set when a batch reaches the model (before the gate).
        self.entered = threading.Event()

    def infer(self, inputs: dict[str, np.ndarray], alone: bool = False) -> dict[str, np.ndarray]:
        self.entered.set()
        self.gate.wait(10)
        values = inputs["x"]
        self.batches.append(values[:, 0].tolist())
        self.alone.append(alone)
        if self.delay:
            time.sleep(self.delay)
        if self.fail_on is not None and np.any(values == self.fail_on):
            raise RuntimeError("bad batch")
        return {"y": values * 2}

    def unload(self) -> None:
        pass


class FakeClock:
    """A clock that stands still until a test moves it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as pool:
        yield pool


def item(value: float) -> dict[str, np.ndarray]:
    return {"x": np.array([value], dtype=np.float32)}


def y(result: tuple[Any, float] | BaseException) -> float:
    """The model's first output value in a result of ``gather(..., return_exceptions=True)``."""
    assert isinstance(result, tuple), result
    return float(result[0]["y"][0])


async def started(
    model: FakeModel,
    executor: ThreadPoolExecutor,
    clock: Callable[[], float] = time.monotonic,
    **config: Any,
) -> Batcher:
    batcher = Batcher.for_model(model, executor, BatcherConfig(**config), clock=clock)
    batcher.start()
    return batcher


async def until(condition: Callable[[], bool], within_s: float = 10.0) -> None:
    """Let the loop and the executor threads run until ``condition`` holds."""
    give_up = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < give_up, "the condition never held"
        await asyncio.sleep(0.001)


def holds(batcher: Batcher, count: int) -> bool:
    """Whether the batcher's workers hold ``count`` requests and none waits in the queue."""
    return batcher.load == count and batcher._queue.empty()


async def entered(event: threading.Event) -> None:
    """Wait, without blocking the loop, until a batch has reached the model (or a job)."""
    assert await asyncio.to_thread(event.wait, 10), "nothing reached the model"


async def test_results_come_back_to_their_own_requests_in_order(
    executor: ThreadPoolExecutor,
) -> None:
    model = FakeModel(delay=0.01)
    batcher = await started(model, executor, max_batch_size=8)
    results = await asyncio.gather(*(batcher.submit(item(i)) for i in range(20)))
    assert [float(out["y"][0]) for out, _ in results] == [2.0 * i for i in range(20)]
    assert max(len(b) for b in model.batches) > 1, "concurrent requests were never batched"
    assert max(len(b) for b in model.batches) <= 8
    assert sum(len(b) for b in model.batches) == 20
    await batcher.stop()


async def test_batch_size_one_turns_batching_off(executor: ThreadPoolExecutor) -> None:
    model = FakeModel(delay=0.002)
    batcher = await started(model, executor, max_batch_size=1)
    await asyncio.gather(*(batcher.submit(item(i)) for i in range(6)))
    assert all(len(b) == 1 for b in model.batches)
    await batcher.stop()


async def test_queue_delay_lets_a_batch_fill(executor: ThreadPoolExecutor) -> None:
    """Requests that arrive while the first one waits out the queue delay join its batch (which
    runs as soon as it is full: the test never waits the delay out)."""
    model = FakeModel()
    batcher = await started(model, executor, max_batch_size=3, max_queue_delay_s=5.0)
    first = asyncio.ensure_future(batcher.submit(item(1)))
    await until(lambda: holds(batcher, 1))  # the worker took it and waits for more
    await asyncio.gather(first, batcher.submit(item(2)), batcher.submit(item(3)))
    assert model.batches == [[1.0, 2.0, 3.0]]
    await batcher.stop()


async def test_a_failing_batch_fails_only_its_requests(executor: ThreadPoolExecutor) -> None:
    model = FakeModel(fail_on=13.0)
    model.gate.clear()  # hold the first batch so the next requests queue up behind it
    batcher = await started(model, executor, max_batch_size=2)
    first = asyncio.ensure_future(batcher.submit(item(1)))
    await entered(model.entered)
    bad = asyncio.ensure_future(batcher.submit(item(13)))
    bad_mate = asyncio.ensure_future(batcher.submit(item(5)))
    good_a = asyncio.ensure_future(batcher.submit(item(7)))
    good_b = asyncio.ensure_future(batcher.submit(item(8)))
    await until(lambda: batcher.load == 5)
    model.gate.set()
    results = await asyncio.gather(first, bad, bad_mate, good_a, good_b, return_exceptions=True)
    assert model.batches == [[1.0], [13.0, 5.0], [7.0, 8.0]]
    assert y(results[0]) == 2.0
    assert isinstance(results[1], RuntimeError) and isinstance(results[2], RuntimeError)
    assert y(results[3]) == 14.0 and y(results[4]) == 16.0
    # The batcher keeps working after a failure.
    out, _ = await batcher.submit(item(3))
    assert float(out["y"][0]) == 6.0
    await batcher.stop()


async def test_expired_requests_are_dropped_before_they_run(executor: ThreadPoolExecutor) -> None:
    model = FakeModel()
    model.gate.clear()
    clock = FakeClock()
    batcher = await started(model, executor, clock, max_batch_size=4)
    blocker = asyncio.ensure_future(batcher.submit(item(1)))
    await entered(model.entered)
    doomed = asyncio.ensure_future(batcher.submit(item(2), deadline=clock() + 0.05))
    alive = asyncio.ensure_future(batcher.submit(item(3), deadline=clock() + 30))
    await until(lambda: batcher.load == 3)
    clock.advance(0.1)  # the deadline passes while the first batch holds the model
    model.gate.set()
    with pytest.raises(DeadlineExpired):
        await doomed
    await blocker
    out, queued = await alive
    assert float(out["y"][0]) == 6.0 and queued >= 0.05
    assert [2.0] not in model.batches and all(2.0 not in b for b in model.batches)
    await batcher.stop()


async def test_a_full_queue_refuses_at_once(executor: ThreadPoolExecutor) -> None:
    model = FakeModel()
    model.gate.clear()
    batcher = await started(model, executor, max_batch_size=1, max_queue_size=2)
    running = asyncio.ensure_future(batcher.submit(item(0)))
    await entered(model.entered)  # taken by the worker: the queue is empty again
    queued = [asyncio.ensure_future(batcher.submit(item(i))) for i in (1, 2)]
    await until(lambda: batcher.load == 3)
    began = time.perf_counter()
    with pytest.raises(Overloaded, match="2 requests waiting"):
        await batcher.submit(item(3))
    assert time.perf_counter() - began < 0.05
    model.gate.set()
    await asyncio.gather(running, *queued)
    await batcher.stop()


async def test_a_cancelled_waiting_request_never_runs(executor: ThreadPoolExecutor) -> None:
    model = FakeModel()
    model.gate.clear()
    batcher = await started(model, executor, max_batch_size=4)
    blocker = asyncio.ensure_future(batcher.submit(item(1)))
    await entered(model.entered)
    waiting = asyncio.ensure_future(batcher.submit(item(9)))
    other = asyncio.ensure_future(batcher.submit(item(4)))
    await until(lambda: batcher.load == 3)
    waiting.cancel()
    model.gate.set()
    await blocker
    out, _ = await other
    assert float(out["y"][0]) == 8.0
    assert all(9.0 not in b for b in model.batches)
    await batcher.stop()


async def test_stop_fails_queued_requests_with_unavailable(executor: ThreadPoolExecutor) -> None:
    model = FakeModel()
    model.gate.clear()
    batcher = await started(model, executor, max_batch_size=1)
    running = asyncio.ensure_future(batcher.submit(item(1)))
    await entered(model.entered)
    queued = asyncio.ensure_future(batcher.submit(item(2)))
    await until(lambda: batcher.load == 2)
    stopping = asyncio.ensure_future(batcher.stop())
    await until(stopping.done)  # stopped while the model still holds the batch
    model.gate.set()
    await stopping
    with pytest.raises(Unavailable):
        await queued
    with pytest.raises(Unavailable):
        await running  # its batch was interrupted by the stop
    with pytest.raises(Unavailable):
        await batcher.submit(item(3))


async def test_instances_run_batches_side_by_side(executor: ThreadPoolExecutor) -> None:
    model = FakeModel(delay=0.1)
    batcher = await started(model, executor, max_batch_size=1, instances=2)
    began = time.perf_counter()
    await asyncio.gather(batcher.submit(item(1)), batcher.submit(item(2)))
    assert time.perf_counter() - began < 0.19  # two 0.1 s calls overlapped
    await batcher.stop()


def test_invalid_configuration_is_refused() -> None:
    with pytest.raises(ValueError):
        Batcher.for_model(FakeModel(), None, BatcherConfig(max_batch_size=0))


async def test_a_failing_job_fails_only_its_own_request(executor: ThreadPoolExecutor) -> None:
    """Job mode (the detector's per-image work): each item is a callable; one that raises fails its
    own request only, even when it shares a batch with others."""
    gate = threading.Event()
    began = threading.Event()

    def job(value: int) -> Callable[[], int]:
        def run() -> int:
            began.set()
            gate.wait(10)
            if value == 13:
                raise ValueError("no face in image 13")
            return value * 2

        return run

    batcher = Batcher(run_jobs, executor, BatcherConfig(max_batch_size=4), name="jobs")
    batcher.start()
    blocker = asyncio.ensure_future(batcher.submit(job(1)))
    await entered(began)
    rest = [asyncio.ensure_future(batcher.submit(job(v))) for v in (5, 13, 7)]
    await until(lambda: batcher.load == 4)  # the next three queue up and run as one batch
    gate.set()
    results = await asyncio.gather(blocker, *rest, return_exceptions=True)
    assert [r if isinstance(r, BaseException) else r[0] for r in results[:2]] == [2, 10]
    assert isinstance(results[2], ValueError) and "image 13" in str(results[2])
    assert not isinstance(results[3], BaseException) and results[3][0] == 14
    await batcher.stop()


def test_a_single_item_reaches_the_model_without_a_copy() -> None:
    seen: list[np.ndarray] = []

    class Recorder(FakeModel):
        def infer(
            self, inputs: dict[str, np.ndarray], alone: bool = False
        ) -> dict[str, np.ndarray]:
            seen.append(inputs["x"])
            return super().infer(inputs, alone)

    row = np.arange(6, dtype=np.float32).reshape(2, 3)
    [out] = model_runner(Recorder())([{"x": row}])
    assert seen[0].shape == (1, 2, 3) and np.shares_memory(seen[0], row)
    np.testing.assert_array_equal(out["y"], row * 2)
    pair = model_runner(Recorder())([{"x": row}, {"x": row + 1}])
    assert seen[1].shape == (2, 2, 3) and [o["y"][0, 0] for o in pair] == [0.0, 2.0]


async def test_a_batch_waits_for_requests_still_upstream_and_only_for_them(
    executor: ThreadPoolExecutor,
) -> None:
    """With requests on their way (``upstream`` > 0) a batch waits up to ``max_fill_wait_s`` for
    them; with none, it runs at once."""
    model = FakeModel()
    upstream = [0]
    batcher = Batcher.for_model(
        model,
        executor,
        BatcherConfig(max_batch_size=8, max_queue_delay_s=0.0, max_fill_wait_s=0.5),
        upstream=lambda: upstream[0],
    )
    batcher.start()
    began = time.perf_counter()
    await batcher.submit(item(1))
    assert time.perf_counter() - began < 0.1, "a lone request waited for nothing"

    upstream[0] = 2

    async def arriving(value: float) -> tuple[Any, float]:
        upstream[0] -= 1
        return await batcher.submit(item(value))

    first = asyncio.ensure_future(batcher.submit(item(2)))
    await until(lambda: holds(batcher, 1))  # the worker waits for the two still upstream
    await asyncio.gather(first, arriving(3), arriving(4))
    assert model.batches[1:] == [[2.0, 3.0, 4.0]]
    await batcher.stop()


async def test_load_counts_waiting_and_running_requests_and_alone_reaches_the_model(
    executor: ThreadPoolExecutor,
) -> None:
    model = FakeModel()
    model.gate.clear()
    holder: list[Batcher] = []
    batcher = Batcher.for_model(
        model, executor, BatcherConfig(max_batch_size=1), alone=lambda: holder[0].load <= 1
    )
    holder.append(batcher)
    batcher.start()
    assert batcher.load == 0
    running = asyncio.ensure_future(batcher.submit(item(1)))
    queued = asyncio.ensure_future(batcher.submit(item(2)))
    await entered(model.entered)
    assert batcher.load == 2
    model.gate.set()
    await asyncio.gather(running, queued)
    assert batcher.load == 0
    await batcher.submit(item(3))
    assert model.alone == [False, True, True]
    await batcher.stop()
