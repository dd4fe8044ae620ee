"""Shared fixtures: the real models (installed from the mirror once per run), the real data, and a
real in-process vigil server on a free port, run on its own event loop in a background thread."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from vigil.v1 import instant_pb2_grpc

from inference import catalog
from server.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("VIGIL_SHARED_DIR", ROOT.parent / "shared"))
DATA = SHARED / "data"
FACES = DATA / "faces"
SPOOF = DATA / "spoof"
ORL = DATA / "orl"


def read(path: Path) -> bytes:
    return path.read_bytes()


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = Path(os.environ.get("VIGIL_TEST_MODELS_DIR", tmp_path_factory.mktemp("models")))
    catalog.install(target, os.environ.get("VIGIL_MODEL_MIRROR") or str(SHARED / "models"))
    return target


class ServerThread:
    """A vigil server running on its own event loop in a daemon thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.running = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from server.app import start_server

        asyncio.set_event_loop(self.loop)
        try:
            self.running = self.loop.run_until_complete(start_server(self.settings))
        except BaseException as exc:  # reported to the test that started it
            self.error = exc
            self.ready.set()
            return
        self.ready.set()
        self.loop.run_forever()

    def start(self) -> ServerThread:
        self.thread.start()
        self.ready.wait(120)
        if self.error is not None:
            raise self.error
        return self

    @property
    def address(self) -> str:
        assert self.running is not None
        return f"127.0.0.1:{self.running.port}"

    def call(self, coro_factory):  # type: ignore[no-untyped-def]
        """Run a coroutine on the server's loop and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro_factory(), self.loop).result(60)

    def stop(self) -> None:
        if self.running is not None:
            self.call(self.running.stop)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


def make_settings(models_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "host": "127.0.0.1",
        "port": 0,
        "metrics_port": 0,
        "models_dir": models_dir,
        "data_dir": models_dir.parent / "var",
        "shutdown_grace_s": 5.0,
        "intra_op_threads": 1,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def server(models_dir: Path) -> Iterator[ServerThread]:
    running = ServerThread(make_settings(models_dir)).start()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def channel(server: ServerThread) -> Iterator[grpc.Channel]:
    options = [
        ("grpc.max_send_message_length", 128 << 20),
        ("grpc.max_receive_message_length", 128 << 20),
    ]
    with grpc.insecure_channel(server.address, options=options) as ch:
        yield ch


@pytest.fixture(scope="session")
def stub(channel: grpc.Channel) -> instant_pb2_grpc.InstantStub:
    return instant_pb2_grpc.InstantStub(channel)
