"""Issue 14, inputs: every hostile input of the attack gets a precise status (INVALID_ARGUMENT,
RESOURCE_EXHAUSTED, NOT_FOUND) with a message naming the field or the limit, never INTERNAL or
UNKNOWN, and the server keeps serving. Through the real server on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.conftest import FACES, ServerThread, make_settings, read
from vigil.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    collections_pb2,
    collections_pb2_grpc,
    common_pb2,
    folders_pb2_grpc,
    instant_pb2,
    instant_pb2_grpc,
    video_pb2,
)
from vigil.v1 import folders_pb2 as fp

INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def refused(call: Callable[[], object], code: grpc.StatusCode, *words: str) -> str:
    """``call()`` fails with ``code`` and a short message holding ``words``."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    details = caught.value.details() or ""
    assert caught.value.code() == code, f"{caught.value.code()}: {details[:300]}"
    for word in words:
        assert word in details, details[:300]
    assert len(details) < 400, "an error message never echoes unbounded input"
    return details


@pytest.fixture
def md(api_server: ServerThread) -> tuple[tuple[str, str], ...]:
    name = f"test-{uuid.uuid4().hex[:12]}"
    api_server.ensure_company(name)
    return (("vigil-company", name),)


@pytest.fixture
def folders(api_server: ServerThread) -> Iterator[folders_pb2_grpc.FoldersStub]:
    with api_server.channel() as channel:
        yield folders_pb2_grpc.FoldersStub(channel)


def still_serving(server: ServerThread) -> None:
    with server.channel() as channel:
        info = instant_pb2_grpc.InstantStub(channel).GetServerInfo(
            instant_pb2.GetServerInfoRequest(), timeout=10
        )
    assert info.version


def test_nul_characters_are_refused_at_the_edge(
    api_server: ServerThread, folders: folders_pb2_grpc.FoldersStub, md: Any
) -> None:
    """PostgreSQL rejects NUL in text (INTERNAL before): a metadata value, a folder id, a media
    name and content type, a user's email."""
    refused(
        lambda: folders.CreateFolder(fp.CreateFolderRequest(meta={"k": "a\x00b"}), metadata=md),
        INVALID,
        "meta[k]",
        "NUL",
    )
    refused(
        lambda: folders.GetFolder(fp.GetFolderRequest(folder_id="ab\x00cd"), metadata=md),
        INVALID,
        "folder_id",
        "NUL",
    )
    folder = folders.CreateFolder(fp.CreateFolderRequest(), metadata=md)
    for field in ("original_name", "content_type"):

        def parts(name: str = field) -> Iterator[fp.UploadMediaRequest]:
            header = fp.UploadMediaHeader(folder_id=folder.id, tags=["photo_selfie"])
            setattr(header, name, "x\x00y")
            yield fp.UploadMediaRequest(header=header)
            yield fp.UploadMediaRequest(chunk=read(FACES / "obama.jpg"))

        refused(partial(folders.UploadMedia, parts(), metadata=md), INVALID, field, "NUL")
    with api_server.channel() as channel:
        admin = auth_pb2_grpc.AdminStub(channel)
        refused(
            lambda: admin.CreateUser(
                auth_pb2.CreateUserRequest(
                    email="a\x00@example.com",
                    password="a long enough password",
                    role=auth_pb2.ROLE_CLIENT,
                    result_mode=auth_pb2.RESULT_MODE_FULL,
                ),
                metadata=md,
            ),
            INVALID,
            "email",
            "NUL",
        )
    assert folders.GetFolder(fp.GetFolderRequest(folder_id=folder.id), metadata=md).media == []
    still_serving(api_server)


def test_long_values_are_refused_and_never_echoed(
    api_server: ServerThread, folders: folders_pb2_grpc.FoldersStub, md: Any
) -> None:
    """Finding 8: a 100 KB folder id came back whole in NOT_FOUND, which the client saw as
    RESOURCE_EXHAUSTED. Now INVALID_ARGUMENT naming the bound; an unknown id within it is
    NOT_FOUND with the id cut short. A 1 MiB password is INVALID_ARGUMENT."""
    refused(
        lambda: folders.GetFolder(fp.GetFolderRequest(folder_id="f" * 100_000), metadata=md),
        INVALID,
        "folder_id is 100000 characters",
        "128",
    )
    details = refused(
        lambda: folders.GetFolder(fp.GetFolderRequest(folder_id="g" * 128), metadata=md),
        grpc.StatusCode.NOT_FOUND,
        "not found",
    )
    assert "g" * 80 + "…" in details and "g" * 81 not in details
    with api_server.channel() as channel:
        auth = auth_pb2_grpc.AuthStub(channel)
        refused(
            lambda: auth.Login(
                auth_pb2.LoginRequest(email="a@example.com", password="p" * (1 << 20))
            ),
            INVALID,
            "password",
            "1024",
        )
    refused(
        lambda: folders.CreateFolder(fp.CreateFolderRequest(meta={"k": "v" * 1025}), metadata=md),
        INVALID,
        "VIGIL_META_MAX_VALUE_CHARS",
    )
    refused(
        lambda: folders.CreateFolder(
            fp.CreateFolderRequest(meta={f"k{i}": "v" for i in range(65)}), metadata=md
        ),
        INVALID,
        "VIGIL_META_MAX_KEYS",
    )
    still_serving(api_server)


def test_bounded_queries_and_writes(
    api_server: ServerThread, folders: folders_pb2_grpc.FoldersStub, md: Any
) -> None:
    """3,000 metadata filters, 70,000 keys removed at once, 17 analyses in one call: each
    INVALID_ARGUMENT naming its limit and setting; nothing is written."""
    filters = [fp.MetaFilter(key=f"k{i}", value="v") for i in range(3000)]
    refused(
        lambda: folders.ListFolders(fp.ListFoldersRequest(meta=filters), metadata=md),
        INVALID,
        "meta has 3000 entries",
        "VIGIL_LIST_MAX_FILTERS",
    )
    refused(
        partial(
            folders.ListFolders,
            fp.ListFoldersRequest(resolutions=[fp.RESOLUTION_SUCCESS] * 100),
            metadata=md,
        ),
        INVALID,
        "resolutions has 100 entries",
        "VIGIL_LIST_MAX_FILTERS",
    )
    folder = folders.CreateFolder(fp.CreateFolderRequest(meta={"a": "1"}), metadata=md)
    remove = [f"k{i}" for i in range(70_000)]
    refused(
        lambda: folders.UpdateFolderMeta(
            fp.UpdateFolderMetaRequest(folder_id=folder.id, remove=remove), metadata=md
        ),
        INVALID,
        "remove has 70000 entries",
        "VIGIL_META_MAX_KEYS",
    )
    many = [fp.AnalysisRequest(type=fp.ANALYSIS_TYPE_LIVENESS)] * 17
    refused(
        lambda: folders.CreateAnalyses(
            fp.CreateAnalysesRequest(folder_id=folder.id, analyses=many), metadata=md
        ),
        INVALID,
        "VIGIL_MAX_ANALYSES_PER_CALL",
    )
    after = folders.GetFolder(fp.GetFolderRequest(folder_id=folder.id), metadata=md)
    assert (dict(after.meta), list(after.analyses)) == ({"a": "1"}, [])
    # within the limits, the same calls work
    few = [fp.MetaFilter(key="a", value="1")] * 3
    listed = folders.ListFolders(fp.ListFoldersRequest(meta=few), metadata=md).folders
    assert [f.id for f in listed] == [folder.id]


def _b64(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


def test_page_tokens_are_authenticated_and_checked(
    api_server: ServerThread, folders: folders_pb2_grpc.FoldersStub, md: Any
) -> None:
    """Malformed tokens were INTERNAL/UNKNOWN, and [t, 5] was accepted: every token not issued
    by this server is INVALID_ARGUMENT, on ListFolders and ListAuditEvents; issued ones page."""
    created = [folders.CreateFolder(fp.CreateFolderRequest(), metadata=md).id for _ in range(3)]
    now = datetime.now(UTC).isoformat()
    forged = [
        _b64([now, 5]),
        _b64([1, 2, 3]),
        _b64([]),
        _b64([now, {"a": 1}]),
        _b64([now, None]),
        _b64([now, created[0]]),  # the old, unauthenticated format of a real position
        "not base64 at all!",
        "",
    ]
    with api_server.channel() as channel:
        admin = auth_pb2_grpc.AdminStub(channel)
        collections = collections_pb2_grpc.CollectionsStub(channel)
        collections.CreateCollection(collections_pb2.CreateCollectionRequest(name="c"), metadata=md)
        for token in forged[:-1]:
            refused(
                partial(
                    collections.ListFaces,
                    collections_pb2.ListFacesRequest(collection="c", page_token=token),
                    metadata=md,
                ),
                INVALID,
                "page_token",
            )
            refused(
                partial(folders.ListFolders, fp.ListFoldersRequest(page_token=token), metadata=md),
                INVALID,
                "page_token",
            )
            refused(
                partial(
                    admin.ListAuditEvents,
                    auth_pb2.ListAuditEventsRequest(page_token=token),
                    metadata=md,
                ),
                INVALID,
                "page_token",
            )
        first = folders.ListFolders(fp.ListFoldersRequest(page_size=2), metadata=md)
        second = folders.ListFolders(
            fp.ListFoldersRequest(page_size=2, page_token=first.next_page_token), metadata=md
        )
        assert sorted(f.id for f in [*first.folders, *second.folders]) == sorted(created)
        assert second.next_page_token == ""
        mac = first.next_page_token.split(".")[1]
        tampered = _b64(["2000-01-01T00:00:00+00:00", "z"]).rstrip("=") + "." + mac
        refused(
            lambda: folders.ListFolders(fp.ListFoldersRequest(page_token=tampered), metadata=md),
            INVALID,
            "page_token",
        )
        audit = admin.ListAuditEvents(auth_pb2.ListAuditEventsRequest(page_size=1), metadata=md)
        assert audit.next_page_token
        admin.ListAuditEvents(
            auth_pb2.ListAuditEventsRequest(page_size=1, page_token=audit.next_page_token),
            metadata=md,
        )


def test_timestamps_out_of_range(
    api_server: ServerThread, folders: folders_pb2_grpc.FoldersStub, md: Any
) -> None:
    """seconds 2^62, -2^62, negative nanos: INVALID_ARGUMENT naming the field."""
    cases = [
        (common_pb2_timestamp(2**62, 0), "seconds"),
        (common_pb2_timestamp(-(2**62), 0), "seconds"),
        (common_pb2_timestamp(0, -1), "nanos"),
    ]
    with api_server.channel() as channel:
        admin = auth_pb2_grpc.AdminStub(channel)
        for stamp, word in cases:
            refused(
                partial(
                    folders.ListFolders, fp.ListFoldersRequest(created_after=stamp), metadata=md
                ),
                INVALID,
                f"created_after.{word}",
            )
            refused(
                partial(
                    admin.CreateApiKey,
                    auth_pb2.CreateApiKeyRequest(
                        name="k",
                        role=auth_pb2.ROLE_CLIENT,
                        result_mode=auth_pb2.RESULT_MODE_FULL,
                        expires_at=stamp,
                    ),
                    metadata=md,
                ),
                INVALID,
                f"expires_at.{word}",
            )


def common_pb2_timestamp(seconds: int, nanos: int) -> Any:
    from google.protobuf.timestamp_pb2 import Timestamp

    return Timestamp(seconds=seconds, nanos=nanos)


def _raw(channel: grpc.Channel, method: str) -> Callable[..., bytes]:
    call: Callable[..., bytes] = channel.unary_unary(method)  # bytes in, bytes out
    return call


def test_requests_that_do_not_parse_are_invalid_argument(api_server: ServerThread) -> None:
    """grpc's own deserializer answered UNKNOWN: bad UTF-8 in a string field, a truncated length
    prefix, 100,000 nested unknown groups."""
    nested = b"\x7b" * 100_000 + b"\x7c" * 100_000  # field 15, start group / end group
    bodies = {
        "bad UTF-8": b"\x0a\x02\xff\xfe",
        "truncated length": b"\x0a\x10abc",
        "truncated varint": b"\x0a\x80",
        "nested groups": nested,
    }
    with api_server.channel() as channel:
        for method in ("/vigil.v1.Folders/GetFolder", "/vigil.v1.Auth/Login"):
            call = _raw(channel, method)
            for name, body in bodies.items():
                details = refused(partial(call, body, timeout=30), INVALID, "not a valid")
                assert "vigil.v1." in details, (name, details)
    still_serving(api_server)


def test_verify_refuses_templates_that_overflow(api_server: ServerThread) -> None:
    """Templates of ±3e38 gave distance=inf: INVALID_ARGUMENT (INVALID_TEMPLATE)."""
    with api_server.channel() as channel:
        stub = instant_pb2_grpc.InstantStub(channel)
        extracted = stub.ExtractTemplate(
            instant_pb2.TemplateRequest(image=common_pb2.Media(data=read(FACES / "obama.jpg")))
        ).template
        for big in (3e38, -3e38):
            template = common_pb2.Template(
                values=[big] * 128, model=extracted.model, model_version=extracted.model_version
            )
            refused(
                partial(
                    stub.Verify,
                    instant_pb2.VerifyRequest(
                        a=instant_pb2.FaceInput(template=template),
                        b=instant_pb2.FaceInput(template=extracted),
                    ),
                ),
                INVALID,
                "template",
                "±1000",
            )
        reply = stub.Verify(
            instant_pb2.VerifyRequest(
                a=instant_pb2.FaceInput(template=extracted),
                b=instant_pb2.FaceInput(template=extracted),
            )
        )
        assert reply.match and reply.distance < 1e-4


def test_search_thresholds_are_bounded(api_server: ServerThread, md: Any) -> None:
    """SearchRequest.threshold, the Instant side's caller-chosen threshold: finite, in (0, 2]."""
    with api_server.channel() as channel:
        stub = collections_pb2_grpc.CollectionsStub(channel)
        stub.CreateCollection(collections_pb2.CreateCollectionRequest(name="s"), metadata=md)
        image = common_pb2.Media(data=read(FACES / "obama.jpg"))
        for value, word in ((float("nan"), "NaN"), (float("inf"), "infinite"), (5.0, "(0, 2]")):
            refused(
                partial(
                    stub.Search,
                    collections_pb2.SearchRequest(collection="s", image=image, threshold=value),
                    metadata=md,
                ),
                INVALID,
                "threshold",
                word,
            )
        found = stub.Search(
            collections_pb2.SearchRequest(collection="s", image=image, threshold=0.5), metadata=md
        )
        assert found.threshold == 0.5 and list(found.hits) == []


def test_stream_liveness_refuses_a_second_start(api_server: ServerThread) -> None:
    def messages() -> Iterator[video_pb2.StreamLivenessRequest]:
        yield video_pb2.StreamLivenessRequest(start=video_pb2.StreamStart())
        yield video_pb2.StreamLivenessRequest(start=video_pb2.StreamStart())

    with api_server.channel() as channel:
        stub = instant_pb2_grpc.InstantStub(channel)
        refused(
            lambda: list(stub.StreamLiveness(messages(), timeout=30)),
            INVALID,
            "start",
            "only once",
        )
    still_serving(api_server)


# ---- quotas (a query on the existing tables, so on both databases) ---------------------------


@pytest.fixture
def limited(models_dir: Path, database_url: str, tmp_path: Path) -> Iterator[ServerThread]:
    settings = make_settings(
        models_dir,
        data_dir=tmp_path / "limited",
        database_url=database_url,
        max_media_per_folder=2,
        folders_per_company_per_hour=3,
    )
    running = ServerThread(settings).start()
    yield running
    running.stop()


def test_quotas_on_folders_and_media(limited: ServerThread) -> None:
    """Folders per company per hour and media per folder: RESOURCE_EXHAUSTED naming the limit
    and its setting; another company's quota is its own."""
    mine, theirs = "quota-a", "quota-b"
    for name in (mine, theirs):
        limited.ensure_company(name)
    md = (("vigil-company", mine),)
    with limited.channel() as channel:
        stub = folders_pb2_grpc.FoldersStub(channel)
        first = stub.CreateFolder(fp.CreateFolderRequest(), metadata=md)
        stub.CreateFolder(fp.CreateFolderRequest(), metadata=md)
        stub.CreateFolder(fp.CreateFolderRequest(), metadata=md)
        refused(
            lambda: stub.CreateFolder(fp.CreateFolderRequest(), metadata=md),
            EXHAUSTED,
            "3",
            "VIGIL_FOLDERS_PER_COMPANY_PER_HOUR",
        )
        stub.CreateFolder(fp.CreateFolderRequest(), metadata=(("vigil-company", theirs),))

        def upload() -> fp.MediaInfo:
            def parts() -> Iterator[fp.UploadMediaRequest]:
                yield fp.UploadMediaRequest(
                    header=fp.UploadMediaHeader(folder_id=first.id, tags=["photo_selfie"])
                )
                yield fp.UploadMediaRequest(chunk=read(FACES / "obama.jpg"))

            info: fp.MediaInfo = stub.UploadMedia(parts(), metadata=md, timeout=30)
            return info

        upload()
        upload()
        refused(upload, EXHAUSTED, "VIGIL_MAX_MEDIA_PER_FOLDER")
        held = stub.GetFolder(fp.GetFolderRequest(folder_id=first.id), metadata=md).media
        assert len(held) == 2
