"""Request building for the persistent API (folders, media, analyses, collections, webhooks,
challenges), shared by the blocking and the asyncio clients."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from google.protobuf.timestamp_pb2 import Timestamp

from vigil.client._requests import ImageLike, media
from vigil.v1 import challenges_pb2, collections_pb2, folders_pb2

#: Media to upload: a path, raw bytes, or a binary file object (read in chunks, never whole).
MediaSource = str | Path | bytes | BinaryIO
#: ``progress(sent_bytes, total_bytes)``; total is None when the size is not known up front.
Progress = Callable[[int, int | None], None]
#: An analysis to run: its type by name ("LIVENESS", "BIOMETRY", "BLACKLIST", "BEST_SHOT") or a
#: full request (for BLACKLIST's collection or a threshold).
AnalysisLike = str | folders_pb2.AnalysisRequest

CHUNK_BYTES = 1024 * 1024


def _stamp(moment: datetime | None) -> Timestamp | None:
    if moment is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def list_folders(
    meta: Mapping[str, str] | None,
    created_after: datetime | None,
    created_before: datetime | None,
    page_size: int,
    page_token: str,
) -> folders_pb2.ListFoldersRequest:
    filters = [
        folders_pb2.MetaFilter(key=key, op=folders_pb2.MetaFilter.OP_EQ, value=value)
        for key, value in (meta or {}).items()
    ]
    return folders_pb2.ListFoldersRequest(
        meta=filters,
        created_after=_stamp(created_after),
        created_before=_stamp(created_before),
        page_size=page_size,
        page_token=page_token,
    )


def analysis(item: AnalysisLike) -> folders_pb2.AnalysisRequest:
    if isinstance(item, folders_pb2.AnalysisRequest):
        return item
    name = item.upper().removeprefix("ANALYSIS_TYPE_")
    return folders_pb2.AnalysisRequest(type=folders_pb2.AnalysisType.Value(f"ANALYSIS_TYPE_{name}"))


def _open(source: MediaSource) -> tuple[BinaryIO, int | None, str, bool]:
    """(stream, size if known, a file name, whether we opened it and must close it)."""
    if isinstance(source, bytes):
        return io.BytesIO(source), len(source), "", False
    if isinstance(source, str | Path):
        path = Path(source)
        return path.open("rb"), path.stat().st_size, path.name, True
    size: int | None = None
    try:  # what is left to read of a real file or a BytesIO; None for a pipe or a socket
        if isinstance(source, io.BytesIO):
            size = len(source.getbuffer()) - source.tell()
        else:
            size = os.fstat(source.fileno()).st_size - source.tell()
    except (AttributeError, OSError, ValueError):
        size = None
    name = getattr(source, "name", "")
    return source, size, Path(name).name if isinstance(name, str) else "", False


def _chunks(source: MediaSource, progress: Progress | None) -> tuple[Iterator[bytes], str]:
    stream, total, name, owned = _open(source)

    def read() -> Iterator[bytes]:
        sent = 0
        try:
            while chunk := stream.read(CHUNK_BYTES):
                yield chunk
                sent += len(chunk)
                if progress is not None:
                    progress(sent, total)
        finally:
            if owned:
                stream.close()

    return read(), name


def upload(
    folder_id: str,
    source: MediaSource,
    tags: Iterable[str],
    meta: Mapping[str, str] | None,
    content_type: str,
    original_name: str,
    progress: Progress | None,
) -> Iterator[folders_pb2.UploadMediaRequest]:
    """UploadMedia's messages: the header, then the file in 1 MiB chunks."""
    chunks, name = _chunks(source, progress)
    header = folders_pb2.UploadMediaHeader(
        folder_id=folder_id,
        tags=list(tags),
        meta=dict(meta or {}),
        content_type=content_type,
        original_name=original_name or name,
    )
    yield folders_pb2.UploadMediaRequest(header=header)
    for chunk in chunks:
        yield folders_pb2.UploadMediaRequest(chunk=chunk)


def submit(
    media_items: Iterable[tuple[MediaSource, Iterable[str]]],
    analyses: Iterable[AnalysisLike],
    meta: Mapping[str, str] | None,
) -> Iterator[folders_pb2.SubmitRequest]:
    """Submit's messages: the folder's header, then each media's header and chunks."""
    header = folders_pb2.SubmitHeader(
        meta=dict(meta or {}), analyses=[analysis(a) for a in analyses]
    )
    yield folders_pb2.SubmitRequest(header=header)
    for source, tags in media_items:
        chunks, name = _chunks(source, None)
        media_header = folders_pb2.UploadMediaHeader(tags=list(tags), original_name=name)
        yield folders_pb2.SubmitRequest(media=media_header)
        for chunk in chunks:
            yield folders_pb2.SubmitRequest(chunk=chunk)


def add_face(
    collection: str, photo: ImageLike, person_label: str, meta: Mapping[str, str] | None
) -> collections_pb2.AddFaceRequest:
    return collections_pb2.AddFaceRequest(
        collection=collection, image=media(photo), person_label=person_label, meta=dict(meta or {})
    )


def search(
    collection: str, photo: ImageLike, top_k: int, threshold: float
) -> collections_pb2.SearchRequest:
    return collections_pb2.SearchRequest(
        collection=collection, image=media(photo), top_k=top_k, threshold=threshold
    )


def create_challenge(count: int, allowed: Iterable[str]) -> challenges_pb2.CreateChallengeRequest:
    gestures = [
        challenges_pb2.Gesture.Value(f"GESTURE_{name.upper().removeprefix('GESTURE_')}")
        for name in allowed
    ]
    return challenges_pb2.CreateChallengeRequest(allowed=gestures, count=count)


def answer_challenge(challenge_id: str, video: ImageLike) -> challenges_pb2.AnswerChallengeRequest:
    return challenges_pb2.AnswerChallengeRequest(challenge_id=challenge_id, video=media(video))


def is_final(analysis: folders_pb2.Analysis) -> bool:
    return analysis.state in (
        folders_pb2.ANALYSIS_STATE_FINISHED,
        folders_pb2.ANALYSIS_STATE_FAILED,
    )
