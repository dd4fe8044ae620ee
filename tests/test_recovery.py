"""Fast recovery: a `vigil worker` that is stopped (SIGTERM) hands its analyses back at once, and
one that is killed (SIGKILL) loses them within its short lease; either way a second worker
process finishes them in seconds, not after the old 60 s lease. On SQLite and PostgreSQL.

And streams the server abandons at shutdown end cleanly: counted, audited, no context error."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import grpc
import pytest
from sqlmodel import Session, col, select

from tests.conftest import FACES, ROOT, ServerThread, make_settings, read
from vigil.server.metrics import RPC_TOTAL
from vigil.storage.db import Database
from vigil.storage.results import AnalysisState
from vigil.storage.tables import Analysis, AuditEvent
from vigil.v1 import folders_pb2 as fp
from vigil.v1 import folders_pb2_grpc, instant_pb2_grpc, video_pb2

#: The lease the shipped default gives (VIGIL_ANALYSIS_LEASE_S); a killed worker's jobs wait
#: at most this long.
LEASE_S = 15.0
FOLDERS, ANALYSES_PER_FOLDER = 5, 12
MEDIA = ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg")


class WorkerProcess:
    """A `vigil worker` process on the test's database, its log in a file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log_path = log
        self._log: IO[bytes] = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "vigil.server.cli", "worker"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )
        #: How its workers name themselves in ``lease_owner``.
        self.owner_prefix = f"{socket.gethostname()}:{self.process.pid}:"

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while "vigil worker running" not in self.log_path.read_text(errors="replace"):
            assert self.process.poll() is None, self.log_path.read_text(errors="replace")
            assert time.monotonic() < deadline, "the worker did not start"
            time.sleep(0.1)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()


def _rows(server: ServerThread, ids: list[str]) -> list[Analysis]:
    app = server.vigil.app

    def work(session: Session) -> list[Analysis]:
        return list(session.exec(select(Analysis).where(col(Analysis.id).in_(ids))).all())

    return server.call(lambda: app.db(work))


def _held_by(server: ServerThread, worker: WorkerProcess) -> list[Analysis]:
    app = server.vigil.app

    def work(session: Session) -> list[Analysis]:
        return list(
            session.exec(
                select(Analysis).where(
                    Analysis.state == AnalysisState.PROCESSING,
                    col(Analysis.lease_owner).startswith(worker.owner_prefix),
                )
            ).all()
        )

    return server.call(lambda: app.db(work))


def _queue_analyses(server: ServerThread) -> list[str]:
    ids: list[str] = []
    with server.channel() as channel:
        stub = folders_pb2_grpc.FoldersStub(channel)
        for _ in range(FOLDERS):
            folder = stub.CreateFolder(fp.CreateFolderRequest())

            def parts(folder_id: str, name: str) -> Iterator[fp.UploadMediaRequest]:
                header = fp.UploadMediaHeader(folder_id=folder_id, tags=["photo_selfie"])
                yield fp.UploadMediaRequest(header=header)
                yield fp.UploadMediaRequest(chunk=read(FACES / name))

            for name in MEDIA:  # several images per analysis: each job runs a while
                stub.UploadMedia(parts(folder.id, name))
            reply = stub.CreateAnalyses(
                fp.CreateAnalysesRequest(
                    folder_id=folder.id,
                    analyses=[fp.AnalysisRequest(type=fp.ANALYSIS_TYPE_LIVENESS)]
                    * ANALYSES_PER_FOLDER,
                )
            )
            ids.extend(a.id for a in reply.analyses)
    return ids


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_stopped_or_killed_workers_analyses_are_done_by_another_within_seconds(
    models_dir: Path, tmp_path: Path, database_url: str, sig: signal.Signals
) -> None:
    blob_dir = tmp_path / "blobs"
    server = ServerThread(
        make_settings(
            models_dir,
            data_dir=tmp_path / "var",
            database_url=database_url,
            blob_dir=blob_dir,
            analysis_workers=0,
        )
    ).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.update(
        VIGIL_MODELS_DIR=str(models_dir),
        VIGIL_DATA_DIR=str(tmp_path / "var"),
        VIGIL_DATABASE_URL=database_url,
        VIGIL_BLOB_DIR=str(blob_dir),
        VIGIL_ANALYSIS_WORKERS="2",
        VIGIL_QUEUE_POLL_S="0.1",
        VIGIL_INTRA_OP_THREADS="1",
    )
    first = WorkerProcess(env, tmp_path / "first.log")
    second = WorkerProcess(env, tmp_path / "second.log")
    try:
        assert server.vigil.app.settings.analysis_lease_s == LEASE_S  # the shipped default
        first.wait_ready()
        second.wait_ready()
        ids = _queue_analyses(server)
        deadline = time.monotonic() + 120
        held: list[Analysis] = []
        while not held:  # the first worker holds some of them, mid-run
            assert time.monotonic() < deadline, "the first worker never took an analysis"
            held = _held_by(server, first)
        first.process.send_signal(sig)
        stopped = time.monotonic()
        first.process.wait(30)
        held_ids = [a.id for a in held]
        attempts_before = {a.id: a.attempts for a in held}

        if sig == signal.SIGTERM:
            # Handed back on the way out: no lease of the stopped worker is left, and the
            # interrupted try is not counted.
            for row in _rows(server, held_ids):
                if row.state == AnalysisState.PROCESSING:
                    assert not (row.lease_owner or "").startswith(first.owner_prefix)

        while True:
            rows = _rows(server, held_ids)
            if all(r.state != AnalysisState.PROCESSING for r in rows):
                break
            assert time.monotonic() - stopped < 60, "the held analyses were not taken again"
            time.sleep(0.05)
        recovered_s = time.monotonic() - stopped
        assert all(r.state == AnalysisState.FINISHED for r in rows), [r.error for r in rows]
        # The first worker may have written one just before the signal; the rest were taken
        # over by the second.
        rows = [r for r in rows if not (r.lease_owner or "").startswith(first.owner_prefix)]
        assert rows, "the first worker finished everything it held before the signal"
        assert all((r.lease_owner or "").startswith(second.owner_prefix) for r in rows)
        if sig == signal.SIGTERM:
            assert recovered_s < 5.0, f"{recovered_s:.1f} s after a graceful stop"
            assert all(r.attempts == attempts_before[r.id] for r in rows)  # A's try not counted
        else:
            assert recovered_s < LEASE_S + 8.0, f"{recovered_s:.1f} s after SIGKILL"
            assert all(r.attempts == attempts_before[r.id] + 1 for r in rows)
        print(f"{sig.name}: {len(held_ids)} held analyses finished {recovered_s:.1f} s later")

        # Every analysis ends final exactly once, whoever ran it.
        while any(r.state == AnalysisState.PROCESSING for r in _rows(server, ids)):
            assert time.monotonic() - stopped < 120
            time.sleep(0.2)
        assert all(r.state == AnalysisState.FINISHED for r in _rows(server, ids))
    finally:
        first.close()
        second.process.send_signal(signal.SIGTERM)
        try:
            second.process.wait(30)
        finally:
            second.close()
            server.stop()


def _rpc_count(method: str, code: str) -> float:
    value = RPC_TOTAL.labels(method, code)._value.get()  # prometheus_client's sample
    return float(value)


def test_streams_aborted_at_shutdown_end_cleanly_and_are_audited(
    models_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A live stream and a WatchFolder still open when the server stops: grpc abandons them and
    the event loop closes their handlers later, in another context. Neither may log "created in
    a different Context" or an internal error; both are counted; the WatchFolder is audited."""
    caplog.set_level(logging.INFO)
    database_url = f"sqlite:///{tmp_path / 'abort.db'}"
    server = ServerThread(
        make_settings(
            models_dir,
            data_dir=tmp_path / "var",
            database_url=database_url,
            shutdown_grace_s=0.5,
            analysis_workers=0,  # the watched analysis stays PROCESSING: the watch stays open
            stream_max_seconds=60.0,
            stream_max_frames=1000,
        )
    ).start()
    stream_method = "/vigil.v1.Instant/StreamLiveness"
    internal_before = _rpc_count(stream_method, "INTERNAL")
    release = threading.Event()

    def frames() -> Iterator[video_pb2.StreamLivenessRequest]:
        yield video_pb2.StreamLivenessRequest(start=video_pb2.StreamStart())
        frame = video_pb2.StreamFrame(encoded=read(FACES / "obama2.jpg"), capture_time_ms=0)
        yield video_pb2.StreamLivenessRequest(frame=frame)
        release.wait(30)  # the camera goes quiet; the stream stays open

    channel = server.channel()
    try:
        stub = folders_pb2_grpc.FoldersStub(channel)
        folder = stub.CreateFolder(fp.CreateFolderRequest())

        def parts() -> Iterator[fp.UploadMediaRequest]:
            header = fp.UploadMediaHeader(folder_id=folder.id, tags=["photo_selfie"])
            yield fp.UploadMediaRequest(header=header)
            yield fp.UploadMediaRequest(chunk=read(FACES / "obama2.jpg"))

        stub.UploadMedia(parts())
        stub.CreateAnalyses(
            fp.CreateAnalysesRequest(
                folder_id=folder.id, analyses=[fp.AnalysisRequest(type=fp.ANALYSIS_TYPE_LIVENESS)]
            )
        )
        watch = stub.WatchFolder(fp.WatchFolderRequest(folder_id=folder.id), timeout=30)
        assert not next(watch).final
        stream = instant_pb2_grpc.InstantStub(channel).StreamLiveness(frames(), timeout=30)
        next(stream)  # the first frame's update: the stream is mid-flight
        server.stop()
        release.set()
        for call in (watch, stream):
            with pytest.raises(grpc.RpcError):
                list(call)
    finally:
        release.set()
        channel.close()

    problems = [
        r.getMessage()
        for r in caplog.records
        if "different Context" in r.getMessage() + (r.exc_text or "")
        or "internal error" in r.getMessage()
    ]
    assert problems == []
    assert _rpc_count(stream_method, "INTERNAL") == internal_before
    database = Database(database_url)
    try:
        with database.session() as session:
            methods = session.exec(select(AuditEvent.method)).all()
    finally:
        database.dispose()
    assert "/vigil.v1.Folders/WatchFolder" in methods
