"""The engine's two ways to an embedding agree: inside the detector job when an image is alone in
the engine, through the embedder's batcher when others are in flight (real models, real photos)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np

from tests.conftest import FACES, make_settings, read
from vigil.inference.catalog import DLIB_RESNET
from vigil.inference.engine import EmbeddingResult, Engine
from vigil.inference.types import LivenessScore, Subject
from vigil.server.app import engine_config

NAMES = ["obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg"]


async def test_an_image_alone_and_among_others_gets_the_same_template(models_dir: Path) -> None:
    engine = Engine(engine_config(make_settings(models_dir, intra_op_threads=2)))
    await engine.start()
    try:
        batcher = engine.batchers[DLIB_RESNET.name]
        submitted: list[object] = []
        submit = batcher.submit

        async def counting_submit(item: object, deadline: float | None = None) -> tuple[Any, float]:
            submitted.append(item)
            return await submit(item, deadline)

        batcher.submit = counting_submit  # type: ignore[method-assign]  # count what it is sent
        images = [read(FACES / name) for name in NAMES]
        alone = [(await engine.embed(data)).embedding for data in images]
        assert submitted == [], "an image alone in the engine still went through the batcher"
        # More images than detector instances, so the detector saturates and chips are batched.
        rounds = engine.config.detector_instances // len(images) + 1
        together = await asyncio.gather(*(engine.embed(data) for data in images * rounds))
        assert submitted, "concurrent images never reached the embedder's batcher"
        for name, a, b in zip(NAMES * rounds, alone * rounds, together, strict=True):
            np.testing.assert_allclose(a, b.embedding, atol=1e-4, err_msg=name)
            assert b.subject.timings.embed_ms > 0
    finally:
        await engine.stop()


async def test_load_accounting_returns_to_zero_after_cancelled_and_failed_requests(
    models_dir: Path,
) -> None:
    """The counts the engine schedules by (images upstream of a model, requests held by each
    batcher) must not leak when requests are cancelled or fail, or batches would wait forever
    for faces that never come and lone requests would never run alone again."""
    engine = Engine(engine_config(make_settings(models_dir, intra_op_threads=2)))
    await engine.start()
    try:
        images = [read(FACES / name) for name in NAMES] * 3
        calls: list[asyncio.Task[EmbeddingResult] | asyncio.Task[tuple[Subject, LivenessScore]]]
        calls = [asyncio.ensure_future(engine.embed(data)) for data in images]
        calls += [asyncio.ensure_future(engine.liveness(data)) for data in images[:4]]
        calls.append(asyncio.ensure_future(engine.embed(b"not an image")))  # fails in its job
        await asyncio.sleep(0.05)
        for call in calls[::3]:
            call.cancel()
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        assert any(isinstance(o, asyncio.CancelledError) for o in outcomes)
        assert any(not isinstance(o, BaseException) for o in outcomes)
        await asyncio.sleep(0.1)  # cancelled jobs already running finish in their threads
        assert all(count == 0 for count in engine._upstream.values()), engine._upstream
        assert engine._inflight == 0  # every admitted image was let go
        assert {name: b.load for name, b in engine.batchers.items()} == dict.fromkeys(
            engine.batchers, 0
        )
        alone = await engine.embed(images[0])  # and a lone request still runs (inline)
        assert alone.embedding.shape == (128,)
    finally:
        await engine.stop()
