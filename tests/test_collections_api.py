"""The Collections API through the generated stub, on the full server over SQLite and PostgreSQL.

Faces are the ORL database's (40 people x 10 shots): people are enrolled with shot 1 and searched
with shot 2.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import TypedDict, Unpack

import grpc
import pytest
from google.protobuf.message import Message

from tests.conftest import FACES, ORL, Metadata, ServerThread, read
from vigil.inference.catalog import DLIB_RESNET
from vigil.v1 import (
    collections_pb2,
    collections_pb2_grpc,
    common_pb2,
    folders_pb2,
    folders_pb2_grpc,
    instant_pb2,
    instant_pb2_grpc,
)

PEOPLE = range(1, 11)


class SearchFields(TypedDict, total=False):
    """A SearchRequest's fields besides its collection."""

    image: common_pb2.Media
    template: common_pb2.Template
    top_k: int
    threshold: float


def shot(person: int, number: int) -> common_pb2.Media:
    return common_pb2.Media(data=read(ORL / f"s{person}" / f"{number}.pgm"))


@pytest.fixture
def stub(api_channel: grpc.Channel) -> collections_pb2_grpc.CollectionsStub:
    return collections_pb2_grpc.CollectionsStub(api_channel)


def expect(
    code: grpc.StatusCode,
    call: Callable[..., object],
    request: Message,
    metadata: Metadata,
    *words: str,
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, metadata=metadata, timeout=30)
    error = caught.value
    assert error.code() == code, f"{error.code()}: {error.details()}"
    for word in words:
        assert word in (error.details() or ""), error.details()


def create(stub: collections_pb2_grpc.CollectionsStub, company: Metadata, name: str) -> None:
    stub.CreateCollection(collections_pb2.CreateCollectionRequest(name=name), metadata=company)


def enrol(
    stub: collections_pb2_grpc.CollectionsStub, company: Metadata, name: str, people: range
) -> dict[str, str]:
    """Enrol shot 1 of each person; returns face id -> label."""
    faces = {}
    for person in people:
        face = stub.AddFace(
            collections_pb2.AddFaceRequest(
                collection=name, image=shot(person, 1), person_label=f"s{person}"
            ),
            metadata=company,
            timeout=30,
        )
        faces[face.id] = face.person_label
    return faces


@pytest.fixture
def enrolled(
    stub: collections_pb2_grpc.CollectionsStub, company: Metadata
) -> Iterator[dict[str, str]]:
    create(stub, company, "orl")
    yield enrol(stub, company, "orl", PEOPLE)


def search(
    stub: collections_pb2_grpc.CollectionsStub, company: Metadata, **fields: Unpack[SearchFields]
) -> collections_pb2.SearchResponse:
    request = collections_pb2.SearchRequest(collection="orl", **fields)
    return stub.Search(request, metadata=company, timeout=30)


def test_create_list_delete(stub: collections_pb2_grpc.CollectionsStub, company: Metadata) -> None:
    made = stub.CreateCollection(
        collections_pb2.CreateCollectionRequest(name="vip.list-1", meta={"owner": "desk"}),
        metadata=company,
    )
    assert made.id and made.name == "vip.list-1" and made.meta == {"owner": "desk"}
    assert made.model == DLIB_RESNET.name and made.model_version == DLIB_RESNET.version
    assert made.face_count == 0 and made.created_at.seconds > 0
    create(stub, company, "another")
    expect(
        grpc.StatusCode.ALREADY_EXISTS,
        stub.CreateCollection,
        collections_pb2.CreateCollectionRequest(name="vip.list-1"),
        company,
        "vip.list-1",
    )
    for bad in ("", "has space", "x" * 65):
        expect(
            grpc.StatusCode.INVALID_ARGUMENT,
            stub.CreateCollection,
            collections_pb2.CreateCollectionRequest(name=bad),
            company,
        )
    listed = stub.ListCollections(collections_pb2.ListCollectionsRequest(), metadata=company)
    assert [c.name for c in listed.collections] == ["another", "vip.list-1"]
    stub.AddFace(
        collections_pb2.AddFaceRequest(collection="vip.list-1", image=shot(1, 1)),
        metadata=company,
    )
    deleted = stub.DeleteCollection(
        collections_pb2.DeleteCollectionRequest(name="vip.list-1"), metadata=company
    )
    assert deleted.faces_deleted == 1
    listed = stub.ListCollections(collections_pb2.ListCollectionsRequest(), metadata=company)
    assert [c.name for c in listed.collections] == ["another"]
    expect(
        grpc.StatusCode.NOT_FOUND,
        stub.DeleteCollection,
        collections_pb2.DeleteCollectionRequest(name="vip.list-1"),
        company,
    )


def test_enrolled_people_are_identified(
    stub: collections_pb2_grpc.CollectionsStub, company: Metadata, enrolled: dict[str, str]
) -> None:
    listed = stub.ListCollections(collections_pb2.ListCollectionsRequest(), metadata=company)
    assert listed.collections[0].face_count == len(PEOPLE)
    for person in PEOPLE:
        reply = search(stub, company, image=shot(person, 2))
        top = reply.hits[0]
        assert top.face.person_label == f"s{person}", [
            (h.face.person_label, h.distance) for h in reply.hits
        ]
        assert top.match and top.distance < reply.threshold and top.similarity > 0.5
        assert enrolled[top.face.id] == f"s{person}"
        assert len(reply.hits) == 5 and reply.searched == len(PEOPLE)
        assert [h.distance for h in reply.hits] == sorted(h.distance for h in reply.hits)
        assert reply.threshold == pytest.approx(0.6)
        assert reply.face.box.width > 0 and len(reply.face.landmarks) == 5
        assert reply.search_ms > 0
        assert top.face.face.box.width > 0  # the enrolled face's box was recorded
        assert top.face.collection == "orl" and top.face.model == DLIB_RESNET.name


def test_unknown_person_is_no_match(
    stub: collections_pb2_grpc.CollectionsStub, company: Metadata
) -> None:
    create(stub, company, "orl")
    enrol(stub, company, "orl", range(1, 6))
    for stranger in (6, 7):
        reply = search(stub, company, image=shot(stranger, 2), top_k=3)
        assert len(reply.hits) == 3
        assert not any(hit.match for hit in reply.hits), [
            (h.face.person_label, h.distance) for h in reply.hits
        ]
        assert all(hit.similarity < 0.5 for hit in reply.hits)
    # A stricter or looser threshold of the caller's own is used and echoed.
    reply = search(stub, company, image=shot(1, 2), top_k=1, threshold=0.05)
    assert reply.threshold == pytest.approx(0.05) and not reply.hits[0].match


def test_template_search_equals_image_search(
    stub: collections_pb2_grpc.CollectionsStub,
    company: Metadata,
    enrolled: dict[str, str],
    api_channel: grpc.Channel,
) -> None:
    instant = instant_pb2_grpc.InstantStub(api_channel)
    template = instant.ExtractTemplate(
        instant_pb2.TemplateRequest(image=shot(3, 2)), timeout=30
    ).template
    by_image = search(stub, company, image=shot(3, 2))
    by_template = search(stub, company, template=template)
    assert [h.face.id for h in by_template.hits] == [h.face.id for h in by_image.hits]
    for a, b in zip(by_template.hits, by_image.hits, strict=True):
        assert a.distance == pytest.approx(b.distance, abs=1e-5)
        assert a.match == b.match
    assert not by_template.HasField("face") and by_image.HasField("face")
    # A template without model name is taken as the server's model's.
    bare = common_pb2.Template(values=template.values)
    assert search(stub, company, template=bare).hits[0].face.id == by_image.hits[0].face.id
    # Adding a template works as well, and it is found by itself at distance 0.
    added = stub.AddFace(
        collections_pb2.AddFaceRequest(collection="orl", template=template, person_label="t"),
        metadata=company,
    )
    assert not added.HasField("face") and added.model == template.model
    top = search(stub, company, template=template, top_k=1).hits[0]
    assert top.face.id == added.id and top.distance == pytest.approx(0.0, abs=1e-5)


def test_bad_requests(
    stub: collections_pb2_grpc.CollectionsStub, company: Metadata, enrolled: dict[str, str]
) -> None:
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    short = common_pb2.Template(values=[0.1] * 127, model="dlib-resnet")
    expect(
        invalid,
        stub.Search,
        collections_pb2.SearchRequest(collection="orl", template=short),
        company,
        "127",
    )
    expect(
        invalid,
        stub.AddFace,
        collections_pb2.AddFaceRequest(collection="orl", template=short),
        company,
        "127",
    )
    foreign = common_pb2.Template(values=[0.1] * 128, model="facenet", model_version="1")
    expect(
        invalid,
        stub.Search,
        collections_pb2.SearchRequest(collection="orl", template=foreign),
        company,
        "facenet",
    )
    for top_k in (-1, 101):
        expect(
            invalid,
            stub.Search,
            collections_pb2.SearchRequest(collection="orl", image=shot(1, 2), top_k=top_k),
            company,
            "top_k",
        )
    expect(
        invalid,
        stub.Search,
        collections_pb2.SearchRequest(collection="orl", image=shot(1, 2), threshold=-1),
        company,
        "threshold",
    )
    expect(invalid, stub.Search, collections_pb2.SearchRequest(collection="orl"), company)
    expect(invalid, stub.AddFace, collections_pb2.AddFaceRequest(collection="orl"), company)
    expect(
        grpc.StatusCode.NOT_FOUND,
        stub.Search,
        collections_pb2.SearchRequest(collection="nope", image=shot(1, 2)),
        company,
        "nope",
    )
    expect(
        grpc.StatusCode.NOT_FOUND,
        stub.AddFace,
        collections_pb2.AddFaceRequest(collection="nope", image=shot(1, 1)),
        company,
    )
    expect(
        invalid,
        stub.AddFace,
        collections_pb2.AddFaceRequest(collection="orl", image=common_pb2.Media()),
        company,
        "image.data",
    )
    expect(
        grpc.StatusCode.NOT_FOUND,
        stub.RemoveFace,
        collections_pb2.RemoveFaceRequest(collection="orl", face_id="0" * 32),
        company,
    )


def test_another_company_gets_not_found(
    stub: collections_pb2_grpc.CollectionsStub,
    company: Metadata,
    enrolled: dict[str, str],
    api_server: ServerThread,
) -> None:
    other: Metadata = ((company[0][0], company[0][1] + "-other"),)
    api_server.ensure_company(other[0][1])
    face_id = next(iter(enrolled))
    nf = grpc.StatusCode.NOT_FOUND
    expect(
        nf, stub.Search, collections_pb2.SearchRequest(collection="orl", image=shot(1, 2)), other
    )
    expect(
        nf, stub.AddFace, collections_pb2.AddFaceRequest(collection="orl", image=shot(1, 1)), other
    )
    expect(nf, stub.ListFaces, collections_pb2.ListFacesRequest(collection="orl"), other)
    expect(
        nf,
        stub.RemoveFace,
        collections_pb2.RemoveFaceRequest(collection="orl", face_id=face_id),
        other,
    )
    expect(nf, stub.DeleteCollection, collections_pb2.DeleteCollectionRequest(name="orl"), other)
    listed = stub.ListCollections(collections_pb2.ListCollectionsRequest(), metadata=other)
    assert list(listed.collections) == []
    # Its own collection of the same name is its own, and A's face id is not in it.
    create(stub, other, "orl")
    expect(
        nf,
        stub.RemoveFace,
        collections_pb2.RemoveFaceRequest(collection="orl", face_id=face_id),
        other,
    )
    assert search(stub, other, image=shot(1, 2)).hits == []
    assert search(stub, company, image=shot(1, 2)).searched == len(PEOPLE)


def test_remove_face_then_search_misses_it(
    stub: collections_pb2_grpc.CollectionsStub, company: Metadata, enrolled: dict[str, str]
) -> None:
    top = search(stub, company, image=shot(4, 2), top_k=1).hits[0]
    assert top.face.person_label == "s4" and top.match
    stub.RemoveFace(
        collections_pb2.RemoveFaceRequest(collection="orl", face_id=top.face.id), metadata=company
    )
    reply = search(stub, company, image=shot(4, 2), top_k=100)
    assert reply.searched == len(PEOPLE) - 1 and len(reply.hits) == len(PEOPLE) - 1
    assert top.face.id not in {h.face.id for h in reply.hits}
    assert not any(h.match for h in reply.hits)
    expect(
        grpc.StatusCode.NOT_FOUND,
        stub.RemoveFace,
        collections_pb2.RemoveFaceRequest(collection="orl", face_id=top.face.id),
        company,
    )


def test_list_faces_pages(
    stub: collections_pb2_grpc.CollectionsStub, company: Metadata, enrolled: dict[str, str]
) -> None:
    seen: list[collections_pb2.CollectionFace] = []
    token = ""
    while True:
        page = stub.ListFaces(
            collections_pb2.ListFacesRequest(collection="orl", page_size=4, page_token=token),
            metadata=company,
        )
        assert len(page.faces) <= 4
        seen += page.faces
        token = page.next_page_token
        if not token:
            break
    assert {f.id: f.person_label for f in seen} == enrolled
    assert all(f.face.box.width > 0 and len(f.face.landmarks) == 5 for f in seen)
    expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.ListFaces,
        collections_pb2.ListFacesRequest(collection="orl", page_token="not-a-token"),
        company,
    )


def _media_through_api(channel: grpc.Channel, company: Metadata, data: bytes) -> str | None:
    """Upload through the Folders API; None while that API is not implemented."""
    folders = folders_pb2_grpc.FoldersStub(channel)
    try:
        folder = folders.CreateFolder(folders_pb2.CreateFolderRequest(), metadata=company)
        parts = iter(
            [
                folders_pb2.UploadMediaRequest(
                    header=folders_pb2.UploadMediaHeader(folder_id=folder.id, tags=["photo_id"])
                ),
                folders_pb2.UploadMediaRequest(chunk=data),
            ]
        )
        return folders.UploadMedia(parts, metadata=company, timeout=30).id
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.UNIMPLEMENTED:
            return None
        raise


def _media_through_storage(server: ServerThread, company: Metadata, data: bytes) -> str:
    from vigil.storage import folders as folder_repo
    from vigil.storage.tables import Media

    assert server.running is not None
    app = server.running.app
    key = app.blobs.put(data)
    with app.database.session() as s:
        company_id = folder_repo.ensure_company(company[0][1], session=s).id
        folder = folder_repo.create_folder({}, company_id=company_id, session=s)
        media = Media(
            company_id=company_id,
            folder_id=folder.id,
            media_type="IMAGE",
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
            content_type="image/jpeg",
            blob_key=key,
        )
        folder_repo.add_media(media, session=s)
        s.commit()
        return media.id


def test_add_face_from_an_uploaded_media(
    stub: collections_pb2_grpc.CollectionsStub,
    company: Metadata,
    api_channel: grpc.Channel,
    api_server: ServerThread,
) -> None:
    data = read(FACES / "obama.jpg")
    media_id = _media_through_api(api_channel, company, data)
    if media_id is None:
        media_id = _media_through_storage(api_server, company, data)
    create(stub, company, "orl")
    face = stub.AddFace(
        collections_pb2.AddFaceRequest(collection="orl", media_id=media_id, person_label="obama"),
        metadata=company,
        timeout=30,
    )
    assert face.source_media_id == media_id and face.face.box.width > 0
    reply = search(stub, company, image=common_pb2.Media(data=read(FACES / "obama2.jpg")))
    assert reply.hits[0].face.id == face.id and reply.hits[0].match
    assert reply.hits[0].face.source_media_id == media_id
    # Another company's media is not found.
    other: Metadata = ((company[0][0], company[0][1] + "-other"),)
    api_server.ensure_company(other[0][1])
    create(stub, other, "orl")
    expect(
        grpc.StatusCode.NOT_FOUND,
        stub.AddFace,
        collections_pb2.AddFaceRequest(collection="orl", media_id=media_id),
        other,
    )
