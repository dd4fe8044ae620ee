"""Submit: media + metadata + analyses in one client stream, the finished folder in the reply.

Everything is staged first (blobs committed, rows not yet written); the folder, its media and
its analyses are then written in one transaction, so a stream that breaks off or carries a bad
part leaves nothing behind. The reply waits until every analysis is final.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from sqlmodel import Session

from vigil.inference.errors import InvalidArgument
from vigil.server.api import folders_converters as conv
from vigil.server.api.folder_views import folder_details, watch
from vigil.server.api.media_upload import discard_blobs, stage_media
from vigil.server.api.validation import meta_limits
from vigil.server.context import AppContext
from vigil.server.security.permissions import may_choose_threshold
from vigil.server.security.principal import current_principal
from vigil.storage import analyses, folders
from vigil.storage.tables import Media, new_id
from vigil.v1 import folders_pb2

MAX_SUBMIT_MEDIA = 16


class _Parts:
    """The request stream with one message of lookahead."""

    def __init__(self, stream: AsyncIterator[folders_pb2.SubmitRequest]) -> None:
        self._stream = aiter(stream)
        self.next: folders_pb2.SubmitRequest | None = None

    async def advance(self) -> folders_pb2.SubmitRequest | None:
        self.next = await anext(self._stream, None)
        return self.next

    async def chunks(self) -> AsyncIterator[bytes]:
        """The chunks of the current media; stops at the next non-chunk message."""
        while (message := await self.advance()) is not None and message.WhichOneof(
            "part"
        ) == "chunk":
            yield message.chunk


async def submit(
    app: AppContext, company: str, stream: AsyncIterator[folders_pb2.SubmitRequest]
) -> folders_pb2.Folder:
    parts = _Parts(stream)
    first = await parts.advance()
    if first is None or first.WhichOneof("part") != "header":
        raise InvalidArgument("the first message of Submit must be its header")
    meta = dict(first.header.meta)
    principal = current_principal()
    may_choose = may_choose_threshold(principal.role, principal.result_mode)
    wanted = conv.analysis_requests(first.header.analyses, may_choose)
    settings = app.settings
    max_media = min(MAX_SUBMIT_MEDIA, settings.max_media_per_folder or MAX_SUBMIT_MEDIA)
    folder_id = new_id()
    staged: list[Media] = []
    try:
        message = await parts.advance()
        while message is not None:
            if message.WhichOneof("part") != "media":
                raise InvalidArgument("Submit expects a media header before each media's chunks")
            if len(staged) == max_media:
                raise InvalidArgument(
                    f"at most {max_media} media per Submit (and VIGIL_MAX_MEDIA_PER_FOLDER)"
                )
            staged.append(await stage_media(app, company, folder_id, message.media, parts.chunks()))
            message = parts.next
        if not staged:
            raise InvalidArgument("Submit carried no media")

        def write(session: Session) -> None:
            folder = folders.create_folder(
                meta,
                company_id=company,
                session=session,
                folder_id=folder_id,
                meta_limits=meta_limits(settings),
                max_per_hour=settings.folders_per_company_per_hour,
            )
            for media in staged:
                folders.add_media(media, session=session)
            analyses.create_analyses(folder.id, wanted, company_id=company, session=session)

        await app.db(write)
    except BaseException:
        await discard_blobs(app, {m.blob_key for m in staged})
        raise
    app.jobs_queued.set()
    async for event in watch(app, folder_id, company):
        if event.final:
            break
    return await app.db(lambda s: folder_details(folder_id, company, s))
