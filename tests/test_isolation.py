"""Company isolation: a caller of company A gets NOT_FOUND for every object of company B —
folders, media, analyses, collections, webhooks — through the real server on both databases."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import grpc
import pytest

from tests.conftest import FACES, ServerThread, read
from vigil.server.security.permissions import PERMISSIONS
from vigil.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    collections_pb2,
    collections_pb2_grpc,
    common_pb2,
    folders_pb2,
    folders_pb2_grpc,
    webhooks_pb2,
    webhooks_pb2_grpc,
)


def _objects_of_b(server: ServerThread, company_b: str) -> dict[str, str]:
    key = server.new_key("SERVICE", company=company_b)
    with server.channel(key) as channel:
        folders = folders_pb2_grpc.FoldersStub(channel)
        folder = folders.CreateFolder(folders_pb2.CreateFolderRequest(meta={"transaction_id": "b"}))

        def parts() -> Iterator[folders_pb2.UploadMediaRequest]:
            yield folders_pb2.UploadMediaRequest(
                header=folders_pb2.UploadMediaHeader(folder_id=folder.id, tags=["photo_selfie"])
            )
            yield folders_pb2.UploadMediaRequest(chunk=read(FACES / "obama.jpg"))

        media = folders.UploadMedia(parts())
        analysis = folders.CreateAnalyses(
            folders_pb2.CreateAnalysesRequest(
                folder_id=folder.id,
                analyses=[folders_pb2.AnalysisRequest(type=folders_pb2.ANALYSIS_TYPE_LIVENESS)],
            )
        ).analyses[0]
        collections = collections_pb2_grpc.CollectionsStub(channel)
        collections.CreateCollection(collections_pb2.CreateCollectionRequest(name="watch-b"))
        face = collections.AddFace(
            collections_pb2.AddFaceRequest(
                collection="watch-b", image=common_pb2.Media(data=read(FACES / "biden.jpg"))
            )
        )
        hook = webhooks_pb2_grpc.WebhooksStub(channel).CreateWebhook(
            webhooks_pb2.CreateWebhookRequest(url="http://127.0.0.1:9/hook", folder_id=folder.id)
        )
        keys = auth_pb2_grpc.AdminStub(server.channel(server.admin_key))
        other_key = keys.ListApiKeys(
            auth_pb2.ListApiKeysRequest(),
            metadata=(("vigil-company", company_b),),
        ).keys[0]
    return {
        "folder": folder.id,
        "media": media.id,
        "analysis": analysis.id,
        "face": face.id,
        "webhook": hook.id,
        "api_key": other_key.id,
    }


@pytest.mark.parametrize("role", ["CLIENT", "CLIENT_ADMIN", "SERVICE", "CLIENT_OPERATOR"])
def test_another_companys_objects_are_not_found(api_server: ServerThread, role: str) -> None:
    suffix = uuid.uuid4().hex[:8]
    b = _objects_of_b(api_server, f"iso-b-{suffix}")
    key_a = api_server.new_key(role, company=f"iso-a-{suffix}")
    with api_server.channel(key_a) as channel:
        folders = folders_pb2_grpc.FoldersStub(channel)
        collections = collections_pb2_grpc.CollectionsStub(channel)
        webhooks = webhooks_pb2_grpc.WebhooksStub(channel)
        admin = auth_pb2_grpc.AdminStub(channel)
        verdicts = auth_pb2_grpc.VerdictsStub(channel)
        operators = auth_pb2_grpc.OperatorsStub(channel)
        image = common_pb2.Media(data=read(FACES / "obama2.jpg"))
        calls: dict[str, Callable[[], object]] = {
            "Folders/GetFolder": lambda: folders.GetFolder(
                folders_pb2.GetFolderRequest(folder_id=b["folder"])
            ),
            "Folders/UpdateFolderMeta": lambda: folders.UpdateFolderMeta(
                folders_pb2.UpdateFolderMetaRequest(folder_id=b["folder"], set={"k": "v"})
            ),
            "Folders/DeleteFolder": lambda: folders.DeleteFolder(
                folders_pb2.DeleteFolderRequest(folder_id=b["folder"])
            ),
            "Folders/GetMedia": lambda: folders.GetMedia(
                folders_pb2.GetMediaRequest(media_id=b["media"])
            ),
            "Folders/DownloadMedia": lambda: list(
                folders.DownloadMedia(folders_pb2.DownloadMediaRequest(media_id=b["media"]))
            ),
            "Folders/DeleteMedia": lambda: folders.DeleteMedia(
                folders_pb2.DeleteMediaRequest(media_id=b["media"])
            ),
            "Folders/GetAnalysis": lambda: folders.GetAnalysis(
                folders_pb2.GetAnalysisRequest(analysis_id=b["analysis"])
            ),
            "Folders/ListAnalyses": lambda: folders.ListAnalyses(
                folders_pb2.ListAnalysesRequest(folder_id=b["folder"])
            ),
            "Folders/CreateAnalyses": lambda: folders.CreateAnalyses(
                folders_pb2.CreateAnalysesRequest(
                    folder_id=b["folder"],
                    analyses=[folders_pb2.AnalysisRequest(type=folders_pb2.ANALYSIS_TYPE_LIVENESS)],
                )
            ),
            "Folders/WatchFolder": lambda: list(
                folders.WatchFolder(folders_pb2.WatchFolderRequest(folder_id=b["folder"]))
            ),
            "Folders/UploadMedia": lambda: folders.UploadMedia(
                iter(
                    [
                        folders_pb2.UploadMediaRequest(
                            header=folders_pb2.UploadMediaHeader(folder_id=b["folder"])
                        )
                    ]
                )
            ),
            "Collections/Search": lambda: collections.Search(
                collections_pb2.SearchRequest(collection="watch-b", image=image)
            ),
            "Collections/AddFace": lambda: collections.AddFace(
                collections_pb2.AddFaceRequest(collection="watch-b", image=image)
            ),
            "Collections/AddFace (B's media)": lambda: collections.AddFace(
                collections_pb2.AddFaceRequest(collection="watch-b", media_id=b["media"])
            ),
            "Collections/RemoveFace": lambda: collections.RemoveFace(
                collections_pb2.RemoveFaceRequest(collection="watch-b", face_id=b["face"])
            ),
            "Collections/ListFaces": lambda: collections.ListFaces(
                collections_pb2.ListFacesRequest(collection="watch-b")
            ),
            "Collections/DeleteCollection": lambda: collections.DeleteCollection(
                collections_pb2.DeleteCollectionRequest(name="watch-b")
            ),
            "Webhooks/DeleteWebhook": lambda: webhooks.DeleteWebhook(
                webhooks_pb2.DeleteWebhookRequest(webhook_id=b["webhook"])
            ),
            "Webhooks/ListDeliveries": lambda: webhooks.ListDeliveries(
                webhooks_pb2.ListDeliveriesRequest(webhook_id=b["webhook"])
            ),
            "Webhooks/CreateWebhook (B's folder)": lambda: webhooks.CreateWebhook(
                webhooks_pb2.CreateWebhookRequest(url="http://127.0.0.1:9/x", folder_id=b["folder"])
            ),
            "Admin/RevokeApiKey": lambda: admin.RevokeApiKey(
                auth_pb2.RevokeApiKeyRequest(api_key_id=b["api_key"])
            ),
            "Verdicts/GetVerdict": lambda: verdicts.GetVerdict(
                auth_pb2.GetVerdictRequest(folder_id=b["folder"])
            ),
            "Operators/ResolveAnalysis": lambda: operators.ResolveAnalysis(
                auth_pb2.ResolveAnalysisRequest(
                    analysis_id=b["analysis"], resolution=folders_pb2.RESOLUTION_SUCCESS
                )
            ),
        }
        leaks: list[str] = []
        for name, attempt in calls.items():
            try:
                attempt()
            except grpc.RpcError as error:
                rule = PERMISSIONS["/vigil.v1." + name.split(" ")[0]]
                expected = (
                    grpc.StatusCode.NOT_FOUND
                    if role in rule.roles
                    else grpc.StatusCode.PERMISSION_DENIED
                )
                if error.code() != expected:
                    leaks.append(
                        f"{name}: {error.code().name} ({error.details()}), expected {expected.name}"
                    )
                continue
            leaks.append(f"{name}: succeeded")
        assert not leaks, "\n".join(leaks)
        for listing in (
            lambda: folders.ListFolders(folders_pb2.ListFoldersRequest()).folders,
            lambda: (
                collections.ListCollections(collections_pb2.ListCollectionsRequest()).collections
            ),
            lambda: webhooks.ListWebhooks(webhooks_pb2.ListWebhooksRequest()).webhooks,
        ):
            try:
                assert list(listing()) == []
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    # B's objects are all still there.
    with api_server.channel(api_server.new_key("SERVICE", company=f"iso-b-{suffix}")) as channel:
        got = folders_pb2_grpc.FoldersStub(channel).GetFolder(
            folders_pb2.GetFolderRequest(folder_id=b["folder"])
        )
        assert dict(got.meta) == {"transaction_id": "b"} and len(got.media) == 1
