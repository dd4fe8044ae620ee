"""Three `vigil serve` replicas and one `vigil worker`, each its own process, on one PostgreSQL
(a schema of this run's own) and one Redis (a key prefix of this run's own), as behind a load
balancer: what one replica learns, the others know.

The cases run in this order on one cluster; the last one SIGKILLs replica C.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import grpc
import pytest
import redis
from sqlmodel import Session, col, select

from tests.conftest import FACES, ROOT, read
from tests.videos import encode, motion_frames
from vigil.client.connection import Connection, authenticated_channel
from vigil.server.security.tokens import load_or_create_key
from vigil.storage import credentials, folders
from vigil.storage.blobs import LocalBlobStore
from vigil.storage.db import Database, migrate
from vigil.storage.results import AnalysisState
from vigil.storage.tables import Analysis, Media
from vigil.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    challenges_pb2,
    challenges_pb2_grpc,
    collections_pb2,
    collections_pb2_grpc,
    common_pb2,
    folders_pb2,
    folders_pb2_grpc,
    instant_pb2,
    instant_pb2_grpc,
)

T = TypeVar("T")

REDIS_URL = os.environ.get("VIGIL_TEST_REDIS", "redis://127.0.0.1:6379/15")
RATE_PER_S, BURST = 5.0, 100.0
#: The persistent analyses: folders × analyses per folder, one photo each.
FOLDERS, ANALYSES_PER_FOLDER = 30, 10
LEASE_S = 3.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Replica:
    """One `vigil serve` (or `vigil worker`) process, its log in a file."""

    name: str
    command: str
    env: dict[str, str]
    log_path: Path
    port: int = 0
    metrics_port: int = 0
    process: subprocess.Popen[bytes] = field(init=False)
    _log: IO[bytes] = field(init=False)

    def start(self) -> None:
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "vigil.server.cli", self.command],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, deadline: float) -> None:
        ready = "vigil serving on" if self.command == "serve" else "vigil worker running"
        while ready not in self.log():
            assert self.process.poll() is None, f"{self.name} exited:\n{self.log()[-3000:]}"
            assert time.monotonic() < deadline, f"{self.name} did not start:\n{self.log()[-3000:]}"
            time.sleep(0.2)

    @property
    def owner_prefix(self) -> str:
        """How its analysis workers name themselves in ``lease_owner``."""
        return f"{socket.gethostname()}:{self.process.pid}:"

    def analyses_written(self) -> float:
        """``vigil_analyses_total`` summed over its labels (what this process wrote)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics") as reply:
            text = reply.read().decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("vigil_analyses_total{")
        )

    def stop(self) -> None:
        """After SIGTERM was sent to it (all replicas are told at once, then waited for; one
        still exiting after 5 s is killed: its shutdown is not what this test is about)."""
        if self.process.poll() is None:
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@dataclass
class Cluster:
    serves: list[Replica]
    worker: Replica
    database: Database
    company: str
    admin_key: str
    redis_prefix: str

    def new_key(self, role: str = "SERVICE") -> tuple[str, str]:
        """(api key id, key) of a fresh key in the cluster's company."""

        def work(session: Session) -> tuple[str, str]:
            company_id = folders.ensure_company(self.company, session=session).id
            row, key = credentials.create_api_key(
                f"multi-replica {role}",
                role,
                "FULL",
                company_id=company_id,
                created_by="tests",
                expires_at=None,
                session=session,
            )
            return row.id, key

        with self.database.session() as session:
            made = work(session)
            session.commit()
            return made

    def channels(self, key: str) -> list[grpc.Channel]:
        """A channel to each replica, its calls carrying ``key``."""
        return [
            authenticated_channel(Connection(f"127.0.0.1:{r.port}", api_key=key))
            for r in self.serves
        ]

    def rows(self, model: type[T], *where: Any) -> list[T]:
        with self.database.session() as session:
            return list(session.exec(select(model).where(*where)).all())


def _redis_or_skip() -> redis.Redis:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis at {REDIS_URL} ({exc}); .ci/run starts one")
    return client


@pytest.fixture(scope="module")
def cluster(
    models_dir: Path, tmp_path_factory: pytest.TempPathFactory, postgres_database: str
) -> Iterator[Cluster]:
    store = _redis_or_skip()
    import psycopg

    schema = f"mr_{uuid.uuid4().hex[:10]}"
    plain = postgres_database.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    database_url = f"{postgres_database}?options=-csearch_path%3D{schema}"
    # Migrated once before the replicas start (their own start-up migrations then find nothing).
    database = Database(database_url)
    migrate(database.engine)
    root = tmp_path_factory.mktemp("multi-replica")
    key_file = root / "signing_key.pem"
    load_or_create_key(key_file)  # one signing key for all (tokens, page tokens, verdicts)
    prefix = f"vigil-mr-{uuid.uuid4().hex[:10]}:"
    base = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    base.update(
        VIGIL_HOST="127.0.0.1",
        VIGIL_MODELS_DIR=str(models_dir),
        VIGIL_DATABASE_URL=database_url,
        VIGIL_BLOB_DIR=str(root / "blobs"),
        VIGIL_SIGNING_KEY_FILE=str(key_file),
        VIGIL_REDIS_URL=REDIS_URL,
        VIGIL_REDIS_PREFIX=prefix,
        VIGIL_ALLOW_PLAINTEXT="true",
        VIGIL_INTRA_OP_THREADS="1",
        VIGIL_ANALYSIS_WORKERS="1",
        VIGIL_ANALYSIS_LEASE_S=str(LEASE_S),
        VIGIL_QUEUE_POLL_S="0.2",
        VIGIL_RATE_LIMIT_PER_S=str(RATE_PER_S),
        VIGIL_RATE_LIMIT_BURST=str(BURST),
        VIGIL_AUTH_MAX_FAILURES="100000",
        VIGIL_SHUTDOWN_GRACE_S="2",
    )
    replicas: list[Replica] = []
    for name, command in (("A", "serve"), ("B", "serve"), ("C", "serve"), ("W", "worker")):
        env = dict(base, VIGIL_DATA_DIR=str(root / f"var-{name}"))
        replica = Replica(name, command, env, root / f"{name}.log")
        replica.metrics_port = _free_port()
        env["VIGIL_METRICS_PORT"] = str(replica.metrics_port)
        if command == "serve":
            replica.port = _free_port()
            env["VIGIL_PORT"] = str(replica.port)
        replicas.append(replica)
    try:
        for replica in replicas:
            replica.start()
        deadline = time.monotonic() + 180
        for replica in replicas:
            replica.wait_ready(deadline)
        built = Cluster(replicas[:3], replicas[3], database, "multi-replica", "", prefix)
        built.admin_key = built.new_key("ADMIN")[1]
        yield built
    finally:
        started = [r for r in replicas if hasattr(r, "process")]
        for replica in started:
            if replica.process.poll() is None:
                replica.process.send_signal(signal.SIGTERM)
        for replica in started:
            replica.stop()
        database.dispose()
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        keys = list(store.scan_iter(f"{prefix}*"))
        if keys:
            store.delete(*keys)
        store.close()


def _code(call: Callable[[], object]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        return code
    return grpc.StatusCode.OK


def _who_am_i(stub: auth_pb2_grpc.AuthStub) -> grpc.StatusCode:
    return _code(lambda: stub.WhoAmI(auth_pb2.WhoAmIRequest(), timeout=10))


def test_a_video_sent_to_a_is_declined_as_a_replay_on_b(cluster: Cluster) -> None:
    a, b, _ = (instant_pb2_grpc.InstantStub(c) for c in cluster.channels(cluster.admin_key))
    video = encode(motion_frames(FACES / "obama.jpg", 24, seed=11))
    request = instant_pb2.LivenessRequest(image=common_pb2.Media(data=video))
    first = a.CheckLiveness(request, timeout=60)
    signals = {s.name: s for s in first.signals}
    assert first.live and not signals["replay_media"].triggered
    again = b.CheckLiveness(request, timeout=60)
    replay = {s.name: s for s in again.signals}
    assert replay["replay_media"].triggered and replay["replay_media"].declines
    assert replay["replay_frames"].triggered and not again.live


def test_a_keys_rate_limit_holds_across_replicas(cluster: Cluster) -> None:
    _, key = cluster.new_key()
    stubs = [auth_pb2_grpc.AuthStub(c) for c in cluster.channels(key)]
    calls = 300
    codes: list[grpc.StatusCode] = []
    started = time.monotonic()
    for i in range(calls):  # round-robin over the three replicas
        stub = stubs[i % 3]
        codes.append(_who_am_i(stub))
    elapsed = time.monotonic() - started
    allowed = codes.count(grpc.StatusCode.OK)
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == calls - allowed
    # One bucket for all replicas: the burst plus what refilled meanwhile (three buckets would
    # have allowed up to three bursts).
    expected = BURST + RATE_PER_S * elapsed
    assert expected < calls, f"the calls took {elapsed:.1f} s: too slow to exhaust the bucket"
    assert abs(allowed - expected) <= 0.1 * expected, (allowed, expected, elapsed)


def test_a_challenge_answered_on_a_cannot_be_answered_again_on_b(cluster: Cluster) -> None:
    a, b, _ = (challenges_pb2_grpc.ChallengesStub(c) for c in cluster.channels(cluster.admin_key))
    challenge = a.CreateChallenge(
        challenges_pb2.CreateChallengeRequest(
            allowed=[challenges_pb2.GESTURE_SMILE, challenges_pb2.GESTURE_MOVE_CLOSER], count=2
        )
    )
    video = encode(motion_frames(FACES / "obama2.jpg", 20, 360, 480, seed=12))
    request = challenges_pb2.AnswerChallengeRequest(
        challenge_id=challenge.id, video=common_pb2.Media(data=video)
    )
    a.AnswerChallenge(request, timeout=120)  # a still face: the gestures fail, the nonce is used
    with pytest.raises(grpc.RpcError) as refused:
        b.AnswerChallenge(request, timeout=120)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "already answered" in (refused.value.details() or "")


def test_a_revoked_key_is_refused_at_once_on_every_replica(cluster: Cluster) -> None:
    key_id, key = cluster.new_key()
    stubs = [auth_pb2_grpc.AuthStub(c) for c in cluster.channels(key)]
    for stub in stubs:  # every replica has the key in its credential cache
        stub.WhoAmI(auth_pb2.WhoAmIRequest(), timeout=10)
    admin = auth_pb2_grpc.AdminStub(cluster.channels(cluster.admin_key)[0])
    admin.RevokeApiKey(auth_pb2.RevokeApiKeyRequest(api_key_id=key_id), timeout=10)
    codes = [_who_am_i(stub) for stub in stubs]
    assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 3


def test_a_face_added_on_a_is_found_on_b(cluster: Cluster) -> None:
    a, b, c = (
        collections_pb2_grpc.CollectionsStub(ch) for ch in cluster.channels(cluster.admin_key)
    )
    name = f"watch-{uuid.uuid4().hex[:6]}"
    a.CreateCollection(collections_pb2.CreateCollectionRequest(name=name))
    b.AddFace(
        collections_pb2.AddFaceRequest(
            collection=name, image=common_pb2.Media(data=read(FACES / "biden.jpg"))
        ),
        timeout=30,
    )
    query = common_pb2.Media(data=read(FACES / "obama2.jpg"))
    # B and C hold the collection in memory before the face that matters is added on A.
    for stub in (b, c):
        stub.Search(collections_pb2.SearchRequest(collection=name, image=query), timeout=30)
    added = a.AddFace(
        collections_pb2.AddFaceRequest(
            collection=name, image=common_pb2.Media(data=read(FACES / "obama.jpg"))
        ),
        timeout=30,
    )
    # With read-your-writes: at once.
    found = c.Search(
        collections_pb2.SearchRequest(collection=name, image=query, min_sequence=added.sequence),
        timeout=30,
    )
    assert added.sequence > 0
    assert [h.face.id for h in found.hits if h.match] == [added.id]
    # Without: within one second.
    started = time.monotonic()
    while True:
        reply = b.Search(collections_pb2.SearchRequest(collection=name, image=query), timeout=30)
        if added.id in [h.face.id for h in reply.hits if h.match]:
            break
        assert time.monotonic() - started < 1.0, "B did not see the face within 1 s"
        time.sleep(0.05)


def _submit(stub: folders_pb2_grpc.FoldersStub, photo: bytes) -> list[str]:
    folder = stub.CreateFolder(folders_pb2.CreateFolderRequest(), timeout=30)

    def parts() -> Iterator[folders_pb2.UploadMediaRequest]:
        header = folders_pb2.UploadMediaHeader(folder_id=folder.id, tags=["photo_selfie"])
        yield folders_pb2.UploadMediaRequest(header=header)
        yield folders_pb2.UploadMediaRequest(chunk=photo)

    stub.UploadMedia(parts(), timeout=30)
    reply = stub.CreateAnalyses(
        folders_pb2.CreateAnalysesRequest(
            folder_id=folder.id,
            analyses=[folders_pb2.AnalysisRequest(type=folders_pb2.ANALYSIS_TYPE_LIVENESS)]
            * ANALYSES_PER_FOLDER,
        ),
        timeout=30,
    )
    return [a.id for a in reply.analyses]


def test_analyses_spread_over_replicas_are_final_once_when_one_is_killed(
    cluster: Cluster,
) -> None:
    photo = read(FACES / "obama2.jpg")
    stubs = [
        folders_pb2_grpc.FoldersStub(cluster.channels(cluster.new_key()[1])[i]) for i in range(3)
    ]
    ids: list[str] = []
    for n in range(FOLDERS):  # folders round-robin over A, B, C
        ids += _submit(stubs[n % 3], photo)
    total = FOLDERS * ANALYSES_PER_FOLDER
    assert len(set(ids)) == total

    def final() -> list[Analysis]:
        return cluster.rows(
            Analysis, col(Analysis.id).in_(ids), Analysis.state != AnalysisState.PROCESSING
        )

    killed = cluster.serves[2]
    deadline = time.monotonic() + 120
    while len(final()) < total // 3:
        assert time.monotonic() < deadline, "a third of the analyses did not finish in 120 s"
        time.sleep(0.2)
    killed.process.send_signal(signal.SIGKILL)
    killed.process.wait(10)
    while len(done := final()) < total:
        assert time.monotonic() < deadline, f"{len(done)} of {total} analyses final after 120 s"
        time.sleep(0.2)

    # Every analysis final, with its one photo's result.
    assert {a.state for a in done} == {AnalysisState.FINISHED}, {a.error for a in done}
    assert all(len(a.results) == 1 for a in done)
    # Exactly once: a result is written only by the worker holding the lease (one UPDATE on
    # PROCESSING rows); each surviving replica counted exactly the rows that name it (`vigil
    # worker` has no metrics endpoint to ask).
    assert any((a.lease_owner or "").startswith(killed.owner_prefix) for a in done)
    for process in cluster.serves[:2]:
        owned = sum(1 for a in done if (a.lease_owner or "").startswith(process.owner_prefix))
        assert process.analyses_written() == owned, process.name
    # No media lost: every media's bytes in the shared blob store, as uploaded.
    media = cluster.rows(Media, col(Media.folder_id).in_({a.folder_id for a in done}))
    assert len(media) == FOLDERS
    blobs = LocalBlobStore(Path(cluster.worker.env["VIGIL_BLOB_DIR"]))
    expected = hashlib.sha256(photo).hexdigest()
    for row in media:
        assert row.sha256 == expected
        assert hashlib.sha256(blobs.path_of(row.blob_key).read_bytes()).hexdigest() == expected
