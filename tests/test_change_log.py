"""The collections' change log: replicas apply single changes, load snapshots and replay from
them, see another replica's add within a second (SQLite polling, PostgreSQL NOTIFY), and a search
may ask for read-your-writes. Each "replica" here is a FaceIndex with its own database engine."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from tests.conftest import Metadata
from vigil.inference.errors import InvalidArgument
from vigil.storage import collections as repo
from vigil.storage import face_changes
from vigil.storage.db import Database, migrate
from vigil.storage.face_index import FaceIndex, IndexConfig
from vigil.storage.folders import ensure_company
from vigil.v1 import collections_pb2, collections_pb2_grpc, common_pb2

DIM = repo.EMBEDDING_SIZE


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    migrate(database.engine)
    yield database
    database.dispose()


@pytest.fixture
def tenant(db: Database) -> str:
    with db.session() as s:
        company_id = ensure_company("company-a", session=s).id
        repo.create_collection("wl", {}, company_id=company_id, session=s)
        s.commit()
    return company_id


def vec(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.1, DIM).astype(np.float32)


def add(db: Database, tenant: str, embedding: np.ndarray, label: str = "") -> tuple[str, int]:
    with db.session() as s:
        _, face, seq = repo.add_face_with_sequence(
            "wl", repo.NewFace(embedding, person_label=label), company_id=tenant, session=s
        )
        s.commit()
        return face.id, seq


def remove(db: Database, tenant: str, face_id: str) -> int:
    with db.session() as s:
        seq = repo.remove_face("wl", face_id, company_id=tenant, session=s)
        s.commit()
        return seq


def nearest(index: FaceIndex, db: Database, tenant: str, q: np.ndarray, k: int = 1) -> list[str]:
    with db.session() as s:
        return [hit.face_id for hit in index.search(tenant, "wl", q, k, session=s)]


def collection_id(db: Database, tenant: str) -> str:
    with db.session() as s:
        return repo.get_collection("wl", company_id=tenant, session=s).id


def test_sequence_numbers_grow_in_commit_order(db: Database, tenant: str) -> None:
    first, seq1 = add(db, tenant, vec(1))
    _, seq2 = add(db, tenant, vec(2))
    seq3 = remove(db, tenant, first)
    assert 0 < seq1 < seq2 < seq3
    with db.session() as s:
        changes = face_changes.since(0, session=s)
        assert face_changes.latest(s) == seq3
    assert [(c.seq, c.op) for c in changes] == [(seq1, "add"), (seq2, "add"), (seq3, "remove")]
    # The first face is gone: its add carries no row any more (its removal follows).
    assert changes[0].embedding is None and changes[1].embedding is not None


@pytest.mark.parametrize("ann_min_faces", [1_000_000, 20], ids=["exact", "graph"])
def test_single_changes_are_applied_without_a_reload(
    db: Database, tenant: str, ann_min_faces: int
) -> None:
    ids = [add(db, tenant, vec(i))[0] for i in range(30)]
    here = FaceIndex(IndexConfig(ann_min_faces=ann_min_faces))
    assert nearest(here, db, tenant, vec(3)) == [ids[3]]
    entry = here.collection(tenant, collection_id(db, tenant))
    assert entry is not None and (entry.ann is not None) == (ann_min_faces == 20)
    new, _ = add(db, tenant, vec(100))
    remove(db, tenant, ids[3])
    with db.session() as s:
        here.sync(s)
    assert here.holds(tenant, entry.collection_id, new) is True
    assert here.holds(tenant, entry.collection_id, ids[3]) is False
    assert nearest(here, db, tenant, vec(100)) == [new]
    assert ids[3] not in nearest(here, db, tenant, vec(3), k=5)
    assert (here.loads, here.applied) == (1, 2)


def test_snapshot_then_replay(db: Database, tenant: str, tmp_path: Path) -> None:
    config = IndexConfig(ann_min_faces=20, snapshot_dir=tmp_path, snapshot_min_faces=1)
    ids = [add(db, tenant, vec(i))[0] for i in range(40)]
    first = FaceIndex(config)
    nearest(first, db, tenant, vec(0))  # loads and builds the graph, saved as a snapshot
    cid = collection_id(db, tenant)
    assert (tmp_path / cid / "graph.usearch").exists()
    # Changes while no replica runs: the next start replays them over the snapshot.
    new, _ = add(db, tenant, vec(500))
    remove(db, tenant, ids[0])
    second = FaceIndex(config)
    assert nearest(second, db, tenant, vec(500)) == [new]
    assert ids[0] not in nearest(second, db, tenant, vec(0), k=5)
    assert (second.loads, second.snapshot_loads, second.applied) == (1, 1, 2)
    # The same answers as a replica that loaded from the database.
    fresh = FaceIndex(IndexConfig(ann_min_faces=1_000_000))
    for seed in range(40):
        assert nearest(second, db, tenant, vec(seed), 5) == nearest(fresh, db, tenant, vec(seed), 5)
    # At start (the follower's first turn) a replica loads its snapshots before any search.
    third = FaceIndex(config)
    with db.session() as s:
        assert third.preload_snapshots(s) == 1
    assert (third.snapshot_loads, third.holds(tenant, cid, new)) == (1, True)
    assert third.holds(tenant, cid, ids[0]) is False
    # A snapshot of a collection deleted since is not used for a new one of that name.
    with db.session() as s:
        repo.delete_collection("wl", company_id=tenant, session=s)
        repo.create_collection("wl", {}, company_id=tenant, session=s)
        s.commit()
    assert nearest(FaceIndex(config), db, tenant, vec(500)) == []


def test_another_replica_sees_an_add_within_a_second(
    database_url: str, db: Database, tenant: str
) -> None:
    """Replica B follows the log in the background; it is never searched, so only the follower
    can bring the face in. On PostgreSQL the poll is 30 s: only the NOTIFY can do it in time."""
    ids = [add(db, tenant, vec(i))[0] for i in range(5)]
    replica_b = Database(database_url)
    index_b = FaceIndex()
    try:
        assert nearest(index_b, replica_b, tenant, vec(1)) == [ids[1]]
        follower = index_b.follow(replica_b, poll_s=30.0 if not replica_b.sqlite else 0.2)
        time.sleep(0.5)  # LISTEN in place
        cid = collection_id(db, tenant)
        try:
            for i in range(3):
                new, _ = add(db, tenant, vec(1000 + i))  # on replica A
                added = time.monotonic()
                while not index_b.holds(tenant, cid, new):
                    assert time.monotonic() - added < 1.0, "not seen by replica B within 1 s"
                    time.sleep(0.01)
        finally:
            follower.stop()
        assert index_b.loads == 1 and index_b.applied == 3
    finally:
        replica_b.dispose()


def test_read_your_writes(database_url: str, db: Database, tenant: str) -> None:
    add(db, tenant, vec(1))
    replica_b = Database(database_url)
    index_b = FaceIndex()
    try:
        nearest(index_b, replica_b, tenant, vec(1))
        new, seq = add(db, tenant, vec(2))
        with replica_b.session() as s:
            found = index_b.search_detailed(tenant, "wl", vec(2), 1, session=s, min_sequence=seq)
        assert found.hits[0].face_id == new and found.sequence >= seq
        with replica_b.session() as s, pytest.raises(InvalidArgument, match="ahead of the change"):
            index_b.search_detailed(tenant, "wl", vec(2), 1, session=s, min_sequence=seq + 10)
    finally:
        replica_b.dispose()


def test_search_api_reads_its_writes(api_channel: grpc.Channel, company: Metadata) -> None:
    stub = collections_pb2_grpc.CollectionsStub(api_channel)
    stub.CreateCollection(collections_pb2.CreateCollectionRequest(name="ryw"), metadata=company)
    values = [float(v) for v in vec(7)]
    template = common_pb2.Template(values=values)
    face = stub.AddFace(
        collections_pb2.AddFaceRequest(collection="ryw", template=template),
        metadata=company,
    )
    assert face.sequence > 0
    found = stub.Search(
        collections_pb2.SearchRequest(
            collection="ryw", template=template, min_sequence=face.sequence
        ),
        metadata=company,
    )
    assert [h.face.id for h in found.hits] == [face.id] and found.sequence >= face.sequence
    removed = stub.RemoveFace(
        collections_pb2.RemoveFaceRequest(collection="ryw", face_id=face.id),
        metadata=company,
    )
    assert removed.sequence > face.sequence
    for bad in (-1, removed.sequence + 1000):
        with pytest.raises(grpc.RpcError) as caught:
            stub.Search(
                collections_pb2.SearchRequest(
                    collection="ryw", template=template, min_sequence=bad
                ),
                metadata=company,
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "min_sequence" in (caught.value.details() or "")
    stub.DeleteCollection(collections_pb2.DeleteCollectionRequest(name="ryw"), metadata=company)
