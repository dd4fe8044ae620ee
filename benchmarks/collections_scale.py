"""How 1:N search in memory scales: ``python -m benchmarks.collections_scale``.

For N random 128-d float32 faces (1e3 … 1e6) it measures

* the memory of the index entry (the float32 matrix, 512 B per face, plus its row norms);
* the median time of one top-5 search on the matrix (``vigil.storage.face_index.rank``: one
  matrix-vector product, argpartition, exact distances for the 5);
* for N up to 1e5, with the faces stored in a SQLite collection: the time a replica takes to load
  them into its index (the first, cold ``FaceIndex.search_detailed``), and the median of a warm
  ``search_detailed`` (which adds the revision check, one indexed query).

The load is not measured at 1e6: writing a million rows into SQLite for each run takes minutes and
about 0.7 GB of disk, and the load is linear in N (one SELECT of three columns, one bytes join), so
the 1e5 figure times ten is the estimate. The matrix-vector product runs in OpenBLAS, which starts
its own threads: on a busy machine ``OPENBLAS_NUM_THREADS=1`` is often faster. Prints a table and
writes ``benchmarks/reports/collections_scale.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import insert, update
from sqlmodel import col

from vigil.storage import collections as repo
from vigil.storage.db import Database, migrate
from vigil.storage.face_index import FaceIndex, IndexEntry, rank
from vigil.storage.folders import ensure_company
from vigil.storage.tables import Collection, CollectionFace, new_id

REPORT = Path(__file__).resolve().parent / "reports" / "collections_scale.json"
SIZES = (1_000, 10_000, 100_000, 1_000_000)
MAX_LOADED = 100_000
DIM = repo.EMBEDDING_SIZE


@dataclass
class Row:
    faces: int
    memory_mb: float
    search_ms: float
    warm_search_ms: float | None = None
    load_s: float | None = None


def random_faces(n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-scale vectors like dlib's (norm ≈ 1)."""
    matrix = rng.normal(0.0, 1.0 / np.sqrt(DIM), (n, DIM)).astype(np.float32)
    return matrix


def median_ms(fn: object, repeats: int) -> float:
    assert callable(fn)
    fn()  # warm up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def in_memory(n: int, rng: np.random.Generator, repeats: int) -> Row:
    matrix = random_faces(n, rng)
    ids = [f"{i:032x}" for i in range(n)]
    entry = IndexEntry.of("bench", 1, repo.Embeddings(ids, ids, matrix))
    queries = random_faces(repeats + 1, rng)
    position = iter(range(repeats + 1))
    ms = median_ms(lambda: rank(entry, queries[next(position)], 5), repeats)
    return Row(faces=n, memory_mb=entry.nbytes / 2**20, search_ms=ms)


def fill_sqlite(database: Database, n: int, rng: np.random.Generator) -> str:
    with database.session() as s:
        company_id = ensure_company("bench", session=s).id
        collection = repo.create_collection("bench", {}, company_id=company_id, session=s)
        s.commit()
        for start in range(0, n, 10_000):
            count = min(10_000, n - start)
            block = random_faces(count, rng)
            s.execute(
                insert(CollectionFace),
                [
                    {
                        "id": new_id(),
                        "company_id": company_id,
                        "collection_id": collection.id,
                        "person_label": f"p{start + i}",
                        "meta": {},
                        "embedding": block[i].tobytes(),
                        "model_name": repo.MODEL_NAME,
                        "model_version": repo.MODEL_VERSION,
                        "face": {},
                    }
                    for i in range(count)
                ],
            )
        s.execute(
            update(Collection)
            .where(col(Collection.id) == collection.id)
            .values(revision=n, face_count=n)
        )
        s.commit()
        return company_id


def with_sqlite(row: Row, rng: np.random.Generator, repeats: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        database = Database(f"sqlite:///{Path(tmp) / 'bench.db'}")
        migrate(database.engine)
        company_id = fill_sqlite(database, row.faces, rng)
        index = FaceIndex()
        q = random_faces(1, rng)[0]
        with database.session() as s:
            started = time.perf_counter()
            result = index.search_detailed(company_id, "bench", q, 5, session=s)
            row.load_s = time.perf_counter() - started
            assert result.reloaded and result.searched == row.faces

            def warm() -> None:
                assert not index.search_detailed(company_id, "bench", q, 5, session=s).reloaded

            row.warm_search_ms = median_ms(warm, repeats)
        database.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=list(SIZES))
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--out", type=Path, default=REPORT)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for n in args.sizes:
        row = in_memory(n, rng, args.repeats)
        if n <= MAX_LOADED:
            with_sqlite(row, rng, args.repeats)
        rows.append(row)
        print(f"measured N={n}", flush=True)
    header = f"{'faces':>10} {'memory MB':>10} {'search ms':>10} {'+DB check ms':>13} {'load s':>8}"
    print(header)
    for row in rows:
        warm = f"{row.warm_search_ms:.3f}" if row.warm_search_ms is not None else "-"
        load = f"{row.load_s:.3f}" if row.load_s is not None else "-"
        print(f"{row.faces:>10} {row.memory_mb:>10.1f} {row.search_ms:>10.3f} {warm:>13} {load:>8}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "collections_scale",
        "dim": DIM,
        "top_k": 5,
        "repeats": args.repeats,
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average_1m": os.getloadavg()[0],
            "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", ""),
        },
        "numpy": np.__version__,
        "load_measured_up_to": MAX_LOADED,
        "rows": [asdict(row) for row in rows],
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
