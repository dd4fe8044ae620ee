"""The engine's memory is bounded by a decoded-pixel budget across images, not only per image:
the accounting (threads, first come first served, deadlines) and the engine under several huge
PNGs at once (real models; the images are blank, so the detector finds nothing in them)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from tests.conftest import make_settings
from vigil.inference import metrics
from vigil.inference.decode_budget import PixelBudget
from vigil.inference.engine import Engine
from vigil.inference.errors import MediaTooLarge, Overloaded
from vigil.server.app import engine_config
from vigil.server.settings import Settings


def gauge() -> float:
    return float(metrics.DECODE_PIXELS_IN_FLIGHT._value.get())


def test_holders_never_exceed_the_budget() -> None:
    budget = PixelBudget(100)
    seen: list[int] = []

    def work(pixels: int) -> None:
        for _ in range(20):
            with budget.hold(pixels):
                seen.append(budget.in_flight)
                time.sleep(0.0005)

    threads = [threading.Thread(target=work, args=(p,)) for p in (10, 30, 45, 60, 80, 100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 120 and max(seen) <= 100 and budget.peak <= 100
    assert budget.in_flight == 0 and gauge() == 0


def test_waiters_are_served_first_come_first_served() -> None:
    """A large image waiting is not overtaken by small ones that would fit beside the holder."""
    budget = PixelBudget(10)
    order: list[str] = []
    held = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with budget.hold(6):
            held.set()
            release.wait(5)

    def waiter(name: str, pixels: int) -> None:
        with budget.hold(pixels):
            order.append(name)

    first = threading.Thread(target=holder)
    first.start()
    held.wait(5)
    large = threading.Thread(target=waiter, args=("large", 8))
    large.start()
    time.sleep(0.05)  # the large one is in line first
    small = threading.Thread(target=waiter, args=("small", 2))
    small.start()
    time.sleep(0.05)
    assert order == []  # 6 + 2 would fit, but the small one is behind the large one
    release.set()
    for thread in (first, large, small):
        thread.join(5)
    assert order == ["large", "small"]


def test_a_request_still_waiting_at_its_deadline_is_refused() -> None:
    budget = PixelBudget(10)
    refused_before = metrics.DECODE_BUDGET_REFUSED._value.get()
    with budget.hold(8):
        started = time.monotonic()
        refusal = pytest.raises(Overloaded, match="VIGIL_DECODE_PIXEL_BUDGET")
        with refusal as caught, budget.hold(5, deadline=started + 0.1):
            pass
        assert 0.1 <= time.monotonic() - started < 1.0
        assert caught.value.status == "RESOURCE_EXHAUSTED"
        assert budget.in_flight == 8
    assert metrics.DECODE_BUDGET_REFUSED._value.get() == refused_before + 1
    with pytest.raises(MediaTooLarge, match="more than the whole"), budget.hold(11):
        pass
    assert budget.in_flight == 0


def blank_png(side: int) -> bytes:
    image = np.full((side, side, 3), 200, np.uint8)
    ok, encoded = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    assert ok
    return encoded.tobytes()


SIDE = 3000  # 9 MP each; the budget holds one at a time
PIXELS = SIDE * SIDE


async def test_concurrent_huge_pngs_stay_within_the_budget(models_dir: Path) -> None:
    settings = make_settings(
        models_dir,
        max_image_pixels=10_000_000,
        detect_max_tiles=0,
        decode_pixel_budget=10_000_000,
        detector_instances=4,
        max_inflight_images=0,
    )
    engine = Engine(engine_config(settings))
    await engine.start()
    sampled: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            sampled.append(gauge())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    try:
        data = blank_png(SIDE)
        sampler.start()
        # Six at once, four detector instances: without the budget four would decode together.
        results = await asyncio.gather(*(engine.detect(data) for _ in range(6)))
        assert all(faces == [] and image.width == SIDE for image, faces, _ in results)
        assert engine.pixel_budget.peak == PIXELS  # one image at a time, never two
        assert max(sampled) <= 10_000_000 and PIXELS in sampled

        # The budget taken elsewhere until past their deadlines: each call is refused precisely.
        hold = engine.pixel_budget.hold(2_000_000)
        await asyncio.to_thread(hold.__enter__)
        try:
            deadline = time.monotonic() + 0.3
            refused = await asyncio.gather(
                *(engine.detect(data, deadline) for _ in range(3)), return_exceptions=True
            )
        finally:
            await asyncio.to_thread(hold.__exit__, None, None, None)
        for error in refused:
            assert isinstance(error, Overloaded), error
            assert "VIGIL_DECODE_PIXEL_BUDGET" in error.message
        _, faces, _ = await engine.detect(data, time.monotonic() + 30)  # free again
        assert faces == [] and engine.pixel_budget.in_flight == 0
    finally:
        stop.set()
        if sampler.is_alive():
            sampler.join()
        await engine.stop()
    assert gauge() == 0


def test_the_budget_holds_one_image_at_the_limit() -> None:
    assert Settings().resolved_decode_pixel_budget == 100_000_000  # twice the 50 MP limit
    # A larger detector input makes the closer look's copy larger: the default follows.
    assert Settings(detect_max_side=2048).resolved_decode_pixel_budget == 50_000_000 + 20 * 2048**2
    with pytest.raises(ValidationError, match="VIGIL_DECODE_PIXEL_BUDGET"):
        Settings(decode_pixel_budget=50_000_000)  # the image fits, its closer look does not
    assert Settings(decode_pixel_budget=0).resolved_decode_pixel_budget == 0  # no limit
