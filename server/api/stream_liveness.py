"""The live stream (``Instant.StreamLiveness``): frames in as the camera produces them, running
updates out, a final verdict as soon as it is certain, then the stream closes.

A reader task takes the client's messages into a one-slot mailbox: a frame that arrives while the
previous one waits is replaced (and counted as skipped), so a fast camera never builds a queue.
When the client disconnects, grpc.aio cancels the handler; its ``finally`` cancels the reader, so
nothing of the stream keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import cv2
import numpy as np

from vigil.inference.errors import InvalidArgument, InvalidMedia, MediaTooLarge, MultipleFaces
from vigil.inference.media import DecodedImage, ImageLimits, decode_image
from vigil.inference.video.liveness import VideoLiveness
from vigil.inference.video.stream import StreamConfig, StreamSession
from vigil.server.api import converters as conv
from vigil.server.api.video_converters import stream_update
from vigil.server.video import capture_of
from vigil.v1 import video_pb2

Frame = tuple[int, video_pb2.StreamFrame]


class LatestFrame:
    """A one-slot mailbox: a new frame replaces the one still waiting."""

    def __init__(self) -> None:
        self._item: Frame | None = None
        self._error: BaseException | None = None
        self._ready = asyncio.Event()
        self.closed = False

    def put(self, item: Frame) -> bool:
        """Leave ``item`` for the processor; True when it replaced one (a skipped frame)."""
        replaced = self._item is not None
        self._item = item
        self._ready.set()
        return replaced

    def close(self, error: BaseException | None = None) -> None:
        self.closed, self._error = True, error
        self._ready.set()

    async def take(self, wait_s: float) -> Frame | None:
        """The latest frame; None when the client has finished or ``wait_s`` passed."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), wait_s)
        if self._error is not None:
            raise self._error
        item, self._item = self._item, None
        if not self.closed:
            self._ready.clear()
        return item


def decode_frame(frame: video_pb2.StreamFrame, limits: ImageLimits) -> DecodedImage:
    """An encoded or raw frame → upright BGR (blocking: run it in a thread)."""
    if frame.WhichOneof("pixels") == "encoded":
        return decode_image(frame.encoded, limits)
    raw = frame.raw
    width, height = raw.width, raw.height
    if raw.format == video_pb2.RawFrame.FORMAT_UNSPECIFIED:
        raise InvalidArgument("raw.format is required (FORMAT_BGR24 or FORMAT_RGB24)")
    if width < limits.min_side or height < limits.min_side:
        raise InvalidMedia(f"raw frame is {width}×{height}; at least {limits.min_side} a side")
    if max(width, height) > limits.max_side or width * height > limits.max_pixels:
        raise MediaTooLarge(f"raw frame is {width}×{height}, over the image limits")
    if len(raw.data) != width * height * 3:
        raise InvalidMedia(f"raw frame holds {len(raw.data)} bytes; {width}×{height}×3 expected")
    pixels: np.ndarray = np.frombuffer(raw.data, np.uint8).reshape(height, width, 3)
    if raw.format == video_pb2.RawFrame.FORMAT_RGB24:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    return DecodedImage(np.ascontiguousarray(pixels), "image/x-raw")


def _payload(frame: video_pb2.StreamFrame) -> bytes:
    return frame.encoded if frame.WhichOneof("pixels") == "encoded" else frame.raw.data


async def _read(
    requests: AsyncIterator[video_pb2.StreamLivenessRequest],
    session: StreamSession,
    inbox: LatestFrame,
    single: list[bool],
) -> None:
    started = False
    try:
        async for request in requests:
            kind = request.WhichOneof("message")
            if kind == "start":
                if session.received or started:
                    raise InvalidArgument("start must be the stream's first message, and only once")
                started = True
                single[0] = conv.require_single(request.start.subject_policy)
                session.capture = capture_of(request.start.capture)
            elif kind == "frame":
                if request.frame.WhichOneof("pixels") is None:
                    raise InvalidArgument("frame.encoded or frame.raw is required")
                index = session.receive(_payload(request.frame), request.frame.capture_time_ms)
                session.skipped += inbox.put((index, request.frame))
            else:
                raise InvalidArgument("each message must be a start or a frame")
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        inbox.close(exc)
        return
    inbox.close()


async def stream_liveness(
    video: VideoLiveness,
    config: StreamConfig,
    requests: AsyncIterator[video_pb2.StreamLivenessRequest],
) -> AsyncIterator[video_pb2.StreamLivenessUpdate]:
    session = StreamSession(video, config)
    inbox = LatestFrame()
    single = [False]
    limits = video.engine.config.image_limits
    async with video.engine.admission(1):  # one frame in flight at a time, for the whole stream
        reader = asyncio.get_running_loop().create_task(_read(requests, session, inbox, single))
        try:
            reason: str | None = None
            while reason is None:
                item = await inbox.take(session.remaining_s())
                if item is None:
                    if inbox.closed:
                        reason = "the client ended the stream"
                    else:
                        reason = session.decision() or "time limit reached"
                    break
                index, frame = item
                image = await video.engine.in_thread(decode_frame, frame, limits)
                result = await session.add(image, index, frame.capture_time_ms)
                if single[0] and result.face_count > 1:
                    raise MultipleFaces(f"{result.face_count} faces in frame {index}")
                reason = session.decision()
                if reason is None:
                    yield stream_update(session, result)
            final = await session.finish(reason)
            yield stream_update(session, None, final)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
