"""The Folders API: folders, media, analyses — short adapters over storage and the worker."""

from __future__ import annotations

from collections.abc import AsyncIterator

from sqlmodel import Session

from vigil.inference.errors import InvalidArgument
from vigil.server.api import folders_converters as conv
from vigil.server.api.converters import moment
from vigil.server.api.folder_views import folder_details, watch
from vigil.server.api.media_upload import receive_media
from vigil.server.api.submit import submit
from vigil.server.api.validation import meta_limits
from vigil.server.context import AppContext
from vigil.server.rpc import Context
from vigil.server.security.permissions import may_choose_threshold
from vigil.server.security.principal import acting_company, current_principal
from vigil.storage import analyses, folders
from vigil.storage.folders import FolderQuery
from vigil.storage.tables import Analysis
from vigil.v1 import folders_pb2 as fp
from vigil.v1 import folders_pb2_grpc


class FoldersServicer(folders_pb2_grpc.FoldersServicer):
    def __init__(self, app: AppContext) -> None:
        self.app = app

    # ---- folders -----------------------------------------------------------------------------
    async def CreateFolder(self, request: fp.CreateFolderRequest, context: Context) -> fp.Folder:
        company, meta, settings = acting_company(), dict(request.meta), self.app.settings
        folder = await self.app.db(
            lambda s: folders.create_folder(
                meta,
                company_id=company,
                session=s,
                meta_limits=meta_limits(settings),
                max_per_hour=settings.folders_per_company_per_hour,
            )
        )
        return conv.folder_message(folder)

    async def GetFolder(self, request: fp.GetFolderRequest, context: Context) -> fp.Folder:
        company = acting_company()
        return await self.app.db(lambda s: folder_details(request.folder_id, company, s))

    async def UpdateFolderMeta(
        self, request: fp.UpdateFolderMetaRequest, context: Context
    ) -> fp.Folder:
        company = acting_company()
        set_, remove = dict(request.set), list(request.remove)
        folder = await self.app.db(
            lambda s: folders.update_folder_meta(
                request.folder_id,
                set_,
                remove,
                company_id=company,
                session=s,
                meta_limits=meta_limits(self.app.settings),
            )
        )
        return conv.folder_message(folder)

    async def DeleteFolder(
        self, request: fp.DeleteFolderRequest, context: Context
    ) -> fp.DeleteFolderResponse:
        company = acting_company()
        media, rows, orphans = await self.app.db(
            lambda s: folders.delete_folder(request.folder_id, company_id=company, session=s)
        )
        for key in orphans:  # after the commit: a failed delete never loses a referenced blob
            await self.app.io(self.app.blobs.delete, key)
        return fp.DeleteFolderResponse(media_deleted=media, analyses_deleted=rows)

    async def ListFolders(
        self, request: fp.ListFoldersRequest, context: Context
    ) -> fp.ListFoldersResponse:
        company, query, details = acting_company(), folder_query(request), request.with_details

        def work(session: Session) -> fp.ListFoldersResponse:
            rows, token = folders.list_folders(query, company_id=company, session=session)
            if details:
                items = [folder_details(f.id, company, session) for f in rows]
            else:
                items = [conv.folder_message(f) for f in rows]
            return fp.ListFoldersResponse(folders=items, next_page_token=token)

        return await self.app.db(work)

    # ---- media -------------------------------------------------------------------------------
    async def UploadMedia(
        self, request_iterator: AsyncIterator[fp.UploadMediaRequest], context: Context
    ) -> fp.MediaInfo:
        company = acting_company()
        iterator = aiter(request_iterator)
        first = await anext(iterator, None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidArgument("the first message of UploadMedia must be its header")
        header = first.header
        await self.app.db(
            lambda s: folders.get_folder(header.folder_id, company_id=company, session=s)
        )
        media = await receive_media(self.app, company, header, _chunks(iterator))
        return conv.media_info(media)

    async def GetMedia(self, request: fp.GetMediaRequest, context: Context) -> fp.MediaInfo:
        company = acting_company()
        media = await self.app.db(
            lambda s: folders.get_media(request.media_id, company_id=company, session=s)
        )
        return conv.media_info(media)

    async def DeleteMedia(
        self, request: fp.DeleteMediaRequest, context: Context
    ) -> fp.DeleteMediaResponse:
        company = acting_company()
        orphans = await self.app.db(
            lambda s: folders.delete_media(request.media_id, company_id=company, session=s)
        )
        for key in orphans:
            await self.app.io(self.app.blobs.delete, key)
        return fp.DeleteMediaResponse()

    async def DownloadMedia(
        self, request: fp.DownloadMediaRequest, context: Context
    ) -> AsyncIterator[fp.MediaChunk]:
        company = acting_company()
        media = await self.app.db(
            lambda s: folders.get_media(request.media_id, company_id=company, session=s)
        )
        chunks = self.app.blobs.iter_chunks(media.blob_key, self.app.settings.upload_chunk_bytes)
        first = True
        while True:
            chunk = await self.app.io(next, chunks, None)
            if chunk is None:
                break
            yield fp.MediaChunk(data=chunk, media=conv.media_info(media) if first else None)
            first = False
        if first:  # an empty blob still tells the caller what it is
            yield fp.MediaChunk(media=conv.media_info(media))

    # ---- analyses ----------------------------------------------------------------------------
    async def CreateAnalyses(
        self, request: fp.CreateAnalysesRequest, context: Context
    ) -> fp.CreateAnalysesResponse:
        principal = current_principal()
        may_choose = may_choose_threshold(principal.role, principal.result_mode)
        company, wanted = acting_company(), conv.analysis_requests(request.analyses, may_choose)
        rows = await self.app.db(
            lambda s: analyses.create_analyses(
                request.folder_id, wanted, company_id=company, session=s
            )
        )
        self.app.jobs_queued.set()
        return fp.CreateAnalysesResponse(analyses=[conv.analysis_message(a) for a in rows])

    async def GetAnalysis(self, request: fp.GetAnalysisRequest, context: Context) -> fp.Analysis:
        company = acting_company()
        row = await self.app.db(
            lambda s: analyses.get_analysis(request.analysis_id, company_id=company, session=s)
        )
        return conv.analysis_message(row)

    async def ListAnalyses(
        self, request: fp.ListAnalysesRequest, context: Context
    ) -> fp.ListAnalysesResponse:
        company = acting_company()

        def work(session: Session) -> list[Analysis]:
            folders.get_folder(request.folder_id, company_id=company, session=session)
            return analyses.folder_analyses(request.folder_id, company_id=company, session=session)

        rows = await self.app.db(work)
        return fp.ListAnalysesResponse(analyses=[conv.analysis_message(a) for a in rows])

    async def WatchFolder(
        self, request: fp.WatchFolderRequest, context: Context
    ) -> AsyncIterator[fp.FolderEvent]:
        async for event in watch(self.app, request.folder_id, acting_company()):
            yield event

    async def Submit(
        self, request_iterator: AsyncIterator[fp.SubmitRequest], context: Context
    ) -> fp.Folder:
        return await submit(self.app, acting_company(), request_iterator)


async def _chunks(iterator: AsyncIterator[fp.UploadMediaRequest]) -> AsyncIterator[bytes]:
    async for message in iterator:
        if message.WhichOneof("part") != "chunk":
            raise InvalidArgument("after the header, UploadMedia takes chunks only")
        yield message.chunk


def folder_query(request: fp.ListFoldersRequest) -> FolderQuery:
    """Validate ListFoldersRequest into a repository query."""
    query = FolderQuery()
    for index, item in enumerate(request.meta):
        op = conv.enum_name(fp.MetaFilter.Op, "OP_", item.op, f"meta[{index}].op")
        if not item.key:
            raise InvalidArgument(f"meta[{index}].key is required")
        if op == "NE":
            query.meta_ne.append((item.key, item.value))
        else:  # OP_EQ, and UNSPECIFIED read as equality
            query.meta_eq.append((item.key, item.value))
    query.created_after = moment(request.created_after, request.HasField("created_after"))
    query.created_before = moment(request.created_before, request.HasField("created_before"))
    query.updated_after = moment(request.updated_after, request.HasField("updated_after"))
    query.updated_before = moment(request.updated_before, request.HasField("updated_before"))
    query.resolutions = [
        conv.enum_name(fp.Resolution, "RESOLUTION_", r, "resolutions") for r in request.resolutions
    ]
    presence = conv.enum_name(
        fp.ListFoldersRequest.AnalysesFilter, "ANALYSES_FILTER_", request.analyses, "analyses"
    )
    query.with_analyses = {"ANY": None, "WITH": True, "WITHOUT": False}[presence]
    order = conv.enum_name(fp.ListFoldersRequest.Order, "ORDER_", request.order, "order")
    query.order_by = "created_at" if order.startswith("CREATED") else "updated_at"
    query.descending = order.endswith("DESC")
    if request.page_size < 0 or request.page_size > 500:
        raise InvalidArgument(f"page_size is {request.page_size}; use 1..500 (0 means 50)")
    query.page_size = request.page_size or 50
    query.page_token = request.page_token
    return query
