"""The Collections API (watch-lists, 1:N search): short adapters over storage and the index."""

from __future__ import annotations

import numpy as np
from sqlmodel import Session

from vigil.inference.catalog import DLIB_RESNET
from vigil.inference.errors import InvalidArgument, PermissionDenied
from vigil.inference.types import Subject
from vigil.server.api import collections_converters as cc
from vigil.server.api import converters as conv
from vigil.server.context import AppContext
from vigil.server.rpc import Context
from vigil.server.security.permissions import may_choose_threshold
from vigil.server.security.principal import acting_company, current_principal
from vigil.server.settings import Settings
from vigil.storage import collections as repo
from vigil.storage import folders
from vigil.storage.common import page_size
from vigil.storage.face_index import FaceIndex, IndexConfig
from vigil.storage.results import FaceRecord
from vigil.v1 import collections_pb2, collections_pb2_grpc, common_pb2

_MODEL = (DLIB_RESNET.name, DLIB_RESNET.version)


def index_config(settings: Settings) -> IndexConfig:
    """How this replica indexes collections (VIGIL_ANN_*, VIGIL_INDEX_SNAPSHOT_DIR)."""
    return IndexConfig(
        ann_min_faces=settings.ann_min_faces,
        ann_candidates=settings.ann_candidates,
        ann_dtype=settings.ann_dtype,
        snapshot_dir=settings.resolved_index_snapshot_dir,
    )


class CollectionsServicer(collections_pb2_grpc.CollectionsServicer):
    def __init__(self, app: AppContext) -> None:
        self.app = app
        self.index: FaceIndex = app.face_index

    async def CreateCollection(
        self, request: collections_pb2.CreateCollectionRequest, context: Context
    ) -> collections_pb2.Collection:
        company_id = acting_company()
        name, meta = request.name, dict(request.meta)
        created = await self.app.db(
            lambda s: repo.create_collection(name, meta, company_id=company_id, session=s)
        )
        return cc.collection_message(created)

    async def ListCollections(
        self, request: collections_pb2.ListCollectionsRequest, context: Context
    ) -> collections_pb2.ListCollectionsResponse:
        company_id = acting_company()
        rows = await self.app.db(lambda s: repo.list_collections(company_id=company_id, session=s))
        return collections_pb2.ListCollectionsResponse(
            collections=[cc.collection_message(row) for row in rows]
        )

    async def DeleteCollection(
        self, request: collections_pb2.DeleteCollectionRequest, context: Context
    ) -> collections_pb2.DeleteCollectionResponse:
        company_id = acting_company()
        name = cc.require_collection(request.name)

        def work(session: Session) -> tuple[str, int]:
            collection_id = repo.get_collection(name, company_id=company_id, session=session).id
            return collection_id, repo.delete_collection(
                name, company_id=company_id, session=session
            )

        collection_id, deleted = await self.app.db(work)
        self.index.evict(company_id, collection_id)
        return collections_pb2.DeleteCollectionResponse(faces_deleted=deleted)

    async def AddFace(
        self, request: collections_pb2.AddFaceRequest, context: Context
    ) -> collections_pb2.CollectionFace:
        company_id = acting_company()
        name = cc.require_collection(request.collection)
        source = request.WhichOneof("source")
        deadline = conv.deadline_of(context)
        subject: Subject | None = None
        media_id: str | None = None
        if source == "template":
            embedding, model = self._template(request.template), _MODEL
        elif source == "image":
            data = conv.require_media(request.image, "image")
            result = await self.app.engine.embed(data, False, deadline)
            embedding, subject, model = result.embedding, result.subject, _MODEL
        elif source == "media_id":
            if not request.media_id:
                raise InvalidArgument("media_id must not be empty")
            media_id = request.media_id
            data = await self._media_bytes(media_id, company_id)
            result = await self.app.engine.embed(data, False, deadline)
            embedding, subject, model = result.embedding, result.subject, _MODEL
        else:
            raise InvalidArgument("a source is required: set image, media_id or template")
        new = repo.NewFace(
            embedding=embedding,
            model_name=model[0],
            model_version=model[1],
            person_label=request.person_label,
            meta=dict(request.meta),
            source_media_id=media_id,
            face=FaceRecord.of(subject.face) if subject is not None else None,
        )
        _, face, sequence = await self.app.db(
            lambda s: repo.add_face_with_sequence(name, new, company_id=company_id, session=s)
        )
        message = cc.collection_face_message(face, name)
        message.sequence = sequence
        return message

    async def RemoveFace(
        self, request: collections_pb2.RemoveFaceRequest, context: Context
    ) -> collections_pb2.RemoveFaceResponse:
        company_id = acting_company()
        name = cc.require_collection(request.collection)
        if not request.face_id:
            raise InvalidArgument("face_id is required")
        face_id = request.face_id
        sequence = await self.app.db(
            lambda s: repo.remove_face(name, face_id, company_id=company_id, session=s)
        )
        return collections_pb2.RemoveFaceResponse(sequence=sequence)

    async def ListFaces(
        self, request: collections_pb2.ListFacesRequest, context: Context
    ) -> collections_pb2.ListFacesResponse:
        company_id = acting_company()
        name = cc.require_collection(request.collection)
        size = page_size(request.page_size)
        token = request.page_token
        _, faces, next_token = await self.app.db(
            lambda s: repo.list_faces(name, size, token, company_id=company_id, session=s)
        )
        return collections_pb2.ListFacesResponse(
            faces=[cc.collection_face_message(face, name) for face in faces],
            next_page_token=next_token,
        )

    async def Search(
        self, request: collections_pb2.SearchRequest, context: Context
    ) -> collections_pb2.SearchResponse:
        company_id = acting_company()
        name = cc.require_collection(request.collection)
        top_k = cc.top_k_of(request.top_k)
        principal = current_principal()
        if request.threshold and not may_choose_threshold(principal.role, principal.result_mode):
            # the permission table already keeps SAFE credentials out of Search; this holds even
            # if it changes
            raise PermissionDenied("a SAFE (front-end) credential may not choose a threshold")
        threshold = cc.threshold_of(
            request.threshold, self.app.engine.config.thresholds.search_distance
        )
        min_sequence = cc.min_sequence_of(request.min_sequence)
        query = request.WhichOneof("query")
        subject: Subject | None = None
        if query == "template":
            embedding, model = self._template(request.template), _MODEL
        elif query == "image":
            data = conv.require_media(request.image, "image")
            result = await self.app.engine.embed(data, False, conv.deadline_of(context))
            embedding, subject, model = result.embedding, result.subject, _MODEL
        else:
            raise InvalidArgument("a query is required: set image or template")

        def work(session: Session) -> collections_pb2.SearchResponse:
            found = self.index.search_detailed(
                company_id,
                name,
                embedding,
                top_k,
                session=session,
                model=model,
                min_sequence=min_sequence,
            )
            rows = repo.faces_by_id(
                found.collection.id,
                [hit.face_id for hit in found.hits],
                company_id=company_id,
                session=session,
            )
            return collections_pb2.SearchResponse(
                # A face removed since the matrix was loaded is left out rather than invented.
                hits=[
                    cc.search_hit(hit, rows[hit.face_id], name, threshold)
                    for hit in found.hits
                    if hit.face_id in rows
                ],
                threshold=threshold,
                searched=found.searched,
                search_ms=found.search_ms,
                sequence=found.sequence,
            )

        response = await self.app.db(work)
        if subject is not None:
            response.face.CopyFrom(conv.face_message(subject.face))
        return response

    def _template(self, template: common_pb2.Template) -> np.ndarray:
        """A caller's template, checked against the server's model (an empty model means it)."""
        values = conv.template_values(template)
        return self.app.engine.check_template(values, template.model, template.model_version)

    async def _media_bytes(self, media_id: str, company_id: str) -> bytes:
        media = await self.app.db(
            lambda s: folders.get_media(media_id, company_id=company_id, session=s)
        )
        if media.media_type != "IMAGE":
            raise InvalidArgument(
                f"media {media_id} is a {media.media_type}; faces come from images"
            )
        return await self.app.io(self.app.blobs.get, media.blob_key)
