"""The batcher's mechanics, on a fake model (it checks the plumbing, not the product's results)."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

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

    def infer(self, inputs: dict[str, np.ndarray], alone: bool = False) -> dict[str, np.ndarray]:
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


@pytest.fixture
def executor():  # type: ignore[no-untyped-def]
    with ThreadPoolExecutor(2) as pool:
        yield pool


def item(value: float) -> dict[str, np.ndarray]:
    return {"x": np.array([value], dtype=np.float32)}


async def started(model: FakeModel, executor, **config) -> Batcher:  # type: ignore[no-untyped-def]
    batcher = Batcher.for_model(model, executor, BatcherConfig(**config))
    batcher.start()
    return batcher


async def test_results_come_back_to_their_own_requests_in_order(executor) -> None:  # type: ignore[no-untyped-def]
    model = FakeModel(delay=0.01)
    batcher = await started(model, executor, max_batch_size=8)
    results = await asyncio.gather(*(batcher.submit(item(i)) for i in range(20)))
    assert [float(out["y"][0]) for out, _ in results] == [2.0 * i for i in range(20)]
    assert max(len(b) for b in model.batches) > 1, "concurrent requests were never batched"
    assert max(len(b) for b in model.batches) <= 8
    assert sum(len(b) for b in model.batches) == 20
    await batcher.stop()


async def test_batch_size_one_turns_batching_off(executor) -> None:  # type: ignore[no-untyped-def]
    model = FakeModel(delay=0.002)
    batcher = await started(model, executor, max_batch_size=1)
    await asyncio.gather(*(batcher.submit(item(i)) for i in range(6)))
    assert all(len(b) == 1 for b in model.batches)
    await batcher.stop()


async def test_queue_delay_lets_a_batch_fill(executor) -> None:  # type: ignore[no-untyped-def]
    model = FakeModel()
    batcher = await started(model, executor, max_batch_size=4, max_queue_delay_s=0.2)

    async def late(value: float, wait: float):  # type: ignore[no-untyped-def]
        await asyncio.sleep(wait)
        return await batcher.submit(item(value))

    await asyncio.gather(late(1, 0), late(2, 0.02), late(3, 0.04))
    assert model.batches == [[1.0, 2.0, 3.0]]
    await batcher.stop()


async def test_a_failing_batch_fails_only_its_requests(executor) -> None:  # type: ignore[no-untyped-def]
    model = FakeModel(fail_on=13.0)
    model.gate.clear()  # hold the first batch so the next requests queue up behind it
    batcher = await started(model, executor, max_batch_size=2)
    first = asyncio.ensure_future(batcher.submit(item(1)))
    await asyncio.sleep(0.05)
    bad = asyncio.ensure_future(batcher.submit(item(13)))
    bad_mate = asyncio.ensure_future(batcher.submit(item(5)))
    good_a = asyncio.ensure_future(batcher.submit(item(7)))
    good_b = asyncio.ensure_future(batcher.submit(item(8)))
    model.gate.set()
    results = await asyncio.gather(first, bad, bad_mate, good_a, good_b, return_exceptions=True)
    assert model.batches == [[1.0], [13.0, 5.0], [7.0, 8.0]]
    assert float(results[0][0]["y"][0]) == 2.0
    assert isinstance(results[1], RuntimeError) and isinstance(results[2], RuntimeError)
    assert float(results[3][0]["y"][0]) == 14.0 and float(results[4][0]["y"][0]) == 16.0
    # The batcher keeps working after a failure.
    out, _ = await batcher.submit(item(3))
    assert float(out["y"][0]) == 6.0
    await batcher.stop()


async def test_expired_requests_are_dropped_before_they_run(executor) -> None:  # type: ignore[no-untyped-def]
    model = FakeModel()
    model.gate.clear()
    batcher = await started(model, executor, max_batch_size=4)
    blocker = asyncio.ensure_future(batcher.submit(item(1)))
    await asyncio.sleep(0.05)
    doomed = asyncio.ensure_future(batcher.submit(item(2), deadline=time.monotonic() + 0.05))
    alive = asyncio.ensure_future(batcher.submit(item(3), deadline=time.monotonic() + 30))
    await asyncio.sleep(0.1)  # the deadline passes while the first batch holds the model
    model.gate.set()
    with pytest.raises(DeadlineExpired):
        await doomed
    await blocker
    out, queued = await alive
    assert float(out["y"][0]) == 6.0 and queued >= 0.05
    assert [2.0] not in model.batches and all(2.0 not in b for b in model.batches)
    await batcher.stop()


async def test_a_full_queue_refuses_at_once(executor) -> None:  # type: ignore[no-untyped-def]
    model = FakeModel()
    model.gate.clear()
    batcher = await started(model, executor, max_batch_size=1, max_queue_size=2)
    running = asyncio.ensure_future(batcher.submit(item(0)))
    await asyncio.sleep(0.05)  # taken by the worker: the queue is empty again
    queued = [asyncio.ensure_future(batcher.submit(item(i))) for i in (1, 2)]
    await asyncio.sleep(0)
    began = time.perf_counter()
    with pytest.raises(Overloaded, match="2 requests waiting"):
        await batcher.submit(item(3))
    assert time.perf_counter() - began < 0.05
    model.gate.set()
    await asyncio.gather(running, *queued)
    await batcher.stop()


async def test_a_cancelled_waiting_request_never_runs(executor) -> None:  # type: ignore[no-untyped-def]
    model = FakeModel()
    model.gate.clear()
    batcher = await started(model, executor, max_batch_size=4)
    blocker = asyncio.ensure_future(batcher.submit(item(1)))
    await asyncio.sleep(0.05)
    waiting = asyncio.ensure_future(batcher.submit(item(9)))
    other = asyncio.ensure_future(batcher.submit(item(4)))
    await asyncio.sleep(0.01)
    waiting.cancel()
    model.gate.set()
    await blocker
    out, _ = await other
    assert float(out["y"][0]) == 8.0
    assert all(9.0 not in b for b in model.batches)
    await batcher.stop()


async def test_stop_fails_queued_requests_with_unavailable(executor) -> None:  # type: ignore[no-untyped-def]
    model = FakeModel()
    model.gate.clear()
    batcher = await started(model, executor, max_batch_size=1)
    running = asyncio.ensure_future(batcher.submit(item(1)))
    await asyncio.sleep(0.05)
    queued = asyncio.ensure_future(batcher.submit(item(2)))
    await asyncio.sleep(0)
    stopping = asyncio.ensure_future(batcher.stop())
    await asyncio.sleep(0.05)
    model.gate.set()
    await stopping
    with pytest.raises(Unavailable):
        await queued
    with pytest.raises(Unavailable):
        await running  # its batch was interrupted by the stop
    with pytest.raises(Unavailable):
        await batcher.submit(item(3))


async def test_instances_run_batches_side_by_side(executor) -> None:  # type: ignore[no-untyped-def]
    model = FakeModel(delay=0.1)
    batcher = await started(model, executor, max_batch_size=1, instances=2)
    began = time.perf_counter()
    await asyncio.gather(batcher.submit(item(1)), batcher.submit(item(2)))
    assert time.perf_counter() - began < 0.19  # two 0.1 s calls overlapped
    await batcher.stop()


def test_invalid_configuration_is_refused() -> None:
    with pytest.raises(ValueError):
        Batcher.for_model(FakeModel(), None, BatcherConfig(max_batch_size=0))


async def test_a_failing_job_fails_only_its_own_request(executor) -> None:  # type: ignore[no-untyped-def]
    """Job mode (the detector's per-image work): each item is a callable; one that raises fails its
    own request only, even when it shares a batch with others."""
    gate = threading.Event()

    def job(value: int):  # type: ignore[no-untyped-def]
        def run() -> int:
            gate.wait(10)
            if value == 13:
                raise ValueError("no face in image 13")
            return value * 2

        return run

    batcher = Batcher(run_jobs, executor, BatcherConfig(max_batch_size=4), name="jobs")
    batcher.start()
    blocker = asyncio.ensure_future(batcher.submit(job(1)))
    await asyncio.sleep(0.05)  # the next three queue up and run as one batch
    rest = [asyncio.ensure_future(batcher.submit(job(v))) for v in (5, 13, 7)]
    gate.set()
    results = await asyncio.gather(blocker, *rest, return_exceptions=True)
    assert [r if isinstance(r, Exception) else r[0] for r in results[:2]] == [2, 10]
    assert isinstance(results[2], ValueError) and "image 13" in str(results[2])
    assert results[3][0] == 14
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


async def test_a_batch_waits_for_requests_still_upstream_and_only_for_them(executor) -> None:  # type: ignore[no-untyped-def]
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

    async def arriving(value: float, after: float):  # type: ignore[no-untyped-def]
        await asyncio.sleep(after)
        upstream[0] -= 1
        return await batcher.submit(item(value))

    first = asyncio.ensure_future(batcher.submit(item(2)))
    await asyncio.gather(first, arriving(3, 0.05), arriving(4, 0.1))
    assert model.batches[1:] == [[2.0, 3.0, 4.0]]
    await batcher.stop()


async def test_load_counts_waiting_and_running_requests_and_alone_reaches_the_model(
    executor,
) -> None:  # type: ignore[no-untyped-def]
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
    await asyncio.sleep(0.05)
    assert batcher.load == 2
    model.gate.set()
    await asyncio.gather(running, queued)
    assert batcher.load == 0
    await batcher.submit(item(3))
    assert model.alone == [False, True, True]
    await batcher.stop()
