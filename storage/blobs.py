"""The blob store: a local directory, content-addressed by sha256, written atomically.

Bytes go to a temporary file while they stream in (hashed and counted on the way); only a
complete upload is renamed into place, so an interrupted one leaves nothing behind. Identical
bytes are stored once; a blob is deleted when no media refers to it any more.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from vigil.inference.errors import MediaTooLarge, NotFound


class BlobWriter:
    """Receives the chunks of one upload. ``commit`` returns the blob key (the sha256)."""

    def __init__(self, store: LocalBlobStore, max_bytes: int) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self.size = 0
        self._digest = hashlib.sha256()
        fd, name = tempfile.mkstemp(dir=store.tmp_dir, prefix="upload-", suffix=".part")
        self._file = os.fdopen(fd, "wb")
        self._tmp = Path(name)
        self._done = False

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            self.abort()
            raise MediaTooLarge(f"media is over the limit of {self.max_bytes} bytes")
        self._digest.update(chunk)
        self._file.write(chunk)

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def head(self, length: int = 64) -> bytes:
        """The first bytes written (for sniffing the type)."""
        self._file.flush()
        with self._tmp.open("rb") as handle:
            return handle.read(length)

    def read_all(self) -> bytes:
        """Everything written so far (for validating an image before it is kept)."""
        self._file.flush()
        return self._tmp.read_bytes()

    def commit(self) -> str:
        key = self.sha256
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        target = self.store.path_of(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():  # same bytes already stored
            self._tmp.unlink(missing_ok=True)
        else:
            os.replace(self._tmp, target)
        self._done = True
        return key

    def abort(self) -> None:
        if not self._done:
            self._file.close()
            self._tmp.unlink(missing_ok=True)
            self._done = True


class LocalBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp_dir = root / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        # Leftovers of a crash mid-upload are never referenced: clear them on start.
        for stale in self.tmp_dir.glob("upload-*.part"):
            stale.unlink(missing_ok=True)

    def path_of(self, key: str) -> Path:
        if len(key) != 64 or not all(c in "0123456789abcdef" for c in key):
            raise ValueError(f"not a blob key: {key!r}")
        return self.root / key[:2] / key[2:4] / key

    def writer(self, max_bytes: int) -> BlobWriter:
        return BlobWriter(self, max_bytes)

    def put(self, data: bytes) -> str:
        writer = self.writer(len(data))
        writer.write(data)
        return writer.commit()

    def get(self, key: str) -> bytes:
        try:
            return self.path_of(key).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"blob {key} is missing from the store") from None

    def iter_chunks(self, key: str, chunk_size: int = 256 * 1024) -> Iterator[bytes]:
        try:
            handle = self.path_of(key).open("rb")
        except FileNotFoundError:
            raise NotFound(f"blob {key} is missing from the store") from None
        with handle:
            while chunk := handle.read(chunk_size):
                yield chunk

    def exists(self, key: str) -> bool:
        return self.path_of(key).is_file()

    def delete(self, key: str) -> None:
        self.path_of(key).unlink(missing_ok=True)
