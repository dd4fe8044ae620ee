"""Large collections, exact vs approximate: ``python -m benchmarks.collections_scale``.

For N synthetic 128-d faces (default 1e5 and 1e6; ``--quick``: 1e4) shaped like a watch-list of
real templates (N/5 people, five photos each: a person's photos about 0.5 apart, different people
about 1.4, like dlib's embeddings), with queries that are new photos of enrolled people, it measures

* exact search (``CollectionIndex`` without a graph: one matrix-vector product) and approximate
  search (the usearch HNSW graph, f16, ``ann_candidates`` re-scored exactly): p50 and p99 of one
  top-5 search, recall@1 (the approximate top hit is the exact one) and top-5 overlap;
* the graph's build time (a replica without a snapshot, or a collection crossing the threshold);
* adds and deletes per second applied one by one (what a replica does for each change-log row);
* memory per face (float32 vectors, norms and the graph) and the process's RSS growth;
* snapshot save and load time (what a replica restarting with a snapshot pays instead of the build);
* how long a single add through the database takes to reach another replica's index, with the
  collection in memory: replica A commits it, replica B's follower applies it (SQLite polling every
  ``--poll`` s; on PostgreSQL with ``--postgres URL`` a NOTIFY wakes it);

and estimates 1e7 from the measured growth (memory and build linear in N, search as measured at the
largest N times the graph's log growth). numpy and usearch use ``--threads`` threads (default 2,
the machine the issue asks about). Prints a table and writes
``benchmarks/reports/collections_scale.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from vigil.storage import collections as repo
from vigil.storage.db import Database, migrate
from vigil.storage.face_index import CollectionIndex, FaceIndex, IndexConfig
from vigil.storage.folders import ensure_company

REPORT = Path(__file__).resolve().parent / "reports" / "collections_scale.json"
SIZES = (100_000, 1_000_000)
DIM = repo.EMBEDDING_SIZE
PHOTOS_PER_PERSON = 5
#: Spread of one person's photos (per-dimension std): about 0.5 between two photos.
PHOTO_NOISE = 0.35 / math.sqrt(DIM)


@dataclass
class Row:
    faces: int
    exact_p50_ms: float
    exact_p99_ms: float
    approx_p50_ms: float
    approx_p99_ms: float
    recall_at_1: float
    top5_overlap: float
    build_s: float
    adds_per_s: float
    deletes_per_s: float
    memory_bytes_per_face: float
    graph_bytes_per_face: float
    rss_growth_mb: float
    snapshot_save_s: float
    snapshot_load_s: float
    replica_visible_ms: float | None = None


def gallery(
    n: int, rng: np.random.Generator, templates: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """n faces of n/5 people, and the people's centers. Without ``templates`` the people are
    random unit-scale points (all about 1.4 apart: no structure, the graph's hardest case); with
    real templates (``--templates``, e.g. ORL's 400) each person is a real template moved by about
    0.55, so people crowd where real faces are."""
    people = max(1, n // PHOTOS_PER_PERSON)
    if templates is None:
        centers = rng.normal(0.0, 1.0 / math.sqrt(DIM), (people, DIM)).astype(np.float32)
    else:
        seeds = templates[rng.integers(0, len(templates), people)]
        offset = rng.normal(0.0, 0.55 / math.sqrt(DIM), seeds.shape)
        centers = (seeds + offset).astype(np.float32)
    person = np.arange(n) % people
    faces = np.empty((n, DIM), np.float32)
    for start in range(0, n, 100_000):  # blockwise: no n x 128 float64 temporary
        stop = min(n, start + 100_000)
        noise = rng.normal(0.0, PHOTO_NOISE, (stop - start, DIM)).astype(np.float32)
        faces[start:stop] = centers[person[start:stop]] + noise
    return faces, centers


def new_photos(centers: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    chosen = centers[rng.integers(0, len(centers), count)]
    return (chosen + rng.normal(0.0, PHOTO_NOISE, chosen.shape)).astype(np.float32)


def timed(fn: object, queries: np.ndarray) -> tuple[list[list[str]], np.ndarray]:
    assert callable(fn)
    fn(queries[0])  # warm up
    results, times = [], []
    for q in queries:
        started = time.perf_counter()
        results.append([hit.face_id for hit in fn(q)])
        times.append((time.perf_counter() - started) * 1000)
    return results, np.array(times)


def exact_search(
    embeddings: repo.Embeddings, queries: np.ndarray
) -> tuple[list[list[str]], np.ndarray]:
    exact = CollectionIndex.of(
        "bench", "bench", 0, embeddings, IndexConfig(ann_min_faces=len(embeddings.ids) + 1)
    )
    return timed(lambda q: exact.search(q, 5), queries)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(n: int, args: argparse.Namespace, rng: np.random.Generator) -> Row:
    rss_before = rss_mb()
    templates = np.load(args.templates).astype(np.float32) if args.templates else None
    faces, centers = gallery(n, rng, templates)
    ids = [f"{i:032x}" for i in range(n)]
    embeddings = repo.Embeddings(ids, ids, faces)
    config = IndexConfig(
        ann_min_faces=1, ann_candidates=args.candidates, build_threads=args.threads
    )
    queries = new_photos(centers, args.queries, rng)
    want, exact_ms = exact_search(embeddings, queries)
    started = time.perf_counter()
    approximate = CollectionIndex.of("bench", "bench", 0, embeddings, config)
    build_s = time.perf_counter() - started
    print(f"  N={n}: graph built in {build_s:.1f} s", flush=True)
    del faces, embeddings
    got, approx_ms = timed(lambda q: approximate.search(q, 5), queries)
    recall = float(np.mean([w[0] == g[0] for w, g in zip(want, got, strict=True)]))
    overlap = float(np.mean([len(set(w) & set(g)) / 5 for w, g in zip(want, got, strict=True)]))
    graph_bytes = int(approximate.ann.memory_usage)
    memory = approximate.nbytes

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "bench"
        started = time.perf_counter()
        approximate.save(folder)
        save_s = time.perf_counter() - started
        started = time.perf_counter()
        restored = CollectionIndex.load(folder, config)
        load_s = time.perf_counter() - started
        assert restored.size == n and restored.ann is not None
        del restored

    extra = new_photos(centers, args.changes, rng)
    started = time.perf_counter()
    for i, vector in enumerate(extra):
        approximate.add(f"new{i}", "", vector)
    adds = args.changes / (time.perf_counter() - started)
    started = time.perf_counter()
    for i in range(args.changes):
        approximate.remove(ids[i])
    deletes = args.changes / (time.perf_counter() - started)

    row = Row(
        faces=n,
        exact_p50_ms=float(np.percentile(exact_ms, 50)),
        exact_p99_ms=float(np.percentile(exact_ms, 99)),
        approx_p50_ms=float(np.percentile(approx_ms, 50)),
        approx_p99_ms=float(np.percentile(approx_ms, 99)),
        recall_at_1=recall,
        top5_overlap=overlap,
        build_s=build_s,
        adds_per_s=adds,
        deletes_per_s=deletes,
        memory_bytes_per_face=memory / n,
        graph_bytes_per_face=graph_bytes / n,
        rss_growth_mb=rss_mb() - rss_before,
        snapshot_save_s=save_s,
        snapshot_load_s=load_s,
    )
    row.replica_visible_ms = replica_visibility(approximate, args)
    return row


def replica_visibility(entry: CollectionIndex, args: argparse.Namespace) -> float:
    """Median ms from replica A's commit of one add to replica B's follower having applied it,
    with ``entry`` (the large collection) installed in B's index as if loaded."""
    with tempfile.TemporaryDirectory() as tmp:
        url = args.postgres or f"sqlite:///{Path(tmp) / 'bench.db'}"
        replica_a, replica_b = Database(url), Database(url)
        migrate(replica_a.engine)
        with replica_a.session() as s:
            company_id = ensure_company(f"bench-{os.getpid()}-{time.time_ns()}", session=s).id
            collection = repo.create_collection("bench", {}, company_id=company_id, session=s)
            s.commit()
        index_b = FaceIndex()
        with replica_b.session() as s:
            index_b.sync(s)
        entry.collection_id = collection.id
        entry.seq = index_b.sequence or 0
        index_b.install(company_id, entry)
        follower = index_b.follow(replica_b, args.poll)
        time.sleep(0.5)
        times = []
        try:
            pause = np.random.default_rng(1).uniform(0.0, args.poll, args.visibility_adds)
            for i in range(args.visibility_adds):
                time.sleep(float(pause[i]))  # not in step with the follower's polls
                new = repo.NewFace(np.full(DIM, 0.01 * (i + 1), np.float32))
                with replica_a.session() as s:
                    _, face = repo.add_face("bench", new, company_id=company_id, session=s)
                    s.commit()
                committed = time.perf_counter()
                while not index_b.holds(company_id, collection.id, face.id):
                    if time.perf_counter() - committed > 10:
                        raise RuntimeError("an add was not applied within 10 s")
                    time.sleep(0.001)
                times.append((time.perf_counter() - committed) * 1000)
        finally:
            follower.stop()
            replica_a.dispose()
            replica_b.dispose()
        return float(np.median(times))


def estimate(rows: list[Row], target: int) -> dict[str, float]:
    """Linear extrapolation of memory and build; search grows with log N in the graph."""
    last = max(rows, key=lambda r: r.faces)
    scale = target / last.faces
    return {
        "faces": target,
        "memory_gb": last.memory_bytes_per_face * target / 1e9,
        "build_s": last.build_s * scale * math.log(target) / math.log(last.faces),
        "approx_p50_ms": last.approx_p50_ms * math.log(target) / math.log(last.faces),
        "exact_p50_ms": last.exact_p50_ms * scale,
        "snapshot_load_s": last.snapshot_load_s * scale,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=list(SIZES))
    parser.add_argument("--quick", action="store_true", help="N=10,000 only (a smoke run)")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--changes", type=int, default=1_000, help="adds and deletes timed")
    parser.add_argument("--candidates", type=int, default=IndexConfig().ann_candidates)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--poll", type=float, default=0.5, help="the follower's poll (s)")
    parser.add_argument("--visibility-adds", type=int, default=20)
    parser.add_argument(
        "--templates", type=Path, help="a .npy of real templates (n x 128) to draw people around"
    )
    parser.add_argument("--postgres", help="measure replica visibility on this PostgreSQL URL")
    parser.add_argument("--out", type=Path, default=REPORT)
    args = parser.parse_args()
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(args.threads))
    sizes = [10_000] if args.quick else args.sizes
    rng = np.random.default_rng(0)
    rows = []
    for n in sizes:
        rows.append(measure(n, args, rng))
        print(f"measured N={n}", flush=True)
    print(
        f"{'faces':>9} {'exact p50/p99 ms':>17} {'approx p50/p99 ms':>18} {'recall@1':>8} "
        f"{'top5':>5} {'build s':>8} {'adds/s':>7} {'dels/s':>7} {'B/face':>7} "
        f"{'snap load s':>11} {'replica ms':>10}"
    )
    for r in rows:
        print(
            f"{r.faces:>9} {r.exact_p50_ms:>8.2f}/{r.exact_p99_ms:<8.2f} "
            f"{r.approx_p50_ms:>8.3f}/{r.approx_p99_ms:<9.3f} {r.recall_at_1:>8.3f} "
            f"{r.top5_overlap:>5.3f} {r.build_s:>8.1f} {r.adds_per_s:>7.0f} "
            f"{r.deletes_per_s:>7.0f} "
            f"{r.memory_bytes_per_face:>7.0f} {r.snapshot_load_s:>11.2f} "
            f"{r.replica_visible_ms or 0:>10.1f}"
        )
    projected = estimate(rows, 10_000_000)
    print("1e7 estimated:", {k: round(v, 2) for k, v in projected.items()})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "collections_scale",
        "dim": DIM,
        "top_k": 5,
        "queries": args.queries,
        "ann_candidates": args.candidates,
        "threads": args.threads,
        "replica_db": "postgresql" if args.postgres else "sqlite",
        "people": "around real templates" if args.templates else "random",
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average_1m": os.getloadavg()[0],
        },
        "rows": [asdict(row) for row in rows],
        "estimate_1e7": projected,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
