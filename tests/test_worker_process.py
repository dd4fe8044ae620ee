"""`vigil worker` in its own process shares the database queue with a server that runs none."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import FACES, ROOT, ServerThread, make_settings, read
from vigil.v1 import folders_pb2 as fp
from vigil.v1 import folders_pb2_grpc


def test_a_separate_worker_process_runs_the_queued_analyses(
    models_dir: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "var"
    database_url = f"sqlite:///{tmp_path / 'shared.db'}"
    blob_dir = tmp_path / "blobs"
    server = ServerThread(
        make_settings(
            models_dir,
            data_dir=data_dir,
            database_url=database_url,
            blob_dir=blob_dir,
            analysis_workers=0,
        )
    ).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.update(
        VIGIL_MODELS_DIR=str(models_dir),
        VIGIL_DATA_DIR=str(data_dir),
        VIGIL_DATABASE_URL=database_url,
        VIGIL_BLOB_DIR=str(blob_dir),
        VIGIL_ANALYSIS_WORKERS="1",
        VIGIL_QUEUE_POLL_S="0.1",
        VIGIL_INTRA_OP_THREADS="1",
    )
    worker = None
    try:
        with server.channel() as channel:
            stub = folders_pb2_grpc.FoldersStub(channel)
            folder = stub.CreateFolder(fp.CreateFolderRequest())

            def parts() -> Iterator[fp.UploadMediaRequest]:
                header = fp.UploadMediaHeader(folder_id=folder.id, tags=["photo_selfie"])
                yield fp.UploadMediaRequest(header=header)
                yield fp.UploadMediaRequest(chunk=read(FACES / "obama2.jpg"))

            stub.UploadMedia(parts())
            stub.CreateAnalyses(
                fp.CreateAnalysesRequest(
                    folder_id=folder.id,
                    analyses=[fp.AnalysisRequest(type=fp.ANALYSIS_TYPE_LIVENESS)],
                )
            )
            # No worker in the server: the analysis waits.
            waiting = stub.GetFolder(fp.GetFolderRequest(folder_id=folder.id))
            assert waiting.analyses[0].state == fp.ANALYSIS_STATE_PROCESSING
            worker = subprocess.Popen(
                [sys.executable, "-m", "vigil.server.cli", "worker"],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            events = list(stub.WatchFolder(fp.WatchFolderRequest(folder_id=folder.id), timeout=90))
            assert events[-1].final
            assert events[-1].analysis.resolution == fp.RESOLUTION_SUCCESS
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(30) == 0
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait()
        if worker is not None and worker.stderr is not None:
            worker.stderr.close()
        server.stop()
