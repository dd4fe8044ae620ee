"""In-memory matrices of collection embeddings for 1:N search, kept in step with the database.

Each (company, collection) is cached as one float32 matrix (512 bytes per 128-d face) with its
face ids, labels and squared row norms, tagged with the collection's ``revision``. A search reads
the collection's row (one indexed query), reloads the matrix only when the revision moved (a change
made here or on another replica), then ranks every face by Euclidean distance in numpy:
``|m|² - 2 m·q + |q|²`` (one matrix-vector product, no n×128 temporary), ``argpartition`` for the
top k, and exact distances ``‖m - q‖`` recomputed for those k.

Thread-safe: searches run in database threads; one lock guards the cache, and one lock per
collection makes concurrent searches of a stale collection load it once. Entries of collections
that no longer exist are evicted when their name is searched again and by a periodic prune.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
from sqlmodel import Session

from vigil.inference.errors import InvalidArgument, NotFound
from vigil.storage import collections as repo
from vigil.storage.tables import Collection


@dataclass(frozen=True)
class SearchHit:
    face_id: str
    person_label: str
    #: Euclidean distance to the query (what the callers decide a match by).
    distance: float


@dataclass(frozen=True)
class SearchResult:
    collection: Collection
    hits: list[SearchHit]
    #: Faces compared with the query.
    searched: int
    #: Time spent in the index: revision check, reload if stale, ranking.
    search_ms: float
    #: Whether this search had to load the matrix from the database.
    reloaded: bool


@dataclass(frozen=True)
class IndexEntry:
    """One collection in memory, as of ``revision``."""

    name: str
    revision: int
    ids: list[str]
    labels: list[str]
    matrix: np.ndarray  # (n, d) float32, read-only
    sq_norms: np.ndarray  # (n,) float32

    @classmethod
    def of(cls, name: str, revision: int, embeddings: repo.Embeddings) -> IndexEntry:
        matrix = embeddings.matrix
        return cls(
            name=name,
            revision=revision,
            ids=embeddings.ids,
            labels=embeddings.labels,
            matrix=matrix,
            sq_norms=np.einsum("ij,ij->i", matrix, matrix).astype(np.float32),
        )

    @property
    def nbytes(self) -> int:
        return int(self.matrix.nbytes + self.sq_norms.nbytes)


_Key = tuple[str, str]  # (company_id, collection_id)


class FaceIndex:
    """Per-collection search matrices, cached by revision. One per process (``app.face_index``)."""

    def __init__(self, prune_every_s: float = 60.0) -> None:
        self.prune_every_s = prune_every_s
        self._entries: dict[_Key, IndexEntry] = {}
        self._load_locks: dict[_Key, threading.Lock] = {}
        self._lock = threading.Lock()
        self._last_prune = time.monotonic()
        #: How many times a matrix was (re)loaded from the database (for tests and metrics).
        self.loads = 0

    # ---- searching -----------------------------------------------------------------------------

    def search(
        self,
        company_id: str,
        collection_name: str,
        query: np.ndarray,
        top_k: int,
        *,
        session: Session,
    ) -> list[SearchHit]:
        """The ``top_k`` nearest faces, nearest first. NotFound for an unknown collection."""
        return self.search_detailed(company_id, collection_name, query, top_k, session=session).hits

    def search_detailed(
        self,
        company_id: str,
        collection_name: str,
        query: np.ndarray,
        top_k: int,
        *,
        session: Session,
        model: tuple[str, str] | None = None,
    ) -> SearchResult:
        """Like ``search``, with the collection, the number searched and the time taken.

        ``model`` (name, version) is the query template's model; it must be the collection's.
        """
        started = time.perf_counter()
        if top_k < 1:
            raise InvalidArgument(f"top_k is {top_k}; it must be at least 1")
        try:
            collection = repo.get_collection(
                collection_name, company_id=company_id, session=session
            )
        except NotFound:
            self._evict_name(company_id, collection_name)
            raise
        if model is not None:
            repo.check_model(collection, *model)
        q = repo.check_embedding(query)
        entry, reloaded = self._entry(company_id, collection, session)
        hits = rank(entry, q, top_k)
        self._maybe_prune(session)
        return SearchResult(
            collection=collection,
            hits=hits,
            searched=len(entry.ids),
            search_ms=(time.perf_counter() - started) * 1000,
            reloaded=reloaded,
        )

    # ---- the cache -----------------------------------------------------------------------------

    def _entry(
        self, company_id: str, collection: Collection, session: Session
    ) -> tuple[IndexEntry, bool]:
        key = (company_id, collection.id)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.revision >= collection.revision:
                return entry, False
            load_lock = self._load_locks.setdefault(key, threading.Lock())
        with load_lock:
            with self._lock:  # another thread may have loaded it meanwhile
                entry = self._entries.get(key)
                if entry is not None and entry.revision >= collection.revision:
                    return entry, False
            # The revision was read before the faces: a change committed in between makes the
            # matrix newer than its tag, which costs one extra reload, never a stale answer.
            loaded = repo.load_embeddings(collection.id, company_id=company_id, session=session)
            entry = IndexEntry.of(collection.name, collection.revision, loaded)
            with self._lock:
                current = self._entries.get(key)
                if current is None or current.revision <= entry.revision:
                    self._entries[key] = entry
                self.loads += 1
                self._evict_other_ids(company_id, collection.name, collection.id)
            return entry, True

    def evict(self, company_id: str, collection_id: str) -> None:
        with self._lock:
            self._entries.pop((company_id, collection_id), None)
            self._load_locks.pop((company_id, collection_id), None)

    def _evict_name(self, company_id: str, name: str) -> None:
        with self._lock:
            self._evict_other_ids(company_id, name, keep=None)

    def _evict_other_ids(self, company_id: str, name: str, keep: str | None) -> None:
        """Drop entries of deleted collections of that name (caller holds the lock)."""
        stale = [
            key
            for key, entry in self._entries.items()
            if key[0] == company_id and entry.name == name and key[1] != keep
        ]
        for key in stale:
            del self._entries[key]
            self._load_locks.pop(key, None)

    def prune(self, session: Session) -> int:
        """Evict the entries of collections deleted (on any replica); returns how many."""
        with self._lock:
            keys = list(self._entries)
        alive = repo.existing_ids([key[1] for key in keys], session=session)
        gone = [key for key in keys if key[1] not in alive]
        with self._lock:
            for key in gone:
                self._entries.pop(key, None)
                self._load_locks.pop(key, None)
        return len(gone)

    def _maybe_prune(self, session: Session) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last_prune < self.prune_every_s:
                return
            self._last_prune = now
        self.prune(session)

    # ---- introspection -------------------------------------------------------------------------

    @property
    def cached(self) -> int:
        """How many collections are in memory."""
        with self._lock:
            return len(self._entries)

    @property
    def memory_bytes(self) -> int:
        """Bytes held by the matrices (and their norms)."""
        with self._lock:
            return sum(entry.nbytes for entry in self._entries.values())


def rank(entry: IndexEntry, q: np.ndarray, top_k: int) -> list[SearchHit]:
    """The ``top_k`` faces of ``entry`` nearest to ``q``, nearest first."""
    n = len(entry.ids)
    if n == 0:
        return []
    # ‖m - q‖² = |m|² - 2 m·q + |q|²; |q|² ranks nothing. In place: no n-sized temporaries.
    ranking = entry.matrix @ q
    ranking *= -2.0
    ranking += entry.sq_norms
    k = min(top_k, n)
    candidates = np.argpartition(ranking, k - 1)[:k] if k < n else np.arange(n)
    exact = np.linalg.norm(entry.matrix[candidates] - q, axis=1)
    order = np.argsort(exact, kind="stable")
    return [
        SearchHit(
            face_id=entry.ids[int(candidates[i])],
            person_label=entry.labels[int(candidates[i])],
            distance=float(exact[i]),
        )
        for i in order
    ]
