"""The console's calls to the service: the client SDK's connection and the contract's stubs, one
channel for the console, each call with the signed-in person's access token (never a service
credential)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Sequence
from datetime import datetime
from typing import TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from vigil.client.connection import Connection
from vigil.client.errors import VigilRpcError
from vigil.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    collections_pb2,
    collections_pb2_grpc,
    common_pb2,
    folders_pb2,
    folders_pb2_grpc,
    statistics_pb2,
    statistics_pb2_grpc,
)

Reply = TypeVar("Reply")
#: A watch-list page shows at most this many faces.
MAX_FACES_SHOWN = 1000


def _stamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


class ConsoleClient:
    def __init__(self, connection: Connection, timeout: float) -> None:
        self.connection = connection
        self.timeout = timeout
        self._channel: grpc.aio.Channel | None = None

    @property
    def channel(self) -> grpc.aio.Channel:
        # made on first use: an aio channel belongs to the event loop that serves requests
        if self._channel is None:
            self._channel = self.connection.aio_channel()
        return self._channel

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()

    @staticmethod
    def metadata(token: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {token}"),)

    async def call(self, call: Awaitable[Reply]) -> Reply:
        try:
            return await call
        except grpc.RpcError as error:
            raise VigilRpcError.from_grpc(error) from None

    # ---- sign-in ----------------------------------------------------------------------------

    async def login(self, email: str, password: str) -> auth_pb2.TokenPair:
        stub = auth_pb2_grpc.AuthStub(self.channel)
        request = auth_pb2.LoginRequest(email=email, password=password)
        return await self.call(stub.Login(request, timeout=self.timeout))

    async def refresh(self, refresh_token: str) -> auth_pb2.TokenPair:
        stub = auth_pb2_grpc.AuthStub(self.channel)
        request = auth_pb2.RefreshRequest(refresh_token=refresh_token)
        return await self.call(stub.Refresh(request, timeout=self.timeout))

    async def whoami(self, token: str) -> auth_pb2.Principal:
        stub = auth_pb2_grpc.AuthStub(self.channel)
        return await self.call(
            stub.WhoAmI(
                auth_pb2.WhoAmIRequest(), timeout=self.timeout, metadata=self.metadata(token)
            )
        )

    # ---- folders ----------------------------------------------------------------------------

    async def list_folders(
        self,
        token: str,
        *,
        meta: dict[str, str],
        created_after: datetime | None,
        created_before: datetime | None,
        resolutions: Sequence[folders_pb2.Resolution.ValueType],
        page_size: int,
        page_token: str,
    ) -> folders_pb2.ListFoldersResponse:
        request = folders_pb2.ListFoldersRequest(
            meta=[
                folders_pb2.MetaFilter(key=k, op=folders_pb2.MetaFilter.OP_EQ, value=v)
                for k, v in meta.items()
            ],
            resolutions=resolutions,
            page_size=page_size,
            page_token=page_token,
            with_details=True,
        )
        if created_after is not None:
            request.created_after.CopyFrom(_stamp(created_after))
        if created_before is not None:
            request.created_before.CopyFrom(_stamp(created_before))
        stub = folders_pb2_grpc.FoldersStub(self.channel)
        return await self.call(
            stub.ListFolders(request, timeout=self.timeout, metadata=self.metadata(token))
        )

    async def get_folder(self, token: str, folder_id: str) -> folders_pb2.Folder:
        stub = folders_pb2_grpc.FoldersStub(self.channel)
        request = folders_pb2.GetFolderRequest(folder_id=folder_id)
        return await self.call(
            stub.GetFolder(request, timeout=self.timeout, metadata=self.metadata(token))
        )

    async def first_chunk(
        self, token: str, media_id: str
    ) -> tuple[folders_pb2.MediaInfo, bytes, AsyncIterator[bytes]]:
        """The media's description, its first bytes and the rest as a stream (so the console
        answers with the right content type before relaying the whole file)."""
        stub = folders_pb2_grpc.FoldersStub(self.channel)
        call = stub.DownloadMedia(
            folders_pb2.DownloadMediaRequest(media_id=media_id),
            timeout=self.timeout,
            metadata=self.metadata(token),
        )
        try:
            first = await call.read()
        except grpc.RpcError as error:
            raise VigilRpcError.from_grpc(error) from None
        if not isinstance(first, folders_pb2.MediaChunk):  # EOF: no chunk at all
            raise VigilRpcError("NOT_FOUND", "the media is empty")

        async def rest() -> AsyncIterator[bytes]:
            # read() to the end: a call read once cannot be iterated as well
            while isinstance(chunk := await call.read(), folders_pb2.MediaChunk):
                yield chunk.data

        return first.media, first.data, rest()

    # ---- operators and audit ----------------------------------------------------------------

    async def resolve(
        self, token: str, analysis_id: str, resolution: int, comment: str
    ) -> folders_pb2.Analysis:
        stub = auth_pb2_grpc.OperatorsStub(self.channel)
        request = auth_pb2.ResolveAnalysisRequest(
            analysis_id=analysis_id,
            resolution=resolution,  # type: ignore[arg-type]
            comment=comment,
        )
        return await self.call(
            stub.ResolveAnalysis(request, timeout=self.timeout, metadata=self.metadata(token))
        )

    async def audit(self, token: str, page_size: int = 200) -> list[auth_pb2.AuditEvent]:
        stub = auth_pb2_grpc.AdminStub(self.channel)
        request = auth_pb2.ListAuditEventsRequest(page_size=page_size)
        reply = await self.call(
            stub.ListAuditEvents(request, timeout=self.timeout, metadata=self.metadata(token))
        )
        return list(reply.events)


class WatchListCalls:
    """Collections (watch-lists) with the person's token."""

    def __init__(self, client: ConsoleClient) -> None:
        self.client = client

    def _stub(self) -> collections_pb2_grpc.CollectionsAsyncStub:
        return collections_pb2_grpc.CollectionsStub(self.client.channel)

    async def collections(self, token: str) -> list[collections_pb2.Collection]:
        request = collections_pb2.ListCollectionsRequest()
        reply = await self.client.call(
            self._stub().ListCollections(
                request, timeout=self.client.timeout, metadata=self.client.metadata(token)
            )
        )
        return list(reply.collections)

    async def faces(self, token: str, collection: str) -> list[collections_pb2.CollectionFace]:
        found: list[collections_pb2.CollectionFace] = []
        page_token = ""
        while len(found) < MAX_FACES_SHOWN:
            request = collections_pb2.ListFacesRequest(
                collection=collection, page_size=200, page_token=page_token
            )
            reply = await self.client.call(
                self._stub().ListFaces(
                    request, timeout=self.client.timeout, metadata=self.client.metadata(token)
                )
            )
            found += reply.faces
            page_token = reply.next_page_token
            if not page_token:
                break
        return found

    async def add(
        self, token: str, collection: str, label: str, photo: bytes, content_type: str
    ) -> collections_pb2.CollectionFace:
        request = collections_pb2.AddFaceRequest(
            collection=collection,
            image=common_pb2.Media(data=photo, content_type=content_type),
            person_label=label,
        )
        return await self.client.call(
            self._stub().AddFace(
                request, timeout=self.client.timeout, metadata=self.client.metadata(token)
            )
        )

    async def remove(self, token: str, collection: str, face_id: str) -> None:
        request = collections_pb2.RemoveFaceRequest(collection=collection, face_id=face_id)
        await self.client.call(
            self._stub().RemoveFace(
                request, timeout=self.client.timeout, metadata=self.client.metadata(token)
            )
        )

    async def search(
        self, token: str, collection: str, photo: bytes, content_type: str, min_sequence: int
    ) -> collections_pb2.SearchResponse:
        request = collections_pb2.SearchRequest(
            collection=collection,
            image=common_pb2.Media(data=photo, content_type=content_type),
            top_k=10,
            min_sequence=min_sequence,
        )
        return await self.client.call(
            self._stub().Search(
                request, timeout=self.client.timeout, metadata=self.client.metadata(token)
            )
        )


async def statistics(
    client: ConsoleClient, token: str, since: datetime | None, until: datetime | None
) -> statistics_pb2.StatisticsReport:
    """``Statistics.GetStatistics`` of the person's company (default: the last 30 days)."""
    request = statistics_pb2.GetStatisticsRequest()
    if since is not None:
        request.since.CopyFrom(_stamp(since))
    if until is not None:
        request.until.CopyFrom(_stamp(until))
    stub = statistics_pb2_grpc.StatisticsStub(client.channel)
    return await client.call(
        stub.GetStatistics(request, timeout=client.timeout, metadata=client.metadata(token))
    )
