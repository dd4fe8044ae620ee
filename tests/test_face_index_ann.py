"""The approximate index (HNSW graph, candidates re-scored exactly) against exact search.

The known identities are ORL's 400 real templates (40 people x 10 shots, through the server's
engine): shots 2-10 are enrolled, shot 1 of each person is a query. Around them, 9,640 synthetic
faces are drawn (a real template plus noise, about as far from it as another person), so the
gallery holds 10,000 faces crowded where the real ones are, and 200 more queries are drawn the same
way. The same gallery is searched exactly and through the graph.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ORL, read
from vigil.inference.decisions import is_match
from vigil.storage import collections as repo
from vigil.storage.face_index import CollectionIndex, IndexConfig
from vigil.v1 import common_pb2, instant_pb2, instant_pb2_grpc

GALLERY = 10_000
THRESHOLD = 0.6
SEED = 20261202


@pytest.fixture(scope="module")
def orl(stub: instant_pb2_grpc.InstantStub) -> tuple[np.ndarray, np.ndarray]:
    """ORL's 400 templates (400x128) and their person (0-39), shot 1 of each person first."""
    paths = [ORL / f"s{p}" / f"{shot}.pgm" for shot in range(1, 11) for p in range(1, 41)]

    def extract(path: Path) -> np.ndarray:
        request = instant_pb2.TemplateRequest(image=common_pb2.Media(data=read(path)))
        return np.asarray(stub.ExtractTemplate(request, timeout=60).template.values, np.float32)

    with ThreadPoolExecutor(4) as pool:
        templates = np.stack(list(pool.map(extract, paths)))
    return templates, np.tile(np.arange(40), 10)


def around(templates: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Synthetic faces near real ones: at a distance of about 0.55 (near the 0.6 threshold)."""
    seeds = templates[rng.integers(0, len(templates), count)]
    noise = rng.normal(0.0, 0.55 / np.sqrt(repo.EMBEDDING_SIZE), seeds.shape)
    return (seeds + noise).astype(np.float32)


@pytest.fixture(scope="module")
def indexes(
    orl: tuple[np.ndarray, np.ndarray],
) -> tuple[CollectionIndex, CollectionIndex, list[str]]:
    templates, people = orl
    rng = np.random.default_rng(SEED)
    enrolled = templates[40:]  # shots 2-10
    synthetic = around(templates, GALLERY - len(enrolled), rng)
    matrix = np.concatenate([enrolled, synthetic])
    ids = [f"face{i}" for i in range(GALLERY)]
    labels = [f"person{people[40 + i]}" for i in range(len(enrolled))] + [""] * len(synthetic)
    embeddings = repo.Embeddings(ids, labels, matrix)
    exact = CollectionIndex.of("c", "wl", 0, embeddings, IndexConfig(ann_min_faces=GALLERY + 1))
    approximate = CollectionIndex.of("c", "wl", 0, embeddings, IndexConfig(ann_min_faces=1_000))
    assert exact.ann is None and approximate.ann is not None
    return exact, approximate, ids


def queries(orl: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    templates, _ = orl
    drawn = around(templates, 200, np.random.default_rng(SEED + 1))
    return np.concatenate([templates[:40], drawn])


def test_approximate_search_agrees_with_exact_on_real_faces(
    orl: tuple[np.ndarray, np.ndarray], indexes: tuple[CollectionIndex, CollectionIndex, list[str]]
) -> None:
    exact, approximate, _ = indexes
    top1 = top5 = 0
    qs = queries(orl)
    for q in qs:
        want, got = exact.search(q, 5), approximate.search(q, 5)
        top1 += want[0].face_id == got[0].face_id
        top5 += len({h.face_id for h in want} & {h.face_id for h in got})
        if want[0].face_id == got[0].face_id:
            # Re-scored exactly: the same distance to the bit, so the same decision.
            assert got[0].distance == want[0].distance
            assert is_match(got[0].distance, THRESHOLD) == is_match(want[0].distance, THRESHOLD)
        for hit in got:  # the graph's hits carry exact distances, never invented faces
            assert hit.distance == pytest.approx(
                float(np.linalg.norm(approximate.vectors[approximate.slot_of[hit.face_id]] - q)),
                abs=1e-6,
            )
    assert top1 / len(qs) >= 0.99, f"recall@1 {top1 / len(qs):.3f}"
    assert top5 / (5 * len(qs)) >= 0.97, f"top-5 overlap {top5 / (5 * len(qs)):.3f}"


def test_orl_people_are_identified_through_the_graph(
    orl: tuple[np.ndarray, np.ndarray], indexes: tuple[CollectionIndex, CollectionIndex, list[str]]
) -> None:
    """Shot 1 of each ORL person finds that person among 10,000 faces (the model's rank-1 on ORL
    is 99.8 %): the synthetic crowd around them does not push them out."""
    templates, _ = orl
    _, approximate, _ = indexes
    found = 0
    for person in range(40):
        hits = approximate.search(templates[person], 20)
        labelled = [h for h in hits if h.person_label]
        found += bool(labelled) and labelled[0].person_label == f"person{person}"
    assert found >= 39


def test_graph_adds_and_removes_incrementally(
    orl: tuple[np.ndarray, np.ndarray], indexes: tuple[CollectionIndex, CollectionIndex, list[str]]
) -> None:
    templates, _ = orl
    _, approximate, ids = indexes
    graph_before = approximate.ann
    q = templates[0]  # person 0, shot 1: not enrolled
    approximate.add("new-face", "person0-new", q.copy())
    assert approximate.ann is graph_before  # added to the graph, not rebuilt
    hit = approximate.search(q, 1)[0]
    assert (hit.face_id, hit.distance) == ("new-face", 0.0)
    approximate.remove("new-face")
    assert all(h.face_id != "new-face" for h in approximate.search(q, 5))
    # Removing the current nearest face promotes the next one.
    first, second = (h.face_id for h in approximate.search(q, 2))
    approximate.remove(first)
    assert approximate.search(q, 1)[0].face_id == second
    assert approximate.size == GALLERY - 1 and first in ids
