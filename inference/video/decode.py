"""Video decoding with limits: open the container, check what it declares, then sample frames.

The decoder is **PyAV** (FFmpeg's libavformat/libavcodec, shipped in its wheels), not OpenCV's
``VideoCapture``. PyAV reads from memory or any file object (``VideoCapture`` needs a path, so
every request would go through a temporary file), and it exposes the container's metadata —
format, streams, codec, coded size, declared duration and frame count, and the display matrix
(rotation) — *before* a single frame is decoded. That is what makes the limits precise and cheap:
a 10-hour or 8K declaration, or a container without a video stream, is refused from the header.

Sampling bounds the cost: every frame is decoded (inter-frame codecs need it, and decoding is
bounded by ``max_frames``/``max_duration_s``), but only ``count`` frames, spread evenly over the
duration, are converted to BGR, rotated upright and handed to the models. Each decoded frame also
leaves a 32×32 grey thumbnail, enough to count exact duplicates (a looped or frozen feed).
"""

from __future__ import annotations

import hashlib
import io
import math
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import av
import numpy as np

from vigil.inference.errors import InvalidMedia, MediaTooLarge, UnsupportedMedia
from vigil.inference.media import DecodedImage, sniff_kind
from vigil.inference.video.frames import Sampler, duplicate_ratio, rotation_of, thumbnail

#: libavformat demuxers vigil accepts (MP4/MOV share one, WebM is Matroska's).
_DEMUXERS = {"mov,mp4,m4a,3gp,3g2,mj2": "MP4/MOV", "matroska,webm": "WebM"}
#: Video codecs vigil decodes.
CODECS = ("h264", "hevc", "vp8", "vp9", "av1", "mpeg4")


@dataclass(frozen=True)
class VideoLimits:
    max_bytes: int = 100 * 1024 * 1024
    max_duration_s: float = 30.0
    max_side: int = 4096
    max_frames: int = 1800
    min_side: int = 64


@dataclass(frozen=True)
class VideoSampling:
    """How many frames reach the models: ``count``, or ``fps`` × duration capped at ``count``."""

    count: int = 12
    fps: float = 0.0
    #: Sampled frames larger than this (longer side) are scaled down when converted.
    frame_max_side: int = 1280

    def frames_for(self, duration_s: float) -> int:
        if self.fps > 0 and duration_s > 0:
            return max(1, min(self.count, math.ceil(duration_s * self.fps)))
        return max(1, self.count)


@dataclass
class VideoInfo:
    content_type: str
    container: str
    codec: str
    width: int  # upright (after rotation)
    height: int
    duration_s: float
    fps: float
    declared_frames: int
    size_bytes: int
    sha256: str
    rotation: int = 0
    decoded_frames: int = 0


@dataclass(frozen=True)
class VideoFrame:
    image: DecodedImage
    index: int  # index among the decoded frames
    time_s: float


@dataclass
class DecodedVideo:
    info: VideoInfo
    frames: list[VideoFrame]
    #: Share of consecutive decoded frames that are pixel-identical (at thumbnail scale).
    duplicate_ratio: float = 0.0
    thumbnails: list[np.ndarray] = field(default_factory=list, repr=False)


def _open(source: IO[bytes], kind: str) -> Any:
    try:
        return av.open(source, mode="r")
    except av.error.FFmpegError as exc:
        raise InvalidMedia(f"corrupt or truncated {kind}: {_reason(exc)}") from None


def _reason(exc: Exception) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return str(text).split(";")[0][:200]


def _declared(container: Any, stream: Any, kind: str, limits: VideoLimits) -> tuple[float, int]:
    """Check codec, size, duration and frame count from the header; (duration_s, frames)."""
    codec = stream.codec_context.name
    if codec not in CODECS:
        raise UnsupportedMedia(f"{kind} video codec {codec} is not supported; use H.264 or VP8/9")
    width, height = stream.codec_context.width, stream.codec_context.height
    if width <= 0 or height <= 0:
        raise InvalidMedia(f"corrupt {kind}: the video stream declares {width}×{height} pixels")
    if max(width, height) > limits.max_side:
        raise MediaTooLarge(
            f"video is {width}×{height}; the limit is {limits.max_side} px a side "
            "(VIGIL_MAX_VIDEO_SIDE)"
        )
    if min(width, height) < limits.min_side:
        raise InvalidMedia(f"video is {width}×{height}; at least {limits.min_side} px a side")
    duration = 0.0
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    movie = container.duration / 1_000_000 if container.duration else 0.0
    duration = duration if duration > 0 else movie
    if max(duration, movie) > limits.max_duration_s:  # either header may be the one that lies
        raise MediaTooLarge(
            f"video declares {max(duration, movie):.1f} s; the limit is "
            f"{limits.max_duration_s:.0f} s (VIGIL_MAX_VIDEO_DURATION_S)"
        )
    frames = int(stream.frames or 0)
    if frames > limits.max_frames:
        raise MediaTooLarge(
            f"video declares {frames} frames; the limit is {limits.max_frames} "
            "(VIGIL_MAX_VIDEO_FRAMES)"
        )
    return duration, frames


def _frames(container: Any, stream: Any, kind: str) -> Iterator[Any]:
    try:
        yield from container.decode(stream)
    except av.error.FFmpegError as exc:
        raise InvalidMedia(f"corrupt or truncated {kind}: {_reason(exc)}") from None


def _decode(
    source: IO[bytes],
    size: int,
    sha256: str,
    limits: VideoLimits,
    sampling: VideoSampling,
    content_type: str,
) -> DecodedVideo:
    kind = content_type.split("/")[1].upper().replace("QUICKTIME", "MOV")
    with _open(source, kind) as container:
        if container.format.name not in _DEMUXERS:
            raise UnsupportedMedia(f"{container.format.name} containers are not supported")
        if not container.streams.video:
            others = ", ".join(s.type for s in container.streams) or "no streams"
            raise InvalidMedia(f"the {kind} container holds no video stream ({others})")
        stream = container.streams.video[0]
        duration, declared = _declared(container, stream, kind, limits)
        stream.thread_type = "AUTO"
        sampler = Sampler(duration, sampling.frames_for(duration), sampling.frame_max_side)
        start = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
        thumbs: list[np.ndarray] = []
        rotation, index = 0, -1
        for index, frame in enumerate(_frames(container, stream, kind)):
            if index >= limits.max_frames:
                raise MediaTooLarge(f"video has more than {limits.max_frames} frames")
            t = (float(frame.time) - start) if frame.time is not None else index / 30.0
            if t > limits.max_duration_s + 1.0:
                raise MediaTooLarge(f"video runs past {limits.max_duration_s:.0f} s")
            thumbs.append(thumbnail(frame))
            rotation = rotation_of(frame)
            sampler.offer(index, t, frame)
        decoded = index + 1
        picked = sampler.finish()
    if decoded == 0:
        raise InvalidMedia(f"corrupt or truncated {kind}: no frame could be decoded")
    if declared and decoded < declared // 2:
        raise InvalidMedia(f"truncated {kind}: {decoded} of {declared} declared frames decode")
    height, width = picked[0][2].shape[:2] if picked else (0, 0)
    info = VideoInfo(
        content_type=content_type,
        container=_DEMUXERS[container.format.name],
        codec=stream.codec_context.name,
        width=int(width),
        height=int(height),
        duration_s=duration or (picked[-1][1] if picked else 0.0),
        fps=float(stream.average_rate or 0.0),
        declared_frames=declared,
        size_bytes=size,
        sha256=sha256,
        rotation=rotation,
        decoded_frames=decoded,
    )
    frames = [VideoFrame(DecodedImage(bgr, content_type), i, t) for i, t, bgr in picked]
    return DecodedVideo(info, frames, duplicate_ratio(thumbs), thumbs)


def _video_type(head: bytes) -> str:
    if not head:
        raise InvalidMedia("video is empty (0 bytes)")
    kind = sniff_kind(head)
    if kind is None or kind[0] != "VIDEO":
        raise UnsupportedMedia("not a video vigil reads: send MP4 (H.264), MOV or WebM (VP8/VP9)")
    return kind[1]


def _check_size(size: int, limits: VideoLimits) -> None:
    if size > limits.max_bytes:
        raise MediaTooLarge(f"video is over {limits.max_bytes} bytes (VIGIL_MAX_VIDEO_BYTES)")


def decode_video(data: bytes, limits: VideoLimits, sampling: VideoSampling) -> DecodedVideo:
    """Decode and sample a whole video held in memory (blocking: run it in a thread)."""
    content_type = _video_type(data[:64])
    _check_size(len(data), limits)
    sha = hashlib.sha256(data).hexdigest()
    return _decode(io.BytesIO(data), len(data), sha, limits, sampling, content_type)


def decode_video_chunks(
    chunks: Iterable[bytes], limits: VideoLimits, sampling: VideoSampling
) -> DecodedVideo:
    """Decode a video that arrives in chunks: spooled (to disk past 8 MiB), the byte limit and
    the type checked while it streams, so an oversized or non-video upload stops early."""
    with tempfile.SpooledTemporaryFile(max_size=8 << 20) as spool:
        digest, size, head = hashlib.sha256(), 0, b""
        for chunk in chunks:
            if len(head) < 64:
                head += chunk[: 64 - len(head)]
                if len(head) == 64:
                    _video_type(head)  # refuse a non-video before the rest arrives
            size += len(chunk)
            _check_size(size, limits)
            digest.update(chunk)
            spool.write(chunk)
        content_type = _video_type(head)
        spool.seek(0)
        source: Any = spool
        return _decode(source, size, digest.hexdigest(), limits, sampling, content_type)
