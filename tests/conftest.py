"""Shared fixtures: the real models (installed from the mirror once per run), the real data, and a
real in-process vigil server on a free port, run on its own event loop in a background thread."""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import pytest

from vigil.inference import catalog
from vigil.server.settings import Settings
from vigil.v1 import instant_pb2_grpc

if TYPE_CHECKING:
    import psycopg
    from psycopg.rows import TupleRow
    from sqlmodel import Session

    from vigil.server.app import VigilServer

T = TypeVar("T")

#: Call metadata, as the ``company`` fixture gives it.
Metadata = tuple[tuple[str, str], ...]

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
        #: The started server; None until ``start`` succeeds (``vigil`` asserts it is there).
        self.running: VigilServer | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            from vigil.server.app import start_server

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
        self.admin_key = self.new_key("ADMIN")
        return self

    def new_key(self, role: str, result_mode: str = "FULL", company: str = "operator") -> str:
        """A fresh API key of ``role`` in ``company`` (created if needed), made in the database."""
        from vigil.storage import credentials, folders

        app = self.vigil.app

        def work(session: Session) -> str:
            company_id = folders.ensure_company(company, session=session).id
            _, key = credentials.create_api_key(
                f"test {role}",
                role,
                result_mode,
                company_id=company_id,
                created_by="tests",
                expires_at=None,
                session=session,
            )
            return key

        return self.call(lambda: app.db(work))

    def ensure_company(self, name: str) -> str:
        """The id of company ``name``, created in the database if needed (an ADMIN naming an
        unknown company in ``vigil-company`` gets NOT_FOUND: tests create theirs first)."""
        from vigil.storage import folders

        app = self.vigil.app
        return self.call(lambda: app.db(lambda s: folders.ensure_company(name, session=s).id))

    def channel(self, key: str | None = None, **options: object) -> grpc.Channel:
        """A channel to this server whose calls carry ``key`` (default: an ADMIN key)."""
        from vigil.client.connection import Connection, authenticated_channel

        return authenticated_channel(Connection(self.address, api_key=key or self.admin_key))

    @property
    def vigil(self) -> VigilServer:
        """The started server (fails the test if ``start`` has not succeeded)."""
        assert self.running is not None, "the server is not started"
        return self.running

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.vigil.port}"

    def call(self, coro_factory: Callable[[], Awaitable[T]]) -> T:
        """Run a coroutine on the server's loop and wait for it."""

        async def run() -> T:
            return await coro_factory()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(60)

    def stop(self) -> None:
        if self.running is not None:
            self.call(self.running.stop)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


def make_settings(models_dir: Path, **overrides: object) -> Settings:
    # Any: the overrides are values of any of the settings' fields, checked by pydantic.
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "metrics_port": 0,
        "models_dir": models_dir,
        "data_dir": models_dir.parent / f"var-{uuid.uuid4().hex[:8]}",
        "shutdown_grace_s": 5.0,
        "intra_op_threads": 1,
        "allow_plaintext": True,
        "rate_limit_per_s": 0.0,
        "auth_max_failures": 100_000,
    }
    values.update(overrides)
    return Settings(**values)


POSTGRES_ADMIN_URL = os.environ.get(
    "VIGIL_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)


def _postgres_admin() -> psycopg.Connection[TupleRow]:
    import psycopg

    try:
        return psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL} ({exc}); .ci/run starts it, "
            "or point VIGIL_TEST_POSTGRES at one"
        )


def _sqlalchemy_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test run (dropped at the end)."""
    name = f"vigil_test_{uuid.uuid4().hex[:12]}"
    with _postgres_admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    yield _sqlalchemy_url(f"{base}/{name}")
    with _postgres_admin() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database per test: a SQLite file, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    base_url: str = request.getfixturevalue("postgres_database")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    import psycopg

    plain = base_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    yield f"{base_url}?options=-csearch_path%3D{schema}"
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def _start(models_dir: Path, data_dir: Path, **overrides: object) -> ServerThread:
    settings = make_settings(
        models_dir, data_dir=data_dir, webhook_allow_private=True, queue_poll_s=0.1, **overrides
    )
    return ServerThread(settings).start()


@pytest.fixture(scope="session")
def server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """The full server on SQLite (the embedded default)."""
    running = _start(models_dir, tmp_path_factory.mktemp("server-sqlite"))
    yield running
    running.stop()


@pytest.fixture(scope="session")
def postgres_server(
    models_dir: Path, tmp_path_factory: pytest.TempPathFactory, postgres_database: str
) -> Iterator[ServerThread]:
    """The full server on PostgreSQL."""
    running = _start(
        models_dir, tmp_path_factory.mktemp("server-pg"), database_url=postgres_database
    )
    yield running
    running.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def api_server(request: pytest.FixtureRequest) -> ServerThread:
    """The full server, once on each database. Tests isolate themselves by company."""
    running: ServerThread = request.getfixturevalue(
        "server" if request.param == "sqlite" else "postgres_server"
    )
    return running


@pytest.fixture
def company(request: pytest.FixtureRequest) -> Metadata:
    """Call metadata naming a company of this test's own, so tests never see each other's rows.

    The channels carry an ADMIN key, and an ADMIN may act in any existing company by naming it;
    the company is created in the server(s) the test uses.
    """
    name = f"test-{uuid.uuid4().hex[:12]}"
    for fixture in ("api_server", "server", "postgres_server"):
        if fixture in request.fixturenames:
            running: ServerThread = request.getfixturevalue(fixture)
            running.ensure_company(name)
    return (("vigil-company", name),)


@pytest.fixture
def api_channel(api_server: ServerThread) -> Iterator[grpc.Channel]:
    with api_server.channel() as ch:
        yield ch


@pytest.fixture(scope="session")
def channel(server: ServerThread) -> Iterator[grpc.Channel]:
    with server.channel() as ch:
        yield ch


@pytest.fixture(scope="session")
def stub(channel: grpc.Channel) -> instant_pb2_grpc.InstantStub:
    return instant_pb2_grpc.InstantStub(channel)
