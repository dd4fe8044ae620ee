"""The persistent API in the blocking client: folders, media, analyses, Submit, collections,
webhooks and active-liveness challenges (mixed into :class:`vigil.client.VigilClient`).

Replies are the contract's messages (``vigil.v1``), typed by its stubs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import TypeVar

import grpc

from vigil.client import _persistent_requests as build
from vigil.client._persistent_requests import AnalysisLike, MediaSource, Progress
from vigil.client._requests import ImageLike
from vigil.client.errors import VigilRpcError
from vigil.v1 import (
    challenges_pb2,
    challenges_pb2_grpc,
    collections_pb2,
    collections_pb2_grpc,
    folders_pb2,
    folders_pb2_grpc,
    webhooks_pb2,
    webhooks_pb2_grpc,
)

Request = TypeVar("Request")
Reply = TypeVar("Reply")

#: Media for Submit: a source, or (source, tags).
SubmitMedia = MediaSource | tuple[MediaSource, Iterable[str]]


def media_items(media: Iterable[SubmitMedia]) -> list[tuple[MediaSource, Iterable[str]]]:
    return [item if isinstance(item, tuple) else (item, ()) for item in media]


class PersistentCalls:
    """Folders, media, analyses, collections, webhooks and challenges (blocking)."""

    timeout: float | None
    _channel: grpc.Channel
    _metadata: tuple[tuple[str, str], ...]

    def _persistent_stubs(self) -> None:
        self._folders = folders_pb2_grpc.FoldersStub(self._channel)
        self._collections = collections_pb2_grpc.CollectionsStub(self._channel)
        self._webhooks = webhooks_pb2_grpc.WebhooksStub(self._channel)
        self._challenges = challenges_pb2_grpc.ChallengesStub(self._channel)

    def _unary(
        self,
        method: grpc.UnaryUnaryMultiCallable[Request, Reply],
        request: Request,
        timeout: float | None = None,
    ) -> Reply:
        try:
            return method(request, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise VigilRpcError.from_grpc(error) from None

    def _streamed(
        self,
        method: grpc.StreamUnaryMultiCallable[Request, Reply],
        requests: Iterator[Request],
        timeout: float | None = None,
    ) -> Reply:
        try:
            return method(requests, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise VigilRpcError.from_grpc(error) from None

    # ---- folders ----------------------------------------------------------------------------

    def create_folder(self, meta: Mapping[str, str] | None = None) -> folders_pb2.Folder:
        request = folders_pb2.CreateFolderRequest(meta=dict(meta or {}))
        return self._unary(self._folders.CreateFolder, request)

    def get_folder(self, folder_id: str) -> folders_pb2.Folder:
        return self._unary(
            self._folders.GetFolder, folders_pb2.GetFolderRequest(folder_id=folder_id)
        )

    def list_folders(
        self,
        meta: Mapping[str, str] | None = None,
        *,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        page_size: int = 100,
    ) -> Iterator[folders_pb2.Folder]:
        """The folders whose meta has every given key=value and created in the range (newest
        first), page after page as the iteration goes."""
        token = ""
        while True:
            request = build.list_folders(meta, created_after, created_before, page_size, token)
            page = self._unary(self._folders.ListFolders, request)
            yield from page.folders
            token = page.next_page_token
            if not token:
                return

    def delete_folder(self, folder_id: str) -> folders_pb2.DeleteFolderResponse:
        request = folders_pb2.DeleteFolderRequest(folder_id=folder_id)
        return self._unary(self._folders.DeleteFolder, request)

    def upload_media(
        self,
        folder_id: str,
        source: MediaSource,
        *,
        tags: Iterable[str] = (),
        meta: Mapping[str, str] | None = None,
        content_type: str = "",
        original_name: str = "",
        progress: Progress | None = None,
    ) -> folders_pb2.MediaInfo:
        """Upload a path, bytes or binary file object in 1 MiB chunks; ``progress(sent, total)``
        is called after each (total None when a file object's size is unknown)."""
        requests = build.upload(
            folder_id, source, tags, meta, content_type, original_name, progress
        )
        return self._streamed(self._folders.UploadMedia, requests)

    # ---- analyses ---------------------------------------------------------------------------

    def create_analyses(
        self, folder_id: str, analyses: Iterable[AnalysisLike]
    ) -> list[folders_pb2.Analysis]:
        """Queue analyses (``["LIVENESS", "BIOMETRY"]``) on the folder's media."""
        request = folders_pb2.CreateAnalysesRequest(
            folder_id=folder_id, analyses=[build.analysis(a) for a in analyses]
        )
        return list(self._unary(self._folders.CreateAnalyses, request).analyses)

    def watch(
        self, folder_id: str, timeout: float | None = None
    ) -> Iterator[folders_pb2.FolderEvent]:
        """The folder's events as its analyses change, until the one marked ``final``."""
        call = self._folders.WatchFolder(
            folders_pb2.WatchFolderRequest(folder_id=folder_id),
            timeout=timeout or self.timeout,
            metadata=self._metadata,
        )
        try:
            for event in call:
                yield event
                if event.final:
                    return
        except grpc.RpcError as error:
            raise VigilRpcError.from_grpc(error) from None
        finally:
            call.cancel()

    def wait(self, folder_id: str, timeout: float | None = None) -> folders_pb2.Folder:
        """The folder once all its analyses are final (watching, no polling)."""
        for _event in self.watch(folder_id, timeout):
            pass
        return self.get_folder(folder_id)

    def submit(
        self,
        media: Iterable[SubmitMedia],
        analyses: Iterable[AnalysisLike],
        meta: Mapping[str, str] | None = None,
    ) -> folders_pb2.Folder:
        """One call: a folder with ``meta``, its media and its analyses (queued)."""
        requests = build.submit(media_items(media), analyses, meta)
        return self._streamed(self._folders.Submit, requests)

    # ---- collections ------------------------------------------------------------------------

    def create_collection(
        self, name: str, meta: Mapping[str, str] | None = None
    ) -> collections_pb2.Collection:
        request = collections_pb2.CreateCollectionRequest(name=name, meta=dict(meta or {}))
        return self._unary(self._collections.CreateCollection, request)

    def delete_collection(self, name: str) -> int:
        """Delete the collection; returns how many faces it held."""
        request = collections_pb2.DeleteCollectionRequest(name=name)
        return self._unary(self._collections.DeleteCollection, request).faces_deleted

    def add_person(
        self,
        collection: str,
        person_label: str,
        photos: Iterable[ImageLike],
        meta: Mapping[str, str] | None = None,
    ) -> list[collections_pb2.CollectionFace]:
        """Add each photo's face under ``person_label``."""
        return [
            self._unary(
                self._collections.AddFace, build.add_face(collection, photo, person_label, meta)
            )
            for photo in photos
        ]

    def search(
        self, collection: str, photo: ImageLike, top_k: int = 5, threshold: float = 0.0
    ) -> collections_pb2.SearchResponse:
        """The collection's nearest faces to the photo's (threshold 0: the server's)."""
        request = build.search(collection, photo, top_k, threshold)
        return self._unary(self._collections.Search, request)

    def remove_face(self, collection: str, face_id: str) -> None:
        request = collections_pb2.RemoveFaceRequest(collection=collection, face_id=face_id)
        self._unary(self._collections.RemoveFace, request)

    # ---- webhooks ---------------------------------------------------------------------------

    def create_webhook(self, url: str, folder_id: str = "") -> webhooks_pb2.Webhook:
        """Subscribe ``url`` to one folder's events (or all the company's); the reply's
        ``secret`` (shown once) verifies deliveries: :func:`vigil.client.verify_delivery`."""
        request = webhooks_pb2.CreateWebhookRequest(url=url, folder_id=folder_id)
        return self._unary(self._webhooks.CreateWebhook, request)

    def delete_webhook(self, webhook_id: str) -> None:
        request = webhooks_pb2.DeleteWebhookRequest(webhook_id=webhook_id)
        self._unary(self._webhooks.DeleteWebhook, request)

    # ---- challenges (active liveness) -------------------------------------------------------

    def create_challenge(
        self, count: int = 0, allowed: Iterable[str] = ()
    ) -> challenges_pb2.Challenge:
        """A challenge: gestures to perform in order (``allowed`` by name: "SMILE", …)."""
        request = build.create_challenge(count, allowed)
        return self._unary(self._challenges.CreateChallenge, request)

    def answer_challenge(
        self, challenge_id: str, video: ImageLike
    ) -> challenges_pb2.ChallengeVerdict:
        """Answer with a video file (path or bytes); the reply's ``verdict_token`` verifies
        offline with :func:`vigil.client.verify_challenge_verdict`."""
        request = build.answer_challenge(challenge_id, video)
        return self._unary(self._challenges.AnswerChallenge, request)
