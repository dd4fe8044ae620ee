"""Collections in memory for 1:N search, kept current by applying the change log.

Each (company, collection) is held as a ``CollectionIndex``: its float32 embeddings in slots (512
bytes per 128-d face) with their face ids, labels and squared norms. Small collections are searched
exactly (one matrix-vector product, ``argpartition``, exact distances for the top k). From
``IndexConfig.ann_min_faces`` faces on, an HNSW graph (usearch, f16 vectors) proposes
``ann_candidates`` faces and those are re-scored exactly against the float32 vectors, so a search
decides exactly as brute force wherever the true nearest faces are among the candidates.

A collection is loaded once (from a snapshot when there is one, else from the database), then kept
current from the change log (``storage.face_changes``): ``FaceIndex.sync`` applies each add or
remove as one row, on every loaded collection. Syncs come from the background follower, from a
search that finds the collection's ``revision`` ahead of its copy, and from a search that asks for
a ``min_sequence`` (read-your-writes) the index has not reached.

Thread-safe: searches run in database threads. One lock per collection guards its arrays (searches
and changes of one collection take turns), one lock serializes syncs and the insertion of freshly
loaded collections, one lock guards the dictionary.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlmodel import Session

from vigil.inference.errors import InvalidArgument, NotFound
from vigil.storage import collections as repo
from vigil.storage import face_changes
from vigil.storage.db import Database
from vigil.storage.tables import Collection

log = logging.getLogger(__name__)
DIM = repo.EMBEDDING_SIZE


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
    #: Faces in the collection (all compared exactly, or ranked by the graph).
    searched: int
    #: Time spent in the index: revision check, catching up if behind, ranking.
    search_ms: float
    #: Whether this search had to load the collection (from the database or a snapshot).
    reloaded: bool
    #: The change-log sequence number the index was current to.
    sequence: int = 0
    #: Whether the approximate index proposed the candidates.
    approximate: bool = False


@dataclass(frozen=True)
class IndexConfig:
    """How collections are indexed (settings ``VIGIL_ANN_*``, ``VIGIL_INDEX_SNAPSHOT_DIR``)."""

    #: From this many faces on, a collection gets an HNSW graph; below, exact search only.
    ann_min_faces: int = 50_000
    #: Candidates the graph proposes, re-scored exactly (at least top_k are always asked).
    ann_candidates: int = 128
    #: usearch's scalar kind for the graph's copy of the vectors: "f16" or "i8".
    ann_dtype: str = "f16"
    #: Graph degree (usearch connectivity, HNSW M).
    ann_connectivity: int = 16
    #: Breadth of the graph construction (efConstruction).
    ann_expansion_add: int = 128
    #: Threads that build a graph from scratch (at load).
    build_threads: int = 2
    #: Where collections are saved (one folder per collection id); None: no snapshots.
    snapshot_dir: Path | None = None
    #: Only collections with at least this many faces are saved (small ones load fast anyway).
    snapshot_min_faces: int = 10_000


class CollectionIndex:
    """One collection's faces in memory, current to change ``seq``.

    Faces live in slots (rows of ``vectors``) that are never reused while a graph exists (its keys
    are the slot numbers); a removed face leaves an empty slot (id "", norm +inf, so exact ranking
    puts it last). Exact-only collections compact when half their slots are empty.
    """

    def __init__(self, collection_id: str, name: str, seq: int, config: IndexConfig) -> None:
        self.collection_id = collection_id
        self.name = name
        self.seq = seq
        self.config = config
        self.lock = threading.Lock()
        self.vectors = np.zeros((0, DIM), np.float32)
        self.sq_norms = np.zeros(0, np.float32)
        self.ids: list[str] = []
        self.labels: list[str] = []
        self.slot_of: dict[str, int] = {}
        self.ann: Any = None  # usearch.index.Index once large enough
        #: The collection's ``revision`` when this copy was last known current.
        self.revision_seen = 0

    # ---- building ------------------------------------------------------------------------------

    @classmethod
    def of(
        cls,
        collection_id: str,
        name: str,
        seq: int,
        embeddings: repo.Embeddings,
        config: IndexConfig,
    ) -> CollectionIndex:
        index = cls(collection_id, name, seq, config)
        index._fill(list(embeddings.ids), list(embeddings.labels), embeddings.matrix)
        if index.size >= config.ann_min_faces:
            index._build_graph()
        return index

    def _fill(self, ids: list[str], labels: list[str], matrix: np.ndarray) -> None:
        self.vectors = np.array(matrix, dtype=np.float32, copy=True).reshape(-1, DIM)
        self.sq_norms = np.einsum("ij,ij->i", self.vectors, self.vectors).astype(np.float32)
        self.ids, self.labels = ids, labels
        self.slot_of = {face_id: slot for slot, face_id in enumerate(ids) if face_id}
        self.sq_norms[[slot for slot, face_id in enumerate(ids) if not face_id]] = np.inf

    def _new_graph(self) -> Any:
        from usearch.index import Index

        return Index(
            ndim=DIM,
            metric="l2sq",
            dtype=self.config.ann_dtype,
            connectivity=self.config.ann_connectivity,
            expansion_add=self.config.ann_expansion_add,
            expansion_search=max(64, self.config.ann_candidates),
        )

    def _build_graph(self) -> None:
        started = time.perf_counter()
        graph = self._new_graph()
        slots = np.fromiter(self.slot_of.values(), dtype=np.uint64, count=len(self.slot_of))
        slots.sort()
        if len(slots):
            graph.add(
                slots, self.vectors[slots.astype(np.int64)], threads=self.config.build_threads
            )
        self.ann = graph
        log.info(
            "collection %s: HNSW graph of %d faces built in %.1f s",
            self.name,
            len(slots),
            time.perf_counter() - started,
        )

    # ---- changes -------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return len(self.slot_of)

    def add(self, face_id: str, label: str, vector: np.ndarray) -> None:
        """Add a face (a face already here is left as it is: changes may be seen twice)."""
        if face_id in self.slot_of:
            return
        slot = len(self.ids)
        if slot == len(self.vectors):  # grow by half: amortized O(1) per add
            grown = max(1024, slot + slot // 2)
            self.vectors = np.resize(self.vectors, (grown, DIM))
            self.sq_norms = np.resize(self.sq_norms, grown)
        self.vectors[slot] = vector
        self.sq_norms[slot] = float(np.dot(vector, vector))
        self.ids.append(face_id)
        self.labels.append(label)
        self.slot_of[face_id] = slot
        if self.ann is not None:
            self.ann.add(slot, self.vectors[slot])
        elif self.size >= self.config.ann_min_faces:
            self._build_graph()

    def remove(self, face_id: str) -> None:
        slot = self.slot_of.pop(face_id, None)
        if slot is None:
            return
        self.ids[slot] = ""
        self.labels[slot] = ""
        self.sq_norms[slot] = np.inf
        if self.ann is not None:
            self.ann.remove(slot)
        elif len(self.ids) >= 1024 and self.size < len(self.ids) // 2:
            self._compact()

    def _compact(self) -> None:
        live = sorted(self.slot_of.values())
        self._fill([self.ids[i] for i in live], [self.labels[i] for i in live], self.vectors[live])

    def apply(self, change: face_changes.Change) -> None:
        if change.seq <= self.seq:
            return
        if change.op == face_changes.ADD and change.embedding is not None:
            vector = np.frombuffer(change.embedding, dtype="<f4")
            if vector.shape == (DIM,):
                self.add(change.face_id, change.person_label or "", vector.astype(np.float32))
        elif change.op == face_changes.REMOVE:
            self.remove(change.face_id)
        self.seq = change.seq

    # ---- searching -----------------------------------------------------------------------------

    def search(self, q: np.ndarray, top_k: int) -> list[SearchHit]:
        """The ``top_k`` faces nearest to ``q``, nearest first (caller holds ``lock``)."""
        k = min(top_k, self.size)
        if k == 0:
            return []
        if self.ann is not None:
            count = min(max(self.config.ann_candidates, k), self.size)
            candidates = np.asarray(self.ann.search(q, count).keys, dtype=np.int64)
        else:
            used = len(self.ids)
            # ‖m - q‖² = |m|² - 2 m·q + |q|²; |q|² ranks nothing. Empty slots are +inf.
            ranking = self.vectors[:used] @ q
            ranking *= -2.0
            ranking += self.sq_norms[:used]
            candidates = np.argpartition(ranking, k - 1)[:k] if k < used else np.arange(used)
        candidates = candidates[np.isfinite(self.sq_norms[candidates])]
        exact = np.linalg.norm(self.vectors[candidates] - q, axis=1)
        order = np.argsort(exact, kind="stable")[:k]
        return [
            SearchHit(
                face_id=self.ids[int(candidates[i])],
                person_label=self.labels[int(candidates[i])],
                distance=float(exact[i]),
            )
            for i in order
        ]

    @property
    def nbytes(self) -> int:
        graph = int(self.ann.memory_usage) if self.ann is not None else 0
        return int(self.vectors.nbytes + self.sq_norms.nbytes) + graph

    # ---- snapshots -----------------------------------------------------------------------------

    def save(self, folder: Path) -> None:
        """Write this collection to ``folder`` (replaced atomically: a new folder, renamed)."""
        staging = folder.with_name(folder.name + f".tmp{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        used = len(self.ids)
        np.save(staging / "vectors.npy", self.vectors[:used])
        if self.ann is not None:
            self.ann.save(str(staging / "graph.usearch"))
        meta = {
            "collection_id": self.collection_id,
            "name": self.name,
            "seq": self.seq,
            "ids": self.ids,
            "labels": self.labels,
            "ann_dtype": self.config.ann_dtype,
        }
        (staging / "meta.json").write_text(json.dumps(meta))
        old = folder.with_name(folder.name + f".old{os.getpid()}")
        if folder.exists():
            folder.rename(old)
        staging.rename(folder)
        shutil.rmtree(old, ignore_errors=True)

    @classmethod
    def load(cls, folder: Path, config: IndexConfig) -> CollectionIndex:
        meta = json.loads((folder / "meta.json").read_text())
        index = cls(meta["collection_id"], meta["name"], int(meta["seq"]), config)
        index._fill(list(meta["ids"]), list(meta["labels"]), np.load(folder / "vectors.npy"))
        graph_file = folder / "graph.usearch"
        if graph_file.exists() and meta.get("ann_dtype") == config.ann_dtype:
            graph = index._new_graph()
            graph.load(str(graph_file))
            graph.expansion_search = max(64, config.ann_candidates)  # this start's setting
            index.ann = graph
        elif index.size >= config.ann_min_faces:
            index._build_graph()
        return index


_Key = tuple[str, str]  # (company_id, collection_id)


class FaceIndex:
    """Every loaded collection, kept current from the change log. One per process
    (``app.face_index``)."""

    def __init__(self, config: IndexConfig | None = None, prune_every_s: float = 60.0) -> None:
        self.config = config or IndexConfig()
        self.prune_every_s = prune_every_s
        self._entries: dict[_Key, CollectionIndex] = {}
        self._load_locks: dict[_Key, threading.Lock] = {}
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._last_prune = time.monotonic()
        #: Every change up to this sequence number is applied to every loaded collection
        #: (None until the first sync or load).
        self.sequence: int | None = None
        #: How many times a collection was loaded whole (for tests and metrics).
        self.loads = 0
        #: How many changes were applied one by one.
        self.applied = 0
        #: How many of the loads came from a snapshot.
        self.snapshot_loads = 0

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
        min_sequence: int = 0,
    ) -> SearchResult:
        """Like ``search``, with the collection, the number searched and the time taken.

        ``model`` (name, version) is the query template's model; it must be the collection's.
        ``min_sequence``: the index first applies the change log up to at least this number
        (InvalidArgument if the log has not reached it: no write returned such a number).
        """
        started = time.perf_counter()
        if top_k < 1:
            raise InvalidArgument(f"top_k is {top_k}; it must be at least 1")
        if min_sequence < 0:
            raise InvalidArgument(f"min_sequence is {min_sequence}; it must not be negative")
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
        if min_sequence and (self.sequence or 0) < min_sequence:
            reached = self.sync(session)
            if reached < min_sequence:
                raise InvalidArgument(
                    f"min_sequence {min_sequence} is ahead of the change log (at {reached}): "
                    "use the sequence an AddFace or RemoveFace returned"
                )
        entry, loaded = self._entry(company_id, collection, session)
        with entry.lock:
            hits = entry.search(q, top_k)
            searched, approximate = entry.size, entry.ann is not None
        self._maybe_prune(session)
        return SearchResult(
            collection=collection,
            hits=hits,
            searched=searched,
            search_ms=(time.perf_counter() - started) * 1000,
            reloaded=loaded,
            sequence=max(self.sequence or 0, entry.seq),
            approximate=approximate,
        )

    # ---- keeping current -----------------------------------------------------------------------

    def sync(self, session: Session) -> int:
        """Apply every change committed since the last sync to the loaded collections; returns
        the sequence number the index is now current to."""
        with self._sync_lock:
            if self.sequence is None:  # nothing loaded yet: nothing to apply
                self.sequence = face_changes.latest(session)
                return self.sequence
            while True:
                changes = face_changes.since(self.sequence, session=session)
                if not changes:
                    return self.sequence
                self._apply(changes)
                self.sequence = changes[-1].seq

    def _apply(self, changes: list[face_changes.Change]) -> None:
        for change in changes:
            key = (change.company_id, change.collection_id)
            if change.op == face_changes.DROP:
                self.evict(*key)
                continue
            with self._lock:
                entry = self._entries.get(key)
            if entry is None or change.seq <= entry.seq:
                continue
            with entry.lock:
                entry.apply(change)
            self.applied += 1

    def _catch_up(self, entry: CollectionIndex, session: Session) -> None:
        """Apply the collection's own changes after its ``seq`` (caller holds the sync lock)."""
        while True:
            changes = face_changes.since(
                entry.seq, session=session, collection_id=entry.collection_id
            )
            if not changes:
                return
            with entry.lock:
                for change in changes:
                    entry.apply(change)
            self.applied += len(changes)

    def follow(self, database: Database, poll_s: float) -> face_changes.ChangeFollower:
        """Start applying the change log in the background (LISTEN on PostgreSQL, else polling)."""

        started: list[bool] = []

        def apply() -> int:
            with database.session() as session:
                if not started:  # the first turn, in the background: snapshots saved before
                    started.append(True)
                    self.preload_snapshots(session)
                return self.sync(session)

        listen_url = None if database.sqlite else face_changes.libpq_url(database.url)
        return face_changes.ChangeFollower(apply, listen_url=listen_url, poll_s=poll_s).start()

    # ---- loading -------------------------------------------------------------------------------

    def _entry(
        self, company_id: str, collection: Collection, session: Session
    ) -> tuple[CollectionIndex, bool]:
        key = (company_id, collection.id)
        with self._lock:
            entry = self._entries.get(key)
        if entry is not None:
            if entry.revision_seen < collection.revision:
                # Changed since we last looked (here or on another replica) and the follower has
                # not applied it yet: the log has it (it was committed before the row was read).
                self.sync(session)
                entry.revision_seen = collection.revision
            return entry, False
        with self._lock:
            load_lock = self._load_locks.setdefault(key, threading.Lock())
        with load_lock:
            with self._lock:  # another thread may have loaded it meanwhile
                entry = self._entries.get(key)
            if entry is not None:
                return entry, False
            entry = self._load(company_id, collection, session)
            with self._sync_lock:
                # Changes committed while it loaded; from now on sync applies them.
                self._catch_up(entry, session)
                if self.sequence is None:
                    self.sequence = entry.seq
                with self._lock:
                    self._entries[key] = entry
                    self.loads += 1
                    self._evict_other_ids(company_id, collection.name, collection.id)
            entry.revision_seen = collection.revision
            return entry, True

    def _load(self, company_id: str, collection: Collection, session: Session) -> CollectionIndex:
        folder = self._snapshot_folder(collection.id)
        if folder is not None and (folder / "meta.json").exists():
            try:
                entry = CollectionIndex.load(folder, self.config)
                if entry.collection_id == collection.id:
                    self.snapshot_loads += 1
                    return entry
            except (OSError, ValueError, KeyError, RuntimeError):
                log.exception(
                    "collection %s: snapshot unreadable; loading it whole", collection.name
                )
        seq = face_changes.latest(session)  # read first: a later change is replayed, not lost
        embeddings = repo.load_embeddings(collection.id, company_id=company_id, session=session)
        entry = CollectionIndex.of(collection.id, collection.name, seq, embeddings, self.config)
        if entry.ann is not None:  # a graph took a while to build: keep it for the next start
            self._save(entry)
        return entry

    # ---- snapshots -----------------------------------------------------------------------------

    def _snapshot_folder(self, collection_id: str) -> Path | None:
        if self.config.snapshot_dir is None:
            return None
        return self.config.snapshot_dir / collection_id

    def _save(self, entry: CollectionIndex) -> bool:
        folder = self._snapshot_folder(entry.collection_id)
        if folder is None or entry.size < self.config.snapshot_min_faces:
            return False
        try:
            with entry.lock:
                entry.save(folder)
        except OSError:  # a full disk, or another replica saving the same folder: not fatal
            log.exception("collection %s: snapshot not saved", entry.name)
            return False
        return True

    def preload_snapshots(self, session: Session) -> int:
        """Load every collection saved in the snapshot folder (replaying the log from each one's
        sequence number); snapshots of collections deleted since are removed. Returns how many."""
        root = self.config.snapshot_dir
        if root is None or not root.is_dir():
            return 0
        loaded = 0
        for folder in sorted(root.iterdir()):
            if len(folder.name) != 32 or not (folder / "meta.json").exists():
                continue  # another process's staging folder, or not ours
            collection = session.get(Collection, folder.name)
            if collection is None:
                shutil.rmtree(folder, ignore_errors=True)
                continue
            _, fresh = self._entry(collection.company_id, collection, session)
            loaded += fresh
        return loaded

    def save_snapshots(self) -> int:
        """Save every loaded collection large enough; returns how many were saved."""
        with self._lock:
            entries = list(self._entries.values())
        return sum(self._save(entry) for entry in entries)

    # ---- eviction ------------------------------------------------------------------------------

    def evict(self, company_id: str, collection_id: str) -> None:
        with self._lock:
            self._entries.pop((company_id, collection_id), None)
            self._load_locks.pop((company_id, collection_id), None)
        folder = self._snapshot_folder(collection_id)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

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

    def holds(self, company_id: str, collection_id: str, face_id: str) -> bool | None:
        """Whether this replica's copy of the collection has the face (None: not loaded)."""
        with self._lock:
            entry = self._entries.get((company_id, collection_id))
        if entry is None:
            return None
        with entry.lock:
            return face_id in entry.slot_of

    def install(self, company_id: str, entry: CollectionIndex) -> None:
        """Hold a collection built elsewhere, current to ``entry.seq`` (benchmarks, tools)."""
        with self._sync_lock, self._lock:
            self._entries[(company_id, entry.collection_id)] = entry

    def collection(self, company_id: str, collection_id: str) -> CollectionIndex | None:
        """The loaded copy of a collection, if any (for tests and benchmarks)."""
        with self._lock:
            return self._entries.get((company_id, collection_id))

    @property
    def cached(self) -> int:
        """How many collections are in memory."""
        with self._lock:
            return len(self._entries)

    @property
    def memory_bytes(self) -> int:
        """Bytes held by the vectors, their norms and the graphs."""
        with self._lock:
            return sum(entry.nbytes for entry in self._entries.values())
