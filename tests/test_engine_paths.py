"""The engine's two ways to an embedding agree: inside the detector job when an image is alone in
the engine, through the embedder's batcher when others are in flight (real models, real photos)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from inference.backends import BackendOptions
from inference.catalog import DLIB_RESNET
from inference.engine import Engine, EngineConfig
from tests.conftest import FACES, read

NAMES = ["obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg"]


async def test_an_image_alone_and_among_others_gets_the_same_template(models_dir: Path) -> None:
    engine = Engine(EngineConfig(models_dir, backend_options=BackendOptions(intra_op_threads=2)))
    await engine.start()
    try:
        batcher = engine.batchers[DLIB_RESNET.name]
        submitted: list[object] = []
        submit = batcher.submit

        async def counting_submit(item, deadline=None):  # type: ignore[no-untyped-def]
            submitted.append(item)
            return await submit(item, deadline)

        batcher.submit = counting_submit  # type: ignore[method-assign]
        images = [read(FACES / name) for name in NAMES]
        alone = [(await engine.embed(data)).embedding for data in images]
        assert submitted == [], "an image alone in the engine still went through the batcher"
        together = await asyncio.gather(*(engine.embed(data) for data in images))
        assert submitted, "concurrent images never reached the embedder's batcher"
        for name, a, b in zip(NAMES, alone, together, strict=True):
            np.testing.assert_allclose(a, b.embedding, atol=1e-4, err_msg=name)
            assert b.subject.timings.embed_ms > 0
    finally:
        await engine.stop()
