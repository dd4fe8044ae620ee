"""Folders, media rows, analyses and the job queue, on a fresh database per test (both backends)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypedDict, Unpack

import pytest
from sqlalchemy import text

from vigil.inference.errors import InvalidArgument, NotFound
from vigil.storage import analyses, folders
from vigil.storage.analyses import NewAnalysis
from vigil.storage.blobs import LocalBlobStore
from vigil.storage.db import Database, migrate
from vigil.storage.results import (
    AnalysisState,
    AnalysisType,
    MediaResult,
    Resolution,
    StoredResult,
)
from vigil.storage.tables import Media, utcnow


class Filters(TypedDict, total=False):
    """The ``FolderQuery`` filters the listing test combines."""

    meta_eq: list[tuple[str, str]]
    meta_ne: list[tuple[str, str]]
    created_after: datetime
    created_before: datetime
    resolutions: list[str]
    with_analyses: bool


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    migrate(database.engine)
    yield database
    database.dispose()


def _companies(db: Database) -> tuple[str, str]:
    with db.session() as s:
        a = folders.ensure_company("a", session=s).id
        b = folders.ensure_company("b", session=s).id
        s.commit()
    return a, b


def test_migrations_are_idempotent(db: Database) -> None:
    from alembic.script import ScriptDirectory

    from vigil.storage.db import alembic_config

    migrate(db.engine)
    head = ScriptDirectory.from_config(alembic_config(db.url)).get_current_head()
    with db.engine.connect() as conn:
        assert conn.execute(text("select version_num from alembic_version")).scalar() == head


def test_another_companys_folder_is_not_found(db: Database) -> None:
    a, b = _companies(db)
    with db.session() as s:
        folder = folders.create_folder({"k": "v"}, company_id=a, session=s)
        s.commit()
        with pytest.raises(NotFound):
            folders.get_folder(folder.id, company_id=b, session=s)
        with pytest.raises(NotFound):
            folders.delete_folder(folder.id, company_id=b, session=s)
        with pytest.raises(NotFound):
            analyses.create_analyses(
                folder.id, [NewAnalysis(AnalysisType.LIVENESS)], company_id=b, session=s
            )
        rows, _ = folders.list_folders(folders.FolderQuery(), company_id=b, session=s)
        assert rows == []
        assert folders.get_folder(folder.id, company_id=a, session=s).meta == {"k": "v"}


def test_metadata_is_text_and_size_limited(db: Database) -> None:
    a, _ = _companies(db)
    with db.session() as s:
        with pytest.raises(InvalidArgument, match="1024"):
            folders.create_folder({"k": "x" * 1025}, company_id=a, session=s)
        with pytest.raises(InvalidArgument, match="key"):
            folders.create_folder({"bad key!": "v"}, company_id=a, session=s)
        with pytest.raises(InvalidArgument, match="at most 64"):
            folders.create_folder({f"k{i}": "v" for i in range(65)}, company_id=a, session=s)


def test_list_filters_and_pagination(db: Database) -> None:
    a, _ = _companies(db)
    with db.session() as s:
        made = []
        for i in range(7):
            meta = {"transaction_id": f"t{i % 3}", "user_id": f"u{i}"}
            made.append(folders.create_folder(meta, company_id=a, session=s))
            s.flush()
        analyses.create_analyses(
            made[0].id, [NewAnalysis(AnalysisType.LIVENESS)], company_id=a, session=s
        )
        analyses.create_analyses(
            made[3].id, [NewAnalysis(AnalysisType.LIVENESS)], company_id=a, session=s
        )
        s.commit()

        def ids(**kwargs: Unpack[Filters]) -> set[str]:
            rows, _ = folders.list_folders(folders.FolderQuery(**kwargs), company_id=a, session=s)
            return {f.id for f in rows}

        assert ids(meta_eq=[("transaction_id", "t0")]) == {made[0].id, made[3].id, made[6].id}
        assert ids(meta_eq=[("transaction_id", "t0")], with_analyses=True) == {
            made[0].id,
            made[3].id,
        }
        assert ids(meta_eq=[("transaction_id", "t0")], with_analyses=False) == {made[6].id}
        assert ids(meta_eq=[("transaction_id", "t0"), ("user_id", "u3")]) == {made[3].id}
        assert ids(meta_ne=[("transaction_id", "t0")]) == {f.id for f in made} - {
            made[0].id,
            made[3].id,
            made[6].id,
        }
        hour_ago = utcnow() - timedelta(hours=1)
        assert len(ids(created_after=hour_ago)) == 7
        assert ids(created_before=hour_ago) == set()
        assert ids(resolutions=["PROCESSING"]) == {made[0].id, made[3].id}
        # Pages of 3 cover everything once, newest first.
        seen, token = [], ""
        while True:
            page, token = folders.list_folders(
                folders.FolderQuery(page_size=3, page_token=token), company_id=a, session=s
            )
            seen.extend(page)
            if not token:
                break
        assert [f.id for f in seen] == [
            f.id for f in sorted(made, key=lambda f: (f.created_at, f.id), reverse=True)
        ]
        with pytest.raises(InvalidArgument, match="page_token"):
            folders.list_folders(
                folders.FolderQuery(page_token="garbage!"), company_id=a, session=s
            )


def test_metadata_lookup_uses_an_index(db: Database) -> None:
    a, _ = _companies(db)
    with db.session() as s:
        for i in range(50):
            folders.create_folder({"transaction_id": f"t{i}"}, company_id=a, session=s)
        s.commit()
        if db.sqlite:
            plan = s.execute(
                text(
                    "EXPLAIN QUERY PLAN SELECT folder_id FROM foldermeta "
                    "WHERE company_id = :c AND key = 'transaction_id' AND value = 't7'"
                ),
                {"c": a},
            ).all()
            assert any("ix_folder_meta_lookup" in str(row) for row in plan), plan
        else:
            s.execute(text("SET LOCAL enable_seqscan = off"))
            plan = s.execute(
                text(
                    "EXPLAIN SELECT folder_id FROM foldermeta "
                    "WHERE company_id = :c AND key = 'transaction_id' AND value = 't7'"
                ),
                {"c": a},
            ).all()
            assert any("ix_folder_meta_lookup" in str(row) for row in plan), plan


def test_update_meta_sets_and_removes(db: Database) -> None:
    a, _ = _companies(db)
    with db.session() as s:
        folder = folders.create_folder({"k1": "v1", "k2": "v2"}, company_id=a, session=s)
        s.commit()
        folders.update_folder_meta(
            folder.id, {"k3": "v3", "k1": "new"}, ["k2"], company_id=a, session=s
        )
        s.commit()
        assert folders.get_folder(folder.id, company_id=a, session=s).meta == {
            "k1": "new",
            "k3": "v3",
        }
        rows, _ = folders.list_folders(
            folders.FolderQuery(meta_eq=[("k2", "v2")]), company_id=a, session=s
        )
        assert rows == []
        rows, _ = folders.list_folders(
            folders.FolderQuery(meta_eq=[("k1", "new")]), company_id=a, session=s
        )
        assert [f.id for f in rows] == [folder.id]


def test_delete_folder_reports_unshared_blobs(db: Database) -> None:
    a, b = _companies(db)
    with db.session() as s:
        fa = folders.create_folder({}, company_id=a, session=s)
        fb = folders.create_folder({}, company_id=b, session=s)
        s.flush()
        for folder, key in ((fa, "1" * 64), (fa, "2" * 64), (fb, "2" * 64)):
            folders.add_media(
                Media(
                    company_id=folder.company_id,
                    folder_id=folder.id,
                    media_type="IMAGE",
                    sha256=key,
                    size=1,
                    content_type="image/jpeg",
                    blob_key=key,
                ),
                session=s,
            )
        s.commit()
        media, _, orphans = folders.delete_folder(fa.id, company_id=a, session=s)
        s.commit()
    assert media == 2
    assert orphans == ["1" * 64]  # the other blob is still used by company b's media


def _queued(db: Database, count: int = 1) -> tuple[str, list[str]]:
    a, _ = _companies(db)
    with db.session() as s:
        folder = folders.create_folder({}, company_id=a, session=s)
        rows = analyses.create_analyses(
            folder.id, [NewAnalysis(AnalysisType.LIVENESS)] * count, company_id=a, session=s
        )
        s.commit()
        return folder.id, [r.id for r in rows]


def test_a_dead_workers_job_runs_again_after_its_lease(db: Database) -> None:
    _, (job_id,) = _queued(db)
    with db.session() as s:
        taken = analyses.claim("dead", 0.3, 3, session=s)
        assert taken is not None and taken.id == job_id
        assert analyses.claim("other", 30, 3, session=s) is None  # the lease holds
    time.sleep(0.4)
    with db.session() as s:
        again = analyses.claim("alive", 30, 3, session=s)
        assert again is not None and again.id == job_id and again.attempts == 2
        result = MediaResult(media_id="m", resolution=Resolution.SUCCESS)
        assert analyses.complete(
            job_id,
            "alive",
            state=AnalysisState.FINISHED,
            resolution=Resolution.SUCCESS,
            stored=StoredResult(results=[result]),
            processing_ms=1.0,
            session=s,
        )
        # The dead worker wakes up late: its result is refused, the written one stays.
        assert not analyses.complete(
            job_id,
            "dead",
            state=AnalysisState.FINISHED,
            resolution=Resolution.DECLINED,
            stored=StoredResult(),
            processing_ms=1.0,
            session=s,
        )
        row = analyses.get_analysis(job_id, company_id=again.company_id, session=s)
        assert (row.state, row.resolution) == ("FINISHED", "SUCCESS")
        assert analyses.stored_result(row).results == [result]


def test_jobs_whose_attempts_are_used_up_fail(db: Database) -> None:
    folder_id, (job_id,) = _queued(db)
    with db.session() as s:
        for worker in ("w1", "w2"):
            assert analyses.claim(worker, 0.01, 2, session=s) is not None
            time.sleep(0.02)
        assert analyses.claim("w3", 30, 2, session=s) is None
        failed = analyses.fail_exhausted(2, session=s)
        assert [f.id for f in failed] == [job_id]
        row = analyses.get_analysis(job_id, company_id=failed[0].company_id, session=s)
        assert row.state == "FAILED" and "2 attempts" in row.error
        assert (
            folders.get_folder(folder_id, company_id=row.company_id, session=s).resolution
            == "FAILED"
        )


def test_concurrent_workers_never_take_the_same_job(db: Database) -> None:
    _, job_ids = _queued(db, 12)

    def drain(worker: str) -> list[str]:
        taken = []
        with db.session() as s:
            while (job := analyses.claim(worker, 30, 3, session=s)) is not None:
                taken.append(job.id)
        return taken

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(drain, ["w1", "w2", "w3", "w4"]))
    flat = [job for taken in results for job in taken]
    assert sorted(flat) == sorted(job_ids)  # every job once, none twice


def test_folder_resolution_follows_its_analyses() -> None:
    assert analyses.aggregate([]) is None
    assert analyses.aggregate(["SUCCESS", "PROCESSING"]) == "PROCESSING"
    assert analyses.aggregate(["SUCCESS", "DECLINED", "OPERATOR_REQUIRED"]) == "DECLINED"
    assert analyses.aggregate(["SUCCESS", "OPERATOR_REQUIRED"]) == "OPERATOR_REQUIRED"
    assert analyses.aggregate(["SUCCESS", "FAILED"]) == "FAILED"
    assert analyses.aggregate(["SUCCESS", "SUCCESS"]) == "SUCCESS"


def test_blob_store_is_atomic_and_content_addressed(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    writer = store.writer(max_bytes=10)
    writer.write(b"hello")
    assert list((tmp_path / "blobs").rglob("*")) != [] and not store.exists(writer.sha256)
    key = writer.commit()
    assert store.get(key) == b"hello" and store.put(b"hello") == key
    broken = store.writer(max_bytes=10)
    broken.write(b"12345")
    with pytest.raises(Exception, match="limit"):
        broken.write(b"678901")
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []  # nothing half-written remains
    store.delete(key)
    assert not store.exists(key)


def test_analyses_finishing_together_leave_the_folder_final(db: Database) -> None:
    """Two workers completing a folder's last two analyses at once: without the folder row lock,
    each saw the other's analysis as PROCESSING and the folder stayed PROCESSING (28 of 30 tries
    on PostgreSQL)."""
    a, _ = _companies(db)
    for _ in range(10):
        with db.session() as s:
            folder = folders.create_folder({}, company_id=a, session=s)
            rows = analyses.create_analyses(
                folder.id, [NewAnalysis(AnalysisType.LIVENESS)] * 2, company_id=a, session=s
            )
            s.commit()
        with db.session() as s:
            first = analyses.claim("w1", 30, 3, session=s)
            second = analyses.claim("w2", 30, 3, session=s)
        assert first is not None and second is not None
        barrier = threading.Barrier(2)

        def finish(job_id: str, worker: str, barrier: threading.Barrier = barrier) -> None:
            with db.session() as s:
                barrier.wait()
                assert analyses.complete(
                    job_id,
                    worker,
                    state=AnalysisState.FINISHED,
                    resolution=Resolution.SUCCESS,
                    stored=StoredResult(),
                    processing_ms=1.0,
                    session=s,
                )

        threads = [
            threading.Thread(target=finish, args=(first.id, "w1")),
            threading.Thread(target=finish, args=(second.id, "w2")),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with db.session() as s:
            assert {r.id for r in rows} == {first.id, second.id}
            assert folders.get_folder(folder.id, company_id=a, session=s).resolution == "SUCCESS"
