"""A budget of decoded pixels shared by every image the engine decodes at once.

The per-image pixel limit bounds one image; this bounds them all together: a detector job holds
the pixels it is about to decode (counted from the header, before any decoding) until its arrays
are dropped. Jobs wait for the budget first come, first served (a large image is not overtaken
forever by small ones); one whose deadline passes while it waits is refused with
RESOURCE_EXHAUSTED, so a burst of huge images costs waiting time, never memory.

Waiting happens on the job's engine thread (a ``threading.Condition``): the holders are other
detector jobs, which release on their own threads, never the event loop.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Callable, Iterator

from vigil.inference import metrics
from vigil.inference.errors import MediaTooLarge, Overloaded


class PixelBudget:
    """``capacity`` decoded pixels (0: no limit) for all images in flight together."""

    def __init__(self, capacity: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = capacity
        self.clock = clock
        self.in_flight = 0
        #: The most pixels ever held at once (for tests and the soak benchmark).
        self.peak = 0
        self._condition = threading.Condition()
        self._waiting: collections.deque[object] = collections.deque()

    @contextlib.contextmanager
    def hold(self, pixels: int, deadline: float | None = None) -> Iterator[None]:
        """Hold ``pixels`` for the block; wait (FIFO) until they fit, or until ``deadline``
        (on ``clock``) and then raise :class:`Overloaded`."""
        self._acquire(pixels, deadline)
        try:
            yield
        finally:
            self._release(pixels)

    def _acquire(self, pixels: int, deadline: float | None) -> None:
        if not self.capacity:
            with self._condition:
                self._add(pixels)
            return
        if pixels > self.capacity:
            raise MediaTooLarge(
                f"decoding this image needs {pixels} pixels, more than the whole decoded-pixel "
                f"budget ({self.capacity}, VIGIL_DECODE_PIXEL_BUDGET)"
            )
        ticket = object()
        with self._condition:
            self._waiting.append(ticket)
            try:
                while self._waiting[0] is not ticket or self.in_flight + pixels > self.capacity:
                    remaining = None if deadline is None else deadline - self.clock()
                    if remaining is not None and remaining <= 0:
                        metrics.DECODE_BUDGET_REFUSED.inc()
                        raise Overloaded(
                            f"the decoded-pixel budget ({self.capacity} pixels, "
                            f"VIGIL_DECODE_PIXEL_BUDGET) stayed taken by other images until this "
                            f"request's deadline ({pixels} pixels needed); retry later"
                        )
                    self._condition.wait(remaining)
                self._add(pixels)
            finally:
                self._waiting.remove(ticket)
                self._condition.notify_all()  # the next in line may fit now

    def _add(self, pixels: int) -> None:
        self.in_flight += pixels
        self.peak = max(self.peak, self.in_flight)
        metrics.DECODE_PIXELS_IN_FLIGHT.set(self.in_flight)

    def _release(self, pixels: int) -> None:
        with self._condition:
            self.in_flight -= pixels
            metrics.DECODE_PIXELS_IN_FLIGHT.set(self.in_flight)
            self._condition.notify_all()
