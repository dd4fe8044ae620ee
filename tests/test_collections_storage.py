"""The collections repository and the in-memory FaceIndex, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from sqlmodel import Session, select

from vigil.inference.errors import AlreadyExists, InvalidArgument, NotFound
from vigil.storage import collections as repo
from vigil.storage.db import Database, migrate
from vigil.storage.face_index import FaceIndex, SearchHit
from vigil.storage.folders import ensure_company
from vigil.storage.tables import CollectionFace

DIM = repo.EMBEDDING_SIZE


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    migrate(database.engine)
    yield database
    database.dispose()


@pytest.fixture
def companies(db: Database) -> tuple[str, str]:
    with db.session() as s:
        a, b = ensure_company("company-a", session=s).id, ensure_company("company-b", session=s).id
        s.commit()
    return a, b


def vec(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.1, DIM).astype(np.float32)


def add(db: Database, company: str, name: str, embedding: np.ndarray, label: str = "") -> str:
    with db.session() as s:
        _, face = repo.add_face(
            name, repo.NewFace(embedding, person_label=label), company_id=company, session=s
        )
        s.commit()
        return face.id


def create(db: Database, company: str, name: str) -> None:
    with db.session() as s:
        repo.create_collection(name, {"k": "v"}, company_id=company, session=s)
        s.commit()


def search(
    index: FaceIndex, db: Database, company: str, name: str, q: np.ndarray, k: int = 5
) -> list[SearchHit]:
    with db.session() as s:
        return index.search(company, name, q, k, session=s)


def test_names_are_validated_and_unique_per_company(
    db: Database, companies: tuple[str, str]
) -> None:
    a, b = companies
    create(db, a, "watch.list-1_A")
    with db.session() as s, pytest.raises(AlreadyExists):
        repo.create_collection("watch.list-1_A", {}, company_id=a, session=s)
    create(db, b, "watch.list-1_A")  # another company may use the same name
    for bad in ("", "x" * 65, "has space", "slash/", "ünïcode"):
        with db.session() as s, pytest.raises(InvalidArgument):
            repo.create_collection(bad, {}, company_id=a, session=s)
    with db.session() as s, pytest.raises(InvalidArgument):
        repo.create_collection("ok", {"bad key": "v"}, company_id=a, session=s)
    with db.session() as s:
        listed = repo.list_collections(company_id=a, session=s)
        assert [c.name for c in listed] == ["watch.list-1_A"]
        assert listed[0].meta == {"k": "v"}
        assert (listed[0].model_name, listed[0].model_version) == (
            repo.MODEL_NAME,
            repo.MODEL_VERSION,
        )


def test_another_company_gets_not_found(db: Database, companies: tuple[str, str]) -> None:
    a, b = companies
    create(db, a, "wl")
    face_id = add(db, a, "wl", vec(1), "alice")
    create(db, b, "mine")
    index = FaceIndex()
    with db.session() as s:
        for call in (
            lambda: repo.get_collection("wl", company_id=b, session=s),
            lambda: repo.delete_collection("wl", company_id=b, session=s),
            lambda: repo.add_face("wl", repo.NewFace(vec(2)), company_id=b, session=s),
            lambda: repo.remove_face("wl", face_id, company_id=b, session=s),
            lambda: repo.list_faces("wl", 10, "", company_id=b, session=s),
            lambda: index.search(b, "wl", vec(1), 5, session=s),
            # A's face id through B's own collection is no more visible.
            lambda: repo.remove_face("mine", face_id, company_id=b, session=s),
        ):
            with pytest.raises(NotFound):
                call()
        assert (
            repo.faces_by_id(
                repo.get_collection("wl", company_id=a, session=s).id,
                [face_id],
                company_id=b,
                session=s,
            )
            == {}
        )
    assert [h.face_id for h in search(index, db, a, "wl", vec(1))] == [face_id]


def test_add_and_remove_bump_revision_and_count(db: Database, companies: tuple[str, str]) -> None:
    a, _ = companies
    create(db, a, "wl")
    ids = [add(db, a, "wl", vec(i), f"p{i}") for i in range(3)]
    with db.session() as s:
        c = repo.get_collection("wl", company_id=a, session=s)
        assert (c.revision, c.face_count) == (3, 3)
        repo.remove_face("wl", ids[0], company_id=a, session=s)
        s.commit()
        c = repo.get_collection("wl", company_id=a, session=s)
        assert (c.revision, c.face_count) == (4, 2)
        with pytest.raises(NotFound):
            repo.remove_face("wl", ids[0], company_id=a, session=s)
        loaded = repo.load_embeddings(c.id, company_id=a, session=s)
        assert sorted(loaded.ids) == sorted(ids[1:])
        assert loaded.matrix.shape == (2, DIM) and loaded.matrix.dtype == np.float32
        row = loaded.ids.index(ids[1])
        assert loaded.labels[row] == "p1"
        np.testing.assert_array_equal(loaded.matrix[row], vec(1))


def test_add_face_refuses_other_models_and_bad_embeddings(
    db: Database, companies: tuple[str, str]
) -> None:
    a, _ = companies
    create(db, a, "wl")
    bad = (
        repo.NewFace(vec(1), model_name="facenet"),
        repo.NewFace(vec(1), model_version="v0"),
        repo.NewFace(np.zeros(DIM - 1, np.float32)),
        repo.NewFace(np.full(DIM, np.nan, np.float32)),
        repo.NewFace(vec(1), person_label="x" * 201),
    )
    for new in bad:
        with db.session() as s, pytest.raises(InvalidArgument):
            repo.add_face("wl", new, company_id=a, session=s)
    index = FaceIndex()
    with db.session() as s, pytest.raises(InvalidArgument):
        index.search_detailed(a, "wl", vec(1), 5, session=s, model=("facenet", "1"))
    with db.session() as s, pytest.raises(InvalidArgument):
        index.search(a, "wl", np.zeros(7, np.float32), 5, session=s)


def test_list_faces_pages(db: Database, companies: tuple[str, str]) -> None:
    a, _ = companies
    create(db, a, "wl")
    ids = {add(db, a, "wl", vec(i), f"p{i}") for i in range(7)}
    seen: list[str] = []
    token = ""
    with db.session() as s:
        while True:
            _, page, token = repo.list_faces("wl", 3, token, company_id=a, session=s)
            assert len(page) <= 3
            seen += [f.id for f in page]
            if not token:
                break
        assert len(seen) == len(set(seen)) == 7 and set(seen) == ids
        with pytest.raises(InvalidArgument):
            repo.list_faces("wl", 3, "garbage!", company_id=a, session=s)


def test_delete_cascades_and_evicts(db: Database, companies: tuple[str, str]) -> None:
    a, _ = companies
    create(db, a, "wl")
    for i in range(4):
        add(db, a, "wl", vec(i))
    index = FaceIndex()
    assert len(search(index, db, a, "wl", vec(0))) == 4
    assert index.cached == 1 and index.memory_bytes >= 4 * DIM * 4
    with db.session() as s:
        assert repo.delete_collection("wl", company_id=a, session=s) == 4
        s.commit()
        assert s.exec(select(CollectionFace)).all() == []
    with pytest.raises(NotFound):
        search(index, db, a, "wl", vec(0))
    assert index.cached == 0
    # The same name again is a new collection, empty.
    create(db, a, "wl")
    assert search(index, db, a, "wl", vec(0)) == []


def test_prune_evicts_collections_deleted_elsewhere(
    db: Database, companies: tuple[str, str]
) -> None:
    a, _ = companies
    create(db, a, "one")
    create(db, a, "two")
    add(db, a, "one", vec(1))
    add(db, a, "two", vec(2))
    index = FaceIndex()
    search(index, db, a, "one", vec(1))
    search(index, db, a, "two", vec(1))
    assert index.cached == 2
    with db.session() as s:
        repo.delete_collection("one", company_id=a, session=s)
        s.commit()
    with db.session() as s:
        assert index.prune(s) == 1
    assert index.cached == 1


def test_search_ranks_by_euclidean_distance(db: Database, companies: tuple[str, str]) -> None:
    a, _ = companies
    create(db, a, "wl")
    vectors = [vec(i) for i in range(20)]
    ids = [add(db, a, "wl", v, f"p{i}") for i, v in enumerate(vectors)]
    q = vectors[7] + np.float32(0.01)
    index = FaceIndex()
    with db.session() as s:
        result = index.search_detailed(a, "wl", q, 5, session=s)
    assert result.searched == 20 and result.reloaded
    expected = np.linalg.norm(np.stack(vectors) - q, axis=1)
    order = np.argsort(expected)[:5]
    assert [h.face_id for h in result.hits] == [ids[i] for i in order]
    assert result.hits[0].person_label == "p7"
    for hit, i in zip(result.hits, order, strict=True):
        assert hit.distance == pytest.approx(float(expected[i]), abs=1e-5)
    # top_k above the size returns everything, sorted.
    hits = search(index, db, a, "wl", q, k=100)
    assert len(hits) == 20
    assert [h.distance for h in hits] == sorted(h.distance for h in hits)
    with db.session() as s, pytest.raises(InvalidArgument):
        index.search(a, "wl", q, 0, session=s)


def test_second_replica_applies_changes_from_the_log(
    db: Database, companies: tuple[str, str]
) -> None:
    a, _ = companies
    create(db, a, "wl")
    first = add(db, a, "wl", vec(1), "one")
    here, there = FaceIndex(), FaceIndex()  # two replicas' indexes over one database
    assert [h.face_id for h in search(here, db, a, "wl", vec(2))] == [first]
    assert [h.face_id for h in search(there, db, a, "wl", vec(2))] == [first]
    assert (here.loads, there.loads) == (1, 1)
    # Unchanged: no reload.
    search(there, db, a, "wl", vec(2))
    assert there.loads == 1
    # A face added through "here" is found by "there" on its next search.
    second = add(db, a, "wl", vec(2), "two")
    hits = search(there, db, a, "wl", vec(2))
    assert hits[0].face_id == second and hits[0].person_label == "two"
    # Applied from the change log, one row: no reload.
    assert (there.loads, there.applied) == (1, 1)
    # And a removal too.
    with db.session() as s:
        repo.remove_face("wl", second, company_id=a, session=s)
        s.commit()
    assert [h.face_id for h in search(there, db, a, "wl", vec(2))] == [first]
    assert [h.face_id for h in search(here, db, a, "wl", vec(2))] == [first]
    assert (here.loads, there.loads) == (1, 1)
    assert (here.applied, there.applied) == (2, 2)


def test_index_is_thread_safe(db: Database, companies: tuple[str, str]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    a, _ = companies
    create(db, a, "wl")
    ids = [add(db, a, "wl", vec(i)) for i in range(10)]
    index = FaceIndex()

    def one(i: int) -> str:
        with Session(db.engine) as s:
            return index.search(a, "wl", vec(i % 10), 1, session=s)[0].face_id

    with ThreadPoolExecutor(8) as pool:
        found = list(pool.map(one, range(40)))
    assert found == [ids[i % 10] for i in range(40)]
    assert index.loads == 1  # concurrent searches of a stale collection load it once
