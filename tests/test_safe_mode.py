"""A SAFE-only credential never receives a score, a box, a landmark or a template — in any RPC.

Each RPC a SAFE key may call is called with a request that produces real data (on the real
models), and the whole reply is searched for fields that carry biometric detail; the RPCs whose
answer is biometric by nature are refused with PERMISSION_DENIED.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message

from tests.conftest import FACES, SPOOF, ServerThread, read
from vigil.client import _requests as build
from vigil.server.security.permissions import PERMISSIONS
from vigil.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    collections_pb2,
    collections_pb2_grpc,
    common_pb2,
    folders_pb2,
    folders_pb2_grpc,
    instant_pb2,
    instant_pb2_grpc,
    video_pb2,
    webhooks_pb2,
    webhooks_pb2_grpc,
)

#: Fields that carry scores, geometry, templates or model detail.
BIOMETRIC = frozenset(
    {
        "score", "distance", "similarity", "box", "landmarks", "detection_score", "values",
        "real_probability", "threshold", "thresholds", "distance_threshold", "similarity_threshold",
        "models", "results", "decisive", "face", "faces", "matches", "template", "timings",
        "sha256", "frames", "best_shot", "signals", "data",
    }
)  # fmt: skip


def leaks(message: Message, where: str = "") -> list[str]:
    found = []
    for field, value in message.ListFields():
        name = f"{where}.{field.name}" if where else field.name
        if field.name in BIOMETRIC:
            found.append(name)
        elif field.message_type is not None and not field.message_type.GetOptions().map_entry:
            for item in value if field.is_repeated else [value]:
                found.extend(leaks(item, name))
    return found


def upload(
    stub: folders_pb2_grpc.FoldersStub, folder_id: str, path: Path, tag: str
) -> folders_pb2.MediaInfo:
    def parts() -> Iterator[folders_pb2.UploadMediaRequest]:
        header = folders_pb2.UploadMediaHeader(folder_id=folder_id, tags=[tag])
        yield folders_pb2.UploadMediaRequest(header=header)
        yield folders_pb2.UploadMediaRequest(chunk=read(path))

    return stub.UploadMedia(parts())


@pytest.fixture
def prepared(api_server: ServerThread) -> dict[str, str]:
    """A company with a finished folder (liveness, biometry in the grey zone), a collection,
    a webhook; a FULL key made them, SAFE keys will read them."""
    company = f"safe-{uuid.uuid4().hex[:8]}"
    full = api_server.new_key("SERVICE", company=company)
    with api_server.channel(full) as channel:
        folders = folders_pb2_grpc.FoldersStub(channel)
        folder = folders.CreateFolder(folders_pb2.CreateFolderRequest(meta={"transaction_id": "t"}))
        media = upload(folders, folder.id, FACES / "obama.jpg", "photo_id_front")
        upload(folders, folder.id, FACES / "obama2.jpg", "photo_selfie")
        created = folders.CreateAnalyses(
            folders_pb2.CreateAnalysesRequest(
                folder_id=folder.id,
                analyses=[
                    folders_pb2.AnalysisRequest(type=folders_pb2.ANALYSIS_TYPE_LIVENESS),
                    folders_pb2.AnalysisRequest(
                        type=folders_pb2.ANALYSIS_TYPE_BIOMETRY, threshold=0.38
                    ),
                ],
            )
        )
        list(folders.WatchFolder(folders_pb2.WatchFolderRequest(folder_id=folder.id), timeout=60))
        collections = collections_pb2_grpc.CollectionsStub(channel)
        collections.CreateCollection(collections_pb2.CreateCollectionRequest(name="list"))
        face = collections.AddFace(
            collections_pb2.AddFaceRequest(
                collection="list", image=common_pb2.Media(data=read(FACES / "biden.jpg"))
            )
        )
        hook = webhooks_pb2_grpc.WebhooksStub(channel).CreateWebhook(
            webhooks_pb2.CreateWebhookRequest(url="http://127.0.0.1:9/h")
        )
    biometry = next(a for a in created.analyses if a.type == folders_pb2.ANALYSIS_TYPE_BIOMETRY)
    return {
        "company": company,
        "folder": folder.id,
        "media": media.id,
        "analysis": created.analyses[0].id,
        "grey": biometry.id,
        "face": face.id,
        "webhook": hook.id,
    }


def safe_calls(channel: grpc.Channel, p: dict[str, str]) -> dict[str, Callable[[], Any]]:
    """One call per RPC, each with a request that yields data for a FULL caller."""
    instant = instant_pb2_grpc.InstantStub(channel)
    folders = folders_pb2_grpc.FoldersStub(channel)
    collections = collections_pb2_grpc.CollectionsStub(channel)
    webhooks = webhooks_pb2_grpc.WebhooksStub(channel)
    auth, admin = auth_pb2_grpc.AuthStub(channel), auth_pb2_grpc.AdminStub(channel)
    operators, verdicts = auth_pb2_grpc.OperatorsStub(channel), auth_pb2_grpc.VerdictsStub(channel)
    photo = common_pb2.Media(data=read(FACES / "obama3.jpg"))
    other = common_pb2.Media(data=read(SPOOF / "image_T1.jpg"))

    def submit() -> folders_pb2.Folder:
        header = folders_pb2.SubmitHeader(
            analyses=[folders_pb2.AnalysisRequest(type=folders_pb2.ANALYSIS_TYPE_LIVENESS)]
        )
        parts = [
            folders_pb2.SubmitRequest(header=header),
            folders_pb2.SubmitRequest(media=folders_pb2.UploadMediaHeader(tags=["photo_selfie"])),
            folders_pb2.SubmitRequest(chunk=read(FACES / "obama2.jpg")),
        ]
        return folders.Submit(iter(parts), timeout=60)

    def stream() -> list[video_pb2.StreamLivenessUpdate]:
        # A still photo sent as camera frames (30 fps, with a little timing jitter).
        frames = [
            (read(FACES / "obama2.jpg"), 1000.0 + i * 33.3 + (i % 3) * 0.7) for i in range(14)
        ]
        return list(instant.StreamLiveness(build.stream_requests(frames), timeout=60))

    return {
        "Instant/StreamLiveness": stream,
        "Instant/CheckLiveness": lambda: instant.CheckLiveness(
            instant_pb2.LivenessRequest(image=photo)
        ),
        "Instant/Verify": lambda: instant.Verify(
            instant_pb2.VerifyRequest(
                a=instant_pb2.FaceInput(image=photo), b=instant_pb2.FaceInput(image=other)
            )
        ),
        "Instant/Detect": lambda: instant.Detect(instant_pb2.DetectRequest(image=photo)),
        "Instant/ExtractTemplate": lambda: instant.ExtractTemplate(
            instant_pb2.TemplateRequest(image=photo)
        ),
        "Instant/GetServerInfo": lambda: instant.GetServerInfo(instant_pb2.GetServerInfoRequest()),
        "Folders/CreateFolder": lambda: folders.CreateFolder(
            folders_pb2.CreateFolderRequest(meta={"a": "b"})
        ),
        "Folders/UpdateFolderMeta": lambda: folders.UpdateFolderMeta(
            folders_pb2.UpdateFolderMetaRequest(folder_id=p["folder"], set={"x": "y"})
        ),
        "Folders/UploadMedia": lambda: upload(
            folders, p["folder"], FACES / "obama3.jpg", "photo_selfie"
        ),
        "Folders/CreateAnalyses": lambda: folders.CreateAnalyses(
            folders_pb2.CreateAnalysesRequest(
                folder_id=p["folder"],
                analyses=[folders_pb2.AnalysisRequest(type=folders_pb2.ANALYSIS_TYPE_BEST_SHOT)],
            )
        ),
        "Folders/Submit": submit,
        "Folders/GetFolder": lambda: folders.GetFolder(
            folders_pb2.GetFolderRequest(folder_id=p["folder"])
        ),
        "Folders/ListFolders": lambda: folders.ListFolders(
            folders_pb2.ListFoldersRequest(with_details=True)
        ),
        "Folders/GetMedia": lambda: folders.GetMedia(
            folders_pb2.GetMediaRequest(media_id=p["media"])
        ),
        "Folders/DownloadMedia": lambda: list(
            folders.DownloadMedia(folders_pb2.DownloadMediaRequest(media_id=p["media"]))
        ),
        "Folders/GetAnalysis": lambda: folders.GetAnalysis(
            folders_pb2.GetAnalysisRequest(analysis_id=p["analysis"])
        ),
        "Folders/ListAnalyses": lambda: folders.ListAnalyses(
            folders_pb2.ListAnalysesRequest(folder_id=p["folder"])
        ),
        "Folders/WatchFolder": lambda: list(
            folders.WatchFolder(folders_pb2.WatchFolderRequest(folder_id=p["folder"]), timeout=60)
        ),
        "Collections/ListCollections": lambda: collections.ListCollections(
            collections_pb2.ListCollectionsRequest()
        ),
        "Collections/ListFaces": lambda: collections.ListFaces(
            collections_pb2.ListFacesRequest(collection="list")
        ),
        "Collections/Search": lambda: collections.Search(
            collections_pb2.SearchRequest(collection="list", image=photo)
        ),
        "Collections/AddFace": lambda: collections.AddFace(
            collections_pb2.AddFaceRequest(collection="list", image=photo)
        ),
        "Collections/CreateCollection": lambda: collections.CreateCollection(
            collections_pb2.CreateCollectionRequest(name="another")
        ),
        "Webhooks/ListWebhooks": lambda: webhooks.ListWebhooks(webhooks_pb2.ListWebhooksRequest()),
        "Webhooks/ListDeliveries": lambda: webhooks.ListDeliveries(
            webhooks_pb2.ListDeliveriesRequest()
        ),
        "Auth/WhoAmI": lambda: auth.WhoAmI(auth_pb2.WhoAmIRequest()),
        "Admin/ListApiKeys": lambda: admin.ListApiKeys(auth_pb2.ListApiKeysRequest()),
        "Admin/ListAuditEvents": lambda: admin.ListAuditEvents(auth_pb2.ListAuditEventsRequest()),
        "Operators/ResolveAnalysis": lambda: operators.ResolveAnalysis(
            auth_pb2.ResolveAnalysisRequest(
                analysis_id=p["grey"], resolution=folders_pb2.RESOLUTION_SUCCESS
            )
        ),
        "Verdicts/GetVerdict": lambda: verdicts.GetVerdict(
            auth_pb2.GetVerdictRequest(folder_id=p["folder"])
        ),
        "Verdicts/GetPublicKeys": lambda: verdicts.GetPublicKeys(auth_pb2.GetPublicKeysRequest()),
    }


@pytest.mark.parametrize("role", ["SERVICE", "CLIENT", "CLIENT_ADMIN", "CLIENT_OPERATOR"])
def test_a_safe_key_never_gets_biometric_detail(
    api_server: ServerThread, prepared: dict[str, str], role: str
) -> None:
    key = api_server.new_key(role, result_mode="SAFE", company=prepared["company"])
    problems, checked = [], 0
    with api_server.channel(key) as channel:
        for name, attempt in safe_calls(channel, prepared).items():
            rule = PERMISSIONS[f"/vigil.v1.{name}"]
            try:
                reply = attempt()
            except grpc.RpcError as error:
                if role not in rule.roles or not rule.safe:
                    if error.code() != grpc.StatusCode.PERMISSION_DENIED:
                        problems.append(f"{name}: {error.code().name}, expected PERMISSION_DENIED")
                else:
                    problems.append(f"{name}: {error.code().name} {error.details()}")
                continue
            if role not in rule.roles or not rule.safe:
                problems.append(f"{name}: answered a SAFE {role} key")
                continue
            checked += 1
            for message in reply if isinstance(reply, list) else [reply]:
                problems.extend(f"{name}: {leak}" for leak in leaks(message))
    assert not problems, "\n".join(problems)
    assert checked >= 8  # the scan looked at real answers, not only refusals


def test_a_full_key_does_get_the_detail(api_server: ServerThread, prepared: dict[str, str]) -> None:
    """The control: the same calls with a FULL key do carry the fields the SAFE scan forbids."""
    key = api_server.new_key("SERVICE", company=prepared["company"])
    with api_server.channel(key) as channel:
        calls = safe_calls(channel, prepared)
        assert "score" in leaks(calls["Instant/CheckLiveness"]())
        assert "similarity" in leaks(calls["Instant/Verify"]())
        assert any("score" in leaks(update) for update in calls["Instant/StreamLiveness"]())
        folder_leaks = leaks(calls["Folders/GetFolder"]())
        assert "analyses.results" in folder_leaks and "analyses.decisive" in folder_leaks
        assert "media.sha256" in folder_leaks
