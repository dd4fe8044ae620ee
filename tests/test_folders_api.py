"""The persistent API through the real server on SQLite and PostgreSQL, on the real models."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypedDict, Unpack

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from tests.conftest import FACES, SPOOF, Metadata, ServerThread, read
from vigil.v1 import folders_pb2 as fp
from vigil.v1 import folders_pb2_grpc

LIVENESS = fp.AnalysisRequest(type=fp.ANALYSIS_TYPE_LIVENESS)
BIOMETRY = fp.AnalysisRequest(type=fp.ANALYSIS_TYPE_BIOMETRY)
BEST_SHOT = fp.AnalysisRequest(type=fp.ANALYSIS_TYPE_BEST_SHOT)


Stub = folders_pb2_grpc.FoldersStub


class HeaderFields(TypedDict, total=False):
    """The upload header's optional fields."""

    content_type: str
    original_name: str


@pytest.fixture
def stub(api_channel: grpc.Channel) -> Stub:
    return folders_pb2_grpc.FoldersStub(api_channel)


def upload(
    stub: Stub,
    md: Metadata,
    folder_id: str,
    data: bytes,
    tags: Iterable[str] = (),
    chunk: int = 65536,
    **header: Unpack[HeaderFields],
) -> fp.MediaInfo:
    def parts() -> Iterator[fp.UploadMediaRequest]:
        yield fp.UploadMediaRequest(
            header=fp.UploadMediaHeader(folder_id=folder_id, tags=list(tags), **header)
        )
        for start in range(0, len(data), chunk):
            yield fp.UploadMediaRequest(chunk=data[start : start + chunk])

    return stub.UploadMedia(parts(), metadata=md, timeout=30)


def folder_with(
    stub: Stub,
    md: Metadata,
    files: Iterable[tuple[Path, list[str]]],
    meta: dict[str, str] | None = None,
) -> fp.Folder:
    folder = stub.CreateFolder(fp.CreateFolderRequest(meta=meta or {}), metadata=md)
    for path, tags in files:
        upload(stub, md, folder.id, read(path), tags)
    return folder


def run(
    stub: Stub, md: Metadata, folder_id: str, *requests: fp.AnalysisRequest
) -> dict[int, fp.Analysis]:
    stub.CreateAnalyses(
        fp.CreateAnalysesRequest(folder_id=folder_id, analyses=list(requests)), metadata=md
    )
    events = list(
        stub.WatchFolder(fp.WatchFolderRequest(folder_id=folder_id), metadata=md, timeout=60)
    )
    assert events[-1].final and sum(e.final for e in events) == 1
    folder = stub.GetFolder(fp.GetFolderRequest(folder_id=folder_id), metadata=md)
    return {a.type: a for a in folder.analyses}


def blob_files(api_server: ServerThread) -> set[str]:
    root = api_server.vigil.app.blobs.root
    return {str(p) for p in root.rglob("*") if p.is_file()}


def test_folder_lifecycle_and_media_round_trip(stub: Stub, company: Metadata) -> None:
    folder = stub.CreateFolder(
        fp.CreateFolderRequest(meta={"transaction_id": "t-1"}), metadata=company
    )
    data = read(FACES / "obama.jpg")
    media = upload(
        stub,
        company,
        folder.id,
        data,
        ["photo_selfie"],
        content_type="image/png",
        original_name="me.jpg",
    )
    assert media.sha256 == hashlib.sha256(data).hexdigest() and media.size == len(data)
    assert media.content_type == "image/jpeg" and media.declared_content_type == "image/png"
    chunks = list(stub.DownloadMedia(fp.DownloadMediaRequest(media_id=media.id), metadata=company))
    assert b"".join(c.data for c in chunks) == data and chunks[0].media.id == media.id
    updated = stub.UpdateFolderMeta(
        fp.UpdateFolderMetaRequest(
            folder_id=folder.id, set={"user_id": "u"}, remove=["transaction_id"]
        ),
        metadata=company,
    )
    assert dict(updated.meta) == {"user_id": "u"}
    got = stub.GetFolder(fp.GetFolderRequest(folder_id=folder.id), metadata=company)
    assert [m.id for m in got.media] == [media.id] and got.resolution == fp.RESOLUTION_UNSPECIFIED
    deleted = stub.DeleteFolder(fp.DeleteFolderRequest(folder_id=folder.id), metadata=company)
    assert deleted.media_deleted == 1
    with pytest.raises(grpc.RpcError) as info:
        stub.GetMedia(fp.GetMediaRequest(media_id=media.id), metadata=company)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_another_company_sees_nothing(
    stub: Stub, company: Metadata, api_server: ServerThread
) -> None:
    folder = folder_with(stub, company, [(FACES / "obama.jpg", ["photo_selfie"])])
    media_id = (
        stub.GetFolder(fp.GetFolderRequest(folder_id=folder.id), metadata=company).media[0].id
    )
    created = stub.CreateAnalyses(
        fp.CreateAnalysesRequest(folder_id=folder.id, analyses=[LIVENESS]), metadata=company
    )
    other = (("vigil-company", company[0][1] + "-other"),)
    api_server.ensure_company(other[0][1])
    calls: list[Callable[[], object]] = [
        lambda: stub.GetFolder(fp.GetFolderRequest(folder_id=folder.id), metadata=other),
        lambda: stub.DeleteFolder(fp.DeleteFolderRequest(folder_id=folder.id), metadata=other),
        lambda: stub.UpdateFolderMeta(
            fp.UpdateFolderMetaRequest(folder_id=folder.id), metadata=other
        ),
        lambda: stub.GetMedia(fp.GetMediaRequest(media_id=media_id), metadata=other),
        lambda: list(
            stub.DownloadMedia(fp.DownloadMediaRequest(media_id=media_id), metadata=other)
        ),
        lambda: stub.DeleteMedia(fp.DeleteMediaRequest(media_id=media_id), metadata=other),
        lambda: stub.GetAnalysis(
            fp.GetAnalysisRequest(analysis_id=created.analyses[0].id), metadata=other
        ),
        lambda: stub.ListAnalyses(fp.ListAnalysesRequest(folder_id=folder.id), metadata=other),
        lambda: stub.CreateAnalyses(
            fp.CreateAnalysesRequest(folder_id=folder.id, analyses=[LIVENESS]), metadata=other
        ),
        lambda: list(stub.WatchFolder(fp.WatchFolderRequest(folder_id=folder.id), metadata=other)),
        lambda: upload(stub, other, folder.id, read(FACES / "obama.jpg")),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == grpc.StatusCode.NOT_FOUND, info.value.details()
    assert stub.ListFolders(fp.ListFoldersRequest(), metadata=other).folders == []


def test_liveness_biometry_and_best_shot(stub: Stub, company: Metadata) -> None:
    folder = folder_with(
        stub,
        company,
        [(FACES / "obama.jpg", ["photo_id_front"]), (FACES / "obama2.jpg", ["photo_selfie"])],
    )
    results = run(stub, company, folder.id, LIVENESS, BIOMETRY, BEST_SHOT)
    live = results[fp.ANALYSIS_TYPE_LIVENESS]
    assert (live.state, live.resolution) == (fp.ANALYSIS_STATE_FINISHED, fp.RESOLUTION_SUCCESS)
    assert len(live.results) == 1 and live.results[0].score > 0.5  # only the selfie is judged
    assert live.thresholds["liveness"] == pytest.approx(0.5)
    bio = results[fp.ANALYSIS_TYPE_BIOMETRY]
    assert bio.resolution == fp.RESOLUTION_SUCCESS and bio.decisive.distance < 0.6
    best = results[fp.ANALYSIS_TYPE_BEST_SHOT]
    new_media = stub.GetMedia(
        fp.GetMediaRequest(media_id=best.decisive.output_media_id), metadata=company
    )
    assert (
        list(new_media.tags) == ["best_shot"]
        and new_media.source_media_id == best.decisive.media_id
    )
    final = stub.GetFolder(fp.GetFolderRequest(folder_id=folder.id), metadata=company)
    assert final.resolution == fp.RESOLUTION_SUCCESS and len(final.media) == 3


def test_spoof_selfie_and_different_people_are_declined(stub: Stub, company: Metadata) -> None:
    folder = folder_with(
        stub,
        company,
        [
            (FACES / "obama.jpg", ["photo_id_front"]),
            (FACES / "obama3.jpg", ["photo_selfie"]),
            (FACES / "biden.jpg", ["photo_selfie"]),
            (SPOOF / "image_F2.jpg", ["photo_id_back"]),  # never compared by BIOMETRY
        ],
    )
    results = run(stub, company, folder.id, BIOMETRY)
    bio = results[fp.ANALYSIS_TYPE_BIOMETRY]
    assert bio.resolution == fp.RESOLUTION_DECLINED
    assert len(bio.results) == 3  # three pairs of three media
    assert bio.decisive.distance == max(r.distance for r in bio.results) > 0.6
    spoof = folder_with(stub, company, [(SPOOF / "image_F1.jpg", ["photo_selfie"])])
    live = run(stub, company, spoof.id, LIVENESS)[fp.ANALYSIS_TYPE_LIVENESS]
    assert live.resolution == fp.RESOLUTION_DECLINED and live.results[0].score < 0.5
    folder_state = stub.GetFolder(fp.GetFolderRequest(folder_id=spoof.id), metadata=company)
    assert folder_state.resolution == fp.RESOLUTION_DECLINED


def test_biometry_grey_zone_asks_an_operator(stub: Stub, company: Metadata) -> None:
    folder = folder_with(
        stub,
        company,
        [(FACES / "obama.jpg", ["photo_id_front"]), (FACES / "obama2.jpg", ["photo_selfie"])],
    )
    # obama/obama2 are 0.40 apart: with threshold 0.38 they fall in the grey zone (0.05 wide).
    request = fp.AnalysisRequest(type=fp.ANALYSIS_TYPE_BIOMETRY, threshold=0.38)
    bio = run(stub, company, folder.id, request)[fp.ANALYSIS_TYPE_BIOMETRY]
    assert bio.resolution == fp.RESOLUTION_OPERATOR_REQUIRED
    assert bio.thresholds["distance"] == pytest.approx(0.38)


def test_biometry_with_one_face_fails_with_a_reason(stub: Stub, company: Metadata) -> None:
    folder = folder_with(stub, company, [(FACES / "obama.jpg", ["photo_selfie"])])
    bio = run(stub, company, folder.id, BIOMETRY)[fp.ANALYSIS_TYPE_BIOMETRY]
    assert bio.state == fp.ANALYSIS_STATE_FAILED and "at least two" in bio.error


def test_list_folders_by_transaction_recent_with_analyses(stub: Stub, company: Metadata) -> None:
    a = folder_with(
        stub, company, [(FACES / "obama.jpg", ["photo_selfie"])], {"transaction_id": "X"}
    )
    stub.CreateFolder(fp.CreateFolderRequest(meta={"transaction_id": "X"}), metadata=company)
    stub.CreateFolder(fp.CreateFolderRequest(meta={"transaction_id": "Y"}), metadata=company)
    run(stub, company, a.id, LIVENESS)
    hour_ago = Timestamp()
    hour_ago.FromDatetime(datetime.now(UTC) - timedelta(hours=1))
    reply = stub.ListFolders(
        fp.ListFoldersRequest(
            meta=[fp.MetaFilter(key="transaction_id", op=fp.MetaFilter.OP_EQ, value="X")],
            created_after=hour_ago,
            analyses=fp.ListFoldersRequest.ANALYSES_FILTER_WITH,
            with_details=True,
        ),
        metadata=company,
    )
    assert [f.id for f in reply.folders] == [a.id]
    assert reply.folders[0].analyses[0].resolution == fp.RESOLUTION_SUCCESS
    with pytest.raises(grpc.RpcError) as info:
        stub.ListFolders(
            fp.ListFoldersRequest(meta=[fp.MetaFilter(key="k", op=fp.MetaFilter.Op.ValueType(7))]),
            metadata=company,
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_submit_in_one_round_trip(stub: Stub, company: Metadata) -> None:
    def parts() -> Iterator[fp.SubmitRequest]:
        yield fp.SubmitRequest(
            header=fp.SubmitHeader(meta={"transaction_id": "s1"}, analyses=[LIVENESS, BIOMETRY])
        )
        for path, tag in (
            (FACES / "obama.jpg", "photo_id_front"),
            (FACES / "obama3.jpg", "photo_selfie"),
        ):
            yield fp.SubmitRequest(media=fp.UploadMediaHeader(tags=[tag]))
            data = read(path)
            for start in range(0, len(data), 100_000):
                yield fp.SubmitRequest(chunk=data[start : start + 100_000])

    folder = stub.Submit(parts(), metadata=company, timeout=60)
    assert folder.resolution == fp.RESOLUTION_SUCCESS and len(folder.media) == 2
    assert {a.state for a in folder.analyses} == {fp.ANALYSIS_STATE_FINISHED}


def test_a_bad_upload_leaves_no_row_and_no_file(
    stub: Stub, company: Metadata, api_server: ServerThread
) -> None:
    folder = stub.CreateFolder(fp.CreateFolderRequest(), metadata=company)
    before = blob_files(api_server)
    with pytest.raises(grpc.RpcError) as info:
        upload(stub, company, folder.id, os.urandom(300_000))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a media type" in (
        info.value.details() or ""
    )
    truncated = read(FACES / "obama.jpg")[:100_000]
    with pytest.raises(grpc.RpcError) as info:
        upload(stub, company, folder.id, truncated)
    assert "truncated" in (info.value.details() or "")

    sent = threading.Event()
    release = threading.Event()

    def broken() -> Iterator[fp.UploadMediaRequest]:
        yield fp.UploadMediaRequest(header=fp.UploadMediaHeader(folder_id=folder.id))
        yield fp.UploadMediaRequest(chunk=read(FACES / "biden.jpg")[:50_000])
        sent.set()
        release.wait(10)  # the client "dies" here: its call is cancelled mid-upload

    call = stub.UploadMedia.future(broken(), metadata=company)
    assert sent.wait(10)
    time.sleep(0.2)  # let the server start receiving
    call.cancel()
    release.set()
    with pytest.raises(grpc.FutureCancelledError):
        call.result()
    deadline = time.monotonic() + 5  # the server notices the cancellation asynchronously
    while blob_files(api_server) != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stub.GetFolder(fp.GetFolderRequest(folder_id=folder.id), metadata=company).media == []
    assert blob_files(api_server) == before


def test_a_bad_submit_leaves_nothing(
    stub: Stub, company: Metadata, api_server: ServerThread
) -> None:
    before = blob_files(api_server)

    def parts() -> Iterator[fp.SubmitRequest]:
        yield fp.SubmitRequest(
            header=fp.SubmitHeader(meta={"transaction_id": "bad"}, analyses=[LIVENESS])
        )
        yield fp.SubmitRequest(media=fp.UploadMediaHeader(tags=["photo_selfie"]))
        yield fp.SubmitRequest(chunk=read(FACES / "astronaut.png"))
        yield fp.SubmitRequest(media=fp.UploadMediaHeader(tags=["photo_selfie"]))
        yield fp.SubmitRequest(chunk=b"GIF89a" + os.urandom(100))

    with pytest.raises(grpc.RpcError) as info:
        stub.Submit(parts(), metadata=company)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "GIF" in (
        info.value.details() or ""
    )
    listed = stub.ListFolders(
        fp.ListFoldersRequest(meta=[fp.MetaFilter(key="transaction_id", value="bad")]),
        metadata=company,
    )
    assert listed.folders == [] and blob_files(api_server) == before


def test_requests_are_validated(stub: Stub, company: Metadata) -> None:
    folder = stub.CreateFolder(fp.CreateFolderRequest(), metadata=company)
    cases = [
        (fp.CreateAnalysesRequest(folder_id=folder.id), "empty"),
        (
            fp.CreateAnalysesRequest(
                folder_id=folder.id,
                analyses=[fp.AnalysisRequest(type=fp.AnalysisType.ValueType(9))],
            ),
            "not a known",
        ),
        (
            fp.CreateAnalysesRequest(
                folder_id=folder.id, analyses=[fp.AnalysisRequest(type=fp.ANALYSIS_TYPE_BLACKLIST)]
            ),
            "collection",
        ),
    ]
    for request, words in cases:
        with pytest.raises(grpc.RpcError) as info:
            stub.CreateAnalyses(request, metadata=company)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in (
            info.value.details() or ""
        )
    with pytest.raises(grpc.RpcError) as info:
        stub.CreateFolder(fp.CreateFolderRequest(meta={"k": "v" * 2000}), metadata=company)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as info:
        stub.UploadMedia(iter([fp.UploadMediaRequest(chunk=b"x")]), metadata=company)
    assert "header" in (info.value.details() or "")
