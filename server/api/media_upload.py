"""Receiving media: stream chunks into the blob store, validate, then record the row.

An upload is only kept when it is complete and valid: the bytes stream into a temporary file
(size limit enforced and hash computed on the way), the type is sniffed from the bytes and an
image's header is checked against the limits; only then is the blob committed and the row
written. If anything fails, the temporary file is removed and a blob that no row refers to is
deleted, so an interrupted upload leaves no row and no file.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

from vigil.inference.errors import InvalidArgument, InvalidMedia, MediaTooLarge, UnsupportedMedia
from vigil.inference.media import probe, sniff_kind, unsupported_name
from vigil.server.api.validation import meta_limits
from vigil.server.context import AppContext
from vigil.server.video import CAPTURE_META_KEY, capture_meta
from vigil.storage import folders
from vigil.storage.common import validate_meta
from vigil.storage.tables import Media
from vigil.v1 import folders_pb2

MAX_TAGS = 16


def validate_tags(tags: Iterable[str]) -> list[str]:
    tags = list(tags)
    if len(tags) > MAX_TAGS:
        raise InvalidArgument(f"at most {MAX_TAGS} tags per media")
    for tag in tags:
        if not tag or len(tag) > 64 or not tag.replace("_", "").isalnum():
            raise InvalidArgument(
                f"tag {tag[:80]!r} is invalid: 1-64 characters of letters, digits, '_'"
            )
    return tags


def _sniffed(head: bytes) -> tuple[str, str]:
    kind = sniff_kind(head)
    if kind is None:
        if not head:
            raise InvalidMedia("media is empty (0 bytes)")
        name = unsupported_name(head)
        if name:
            raise UnsupportedMedia(
                f"{name} is not supported; send JPEG, PNG, WebP, BMP, MP4, MOV or WebM"
            )
        raise UnsupportedMedia(
            "not a media type vigil stores: send JPEG, PNG, WebP, BMP, MP4, MOV or WebM"
        )
    return kind


async def stage_media(
    app: AppContext,
    company: str,
    folder_id: str,
    header: folders_pb2.UploadMediaHeader,
    chunks: AsyncIterator[bytes],
) -> Media:
    """Receive one media's bytes into a committed blob; returns its (unsaved) row."""
    tags = validate_tags(header.tags)
    meta = validate_meta(dict(header.meta), "media meta", meta_limits(app.settings))
    if CAPTURE_META_KEY in meta:
        raise InvalidArgument(
            f"media meta key {CAPTURE_META_KEY!r} is the server's; send the capture as "
            "header.capture"
        )
    # kept beside the client's meta (not counted against its limits): a video's frame times
    meta.update(capture_meta(header.capture))
    writer = await app.io(app.blobs.writer, app.settings.max_media_bytes)
    try:
        async for chunk in chunks:
            await app.io(writer.write, chunk)
        media_type, content_type = _sniffed(await app.io(writer.head, 64))
        if media_type == "IMAGE":
            limits = app.engine.config.image_limits
            if writer.size > limits.max_bytes:
                raise MediaTooLarge(
                    f"image is {writer.size} bytes; the limit is {limits.max_bytes} bytes "
                    "(VIGIL_MAX_IMAGE_BYTES)"
                )
            probe(await app.io(writer.read_all), limits)
        key = await app.io(writer.commit)
    except BaseException:
        await app.io(writer.abort)
        raise
    return Media(
        company_id=company,
        folder_id=folder_id,
        media_type=media_type,
        tags=tags,
        meta=meta,
        sha256=key,
        size=writer.size,
        content_type=content_type,
        declared_content_type=header.content_type[:100],
        original_name=header.original_name[:255],
        blob_key=key,
    )


async def discard_blobs(app: AppContext, keys: set[str]) -> None:
    """Delete staged blobs that no row refers to (after a failed upload)."""
    if not keys:
        return
    for key in await app.db(lambda s: folders.unreferenced_blobs(keys, session=s)):
        await app.io(app.blobs.delete, key)


async def receive_media(
    app: AppContext,
    company: str,
    header: folders_pb2.UploadMediaHeader,
    chunks: AsyncIterator[bytes],
) -> Media:
    """UploadMedia: stage the bytes, then record the row; nothing is left if either fails."""
    media = await stage_media(app, company, header.folder_id, header, chunks)
    try:
        return await app.db(
            lambda s: folders.add_media(
                media, session=s, max_per_folder=app.settings.max_media_per_folder
            )
        )
    except BaseException:
        await discard_blobs(app, {media.blob_key})
        raise
