"""Replay memory: media and frames this replica has seen, to flag the same capture sent twice.

Two bounded, in-process memories (per process; ``vigil.server.shared_state.SharedReplayMemory``
keeps them in Redis for all replicas and falls back to these):

- media hashes (sha256 of the bytes, or of a stream's frames) in an LRU of ``max_media``;
- perceptual hashes of sampled frames (a 256-bit difference hash of the whole frame) in a ring of
  ``max_frames``, so a re-encoded copy (other bytes, same frames) is caught too.

Each entry remembers its *origin* (a request id, or a stored media's id): seeing the same origin
again (an analysis re-run on the same stored media) is not a replay.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import cv2
import numpy as np

_HASH_SIDE = 16  # 16×16 = 256 bits


def frame_hash(bgr: np.ndarray) -> np.ndarray:
    """A 256-bit difference hash of the grey frame (as 4 uint64 words)."""
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY) if bgr.ndim == 3 else bgr
    small = cv2.resize(grey, (_HASH_SIDE + 1, _HASH_SIDE), interpolation=cv2.INTER_AREA)
    bits = (small[:, 1:] > small[:, :-1]).astype(np.uint8).reshape(-1)
    return np.packbits(bits).view(">u8").astype(np.uint64)


@dataclass(frozen=True)
class FrameReplay:
    matched: int  # frames that match a frame of another origin
    total: int
    origin: str | None  # the earlier origin most frames match

    @property
    def share(self) -> float:
        return self.matched / self.total if self.total else 0.0


class ReplayMemory:
    """Thread-safe (analyses call it from the event loop, tests from others)."""

    def __init__(
        self, max_media: int = 10_000, max_frames: int = 50_000, max_bits: int = 12
    ) -> None:
        self.max_media = max_media
        self.max_bits = max_bits
        self._media: OrderedDict[str, str] = OrderedDict()
        self._hashes = np.zeros((max_frames, 4), dtype=np.uint64)
        self._origins: list[str] = [""] * max_frames
        self._count = 0
        self._next = 0
        self._lock = threading.Lock()

    @property
    def media_count(self) -> int:
        return len(self._media)

    @property
    def frame_count(self) -> int:
        return self._count

    def clear(self) -> None:
        with self._lock:
            self._media.clear()
            self._count = self._next = 0

    def check_media(self, sha256: str, origin: str) -> str | None:
        """Record ``sha256`` for ``origin``; the earlier origin when another one sent it."""
        with self._lock:
            earlier = self._media.get(sha256)
            if earlier is None:
                self._media[sha256] = origin
                if len(self._media) > self.max_media:
                    self._media.popitem(last=False)
                return None
            self._media.move_to_end(sha256)
            return earlier if earlier != origin else None

    def check_frames(self, hashes: list[np.ndarray], origin: str) -> FrameReplay:
        """How many of these frames match (within ``max_bits``) a frame of another origin;
        then remember them."""
        if not hashes:
            return FrameReplay(0, 0, None)
        with self._lock:
            stored = self._hashes[: self._count]
            origins = np.asarray(self._origins[: self._count], dtype=object)
            matched, hits = 0, dict[str, int]()
            if self._count:
                others = origins != origin
                for value in hashes:
                    bits = np.bitwise_count(stored ^ value[None, :]).sum(axis=1)
                    close = (bits <= self.max_bits) & others
                    if close.any():
                        matched += 1
                        first = str(origins[int(np.argmax(close))])
                        hits[first] = hits.get(first, 0) + 1
            for value in hashes:
                self._hashes[self._next] = value
                self._origins[self._next] = origin
                self._next = (self._next + 1) % len(self._origins)
                self._count = min(self._count + 1, len(self._origins))
        best = max(hits, key=lambda k: hits[k]) if hits else None
        return FrameReplay(matched, len(hashes), best)
