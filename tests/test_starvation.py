"""One tenant cannot stall the others (PostgreSQL; skipped when it is not reachable).

- A call's database work ends at its deadline: PostgreSQL cancels the statement
  (``statement_timeout``) and the caller gets DEADLINE_EXCEEDED; nothing of it keeps running.
- Each company gets ``VIGIL_COMPANY_MAX_CONCURRENT_QUERIES`` turns: one more waits until its
  deadline and gets RESOURCE_EXHAUSTED, while another company's work runs at once.
- End to end: one company runs heavy ListFolders continuously from 8+ callers; another company's
  GetServerInfo, CheckLiveness (a real image on the real models) and GetFolder keep their p99
  bounded, and once the heavy callers' deadlines have passed none of their queries still runs.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from sqlalchemy import insert, text
from sqlmodel import Session

from tests.conftest import FACES, POSTGRES_ADMIN_URL, ServerThread, make_settings, read
from vigil.inference.errors import DeadlineExpired, Overloaded
from vigil.server.context import CALL_SCOPE, CallScope
from vigil.storage import folders
from vigil.storage.tables import Folder, FolderMeta, utcnow
from vigil.v1 import common_pb2, folders_pb2_grpc, instant_pb2, instant_pb2_grpc
from vigil.v1 import folders_pb2 as fp


def _postgres_reachable() -> bool:
    import psycopg

    try:
        psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3).close()
    except psycopg.OperationalError:
        return False
    return True


pytestmark = pytest.mark.skipif(
    not _postgres_reachable(), reason=f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}"
)

TURNS = 4  # VIGIL_COMPANY_MAX_CONCURRENT_QUERIES in these tests (the default)
HEAVY_CALLERS = 10
HEAVY_FOLDERS, HEAVY_KEYS = 1500, 32
HEAVY_DEADLINE_S = 3.0
#: The bound the test asserts on the bystander's p99 (the target is 1 s; the test machine is
#: shared, so the assertion leaves room and the measured value is printed).
P99_BOUND_S = 2.0


@pytest.fixture(scope="module")
def pg_server(
    models_dir: Path, tmp_path_factory: pytest.TempPathFactory, postgres_database: str
) -> Iterator[ServerThread]:
    running = ServerThread(
        make_settings(
            models_dir,
            data_dir=tmp_path_factory.mktemp("starvation"),
            database_url=postgres_database,
            company_max_concurrent_queries=TURNS,
            analysis_workers=0,
        )
    ).start()
    yield running
    running.stop()


def _company_id(server: ServerThread, name: str) -> str:
    app = server.vigil.app
    return server.call(lambda: app.db(lambda s: folders.ensure_company(name, session=s).id))


def _active_queries(server: ServerThread, like: str) -> list[str]:
    """Statements of this database still running (other than the one asking)."""
    app = server.vigil.app

    def work(session: Session) -> list[str]:
        rows = session.execute(
            text(
                "SELECT query FROM pg_stat_activity WHERE datname = current_database() "
                "AND state = 'active' AND pid <> pg_backend_pid() AND query LIKE :like"
            ),
            {"like": like},
        ).all()
        return [str(r[0]) for r in rows]

    return server.call(lambda: app.db(work))


def _sleep_as(server: ServerThread, company_id: str, seconds: float, deadline_s: float) -> str:
    """``pg_sleep(seconds)`` as a call of ``company_id`` with a deadline: 'ok' or the error."""
    app = server.vigil.app

    async def call() -> str:
        CALL_SCOPE.set(CallScope(company_id, time.monotonic() + deadline_s))
        try:
            await app.db(lambda s: s.execute(text("SELECT pg_sleep(:s)"), {"s": seconds}))
        except (DeadlineExpired, Overloaded) as exc:
            return exc.status
        return "ok"

    return server.call(call)


def test_a_calls_statements_are_cancelled_at_its_deadline(pg_server: ServerThread) -> None:
    company = _company_id(pg_server, f"deadline-{uuid.uuid4().hex[:8]}")
    started = time.monotonic()
    assert _sleep_as(pg_server, company, seconds=30, deadline_s=0.5) == "DEADLINE_EXCEEDED"
    assert time.monotonic() - started < 3.0
    assert _active_queries(pg_server, "%pg_sleep%") == []


def test_a_company_beyond_its_turns_is_refused_and_another_is_not_delayed(
    pg_server: ServerThread,
) -> None:
    busy = _company_id(pg_server, f"busy-{uuid.uuid4().hex[:8]}")
    other = _company_id(pg_server, f"other-{uuid.uuid4().hex[:8]}")
    outcomes: list[str] = []
    holders = [
        threading.Thread(target=lambda: outcomes.append(_sleep_as(pg_server, busy, 2.0, 10.0)))
        for _ in range(TURNS)
    ]
    for holder in holders:
        holder.start()
    time.sleep(0.5)  # every turn of the busy company is taken
    started = time.monotonic()
    assert _sleep_as(pg_server, busy, 0.0, deadline_s=0.5) == "RESOURCE_EXHAUSTED"
    refused_after = time.monotonic() - started
    started = time.monotonic()
    assert _sleep_as(pg_server, other, 0.0, deadline_s=5.0) == "ok"
    other_s = time.monotonic() - started
    for holder in holders:
        holder.join(30)
    assert outcomes == ["ok"] * TURNS
    assert 0.4 < refused_after < 2.0  # it waited for a turn until its deadline, no longer
    assert other_s < 1.0, f"another company waited {other_s:.2f} s"


def _seed_heavy_company(server: ServerThread, company_id: str) -> None:
    """Folders with large metadata, written directly (the API's per-hour quota would slow it)."""
    app = server.vigil.app
    value = "v" * 300

    def work(session: Session) -> None:
        now = utcnow()
        rows: list[dict[str, object]] = []
        meta_rows: list[dict[str, object]] = []
        for i in range(HEAVY_FOLDERS):
            folder_id = uuid.uuid4().hex
            meta = {f"k{k:02d}": value if k % 2 else f"{value}{i % 7}" for k in range(HEAVY_KEYS)}
            rows.append(
                {"id": folder_id, "company_id": company_id, "meta": meta, "created_at": now}
                | {"updated_at": now, "analyses_count": 0}
            )
            meta_rows.extend(
                {"folder_id": folder_id, "company_id": company_id, "key": k, "value": v}
                for k, v in meta.items()
            )
        session.execute(insert(Folder), rows)
        session.execute(insert(FolderMeta), meta_rows)

    server.call(lambda: app.db(work))


def _heavy_request() -> fp.ListFoldersRequest:
    """As many filters as a query may carry: equalities every folder meets (the aggregate reads
    every row of those keys) and inequalities that exclude a few."""
    limit = 32
    value = "v" * 300
    eq = [
        fp.MetaFilter(key=f"k{k:02d}", op=fp.MetaFilter.OP_EQ, value=value) for k in range(1, 32, 2)
    ]
    ne = [
        fp.MetaFilter(key=f"k{k:02d}", op=fp.MetaFilter.OP_NE, value=f"{value}3")
        for k in range(0, 32, 2)
    ]
    return fp.ListFoldersRequest(meta=(eq + ne)[:limit], page_size=200)


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def test_a_tenants_heavy_list_folders_do_not_stall_another_company(
    pg_server: ServerThread,
) -> None:
    suffix = uuid.uuid4().hex[:8]
    heavy_key = pg_server.new_key("SERVICE", company=f"heavy-{suffix}")
    _seed_heavy_company(pg_server, _company_id(pg_server, f"heavy-{suffix}"))
    bystander_key = pg_server.new_key("SERVICE", company=f"bystander-{suffix}")
    image = read(FACES / "obama2.jpg")
    duration_s = float(os.environ.get("VIGIL_STARVATION_SECONDS", "20"))

    stop = threading.Event()
    heavy_codes: dict[str, int] = {}
    lock = threading.Lock()

    def heavy() -> None:
        with pg_server.channel(heavy_key) as channel:
            stub = folders_pb2_grpc.FoldersStub(channel)
            while not stop.is_set():
                try:
                    stub.ListFolders(_heavy_request(), timeout=HEAVY_DEADLINE_S)
                    code = "OK"
                except grpc.RpcError as exc:
                    code = exc.code().name
                with lock:
                    heavy_codes[code] = heavy_codes.get(code, 0) + 1

    with pg_server.channel(bystander_key) as channel:
        folder_stub = folders_pb2_grpc.FoldersStub(channel)
        instant = instant_pb2_grpc.InstantStub(channel)
        folder = folder_stub.CreateFolder(fp.CreateFolderRequest(meta={"who": "bystander"}))
        calls: dict[str, Callable[[], object]] = {
            "GetServerInfo": lambda: instant.GetServerInfo(
                instant_pb2.GetServerInfoRequest(), timeout=10
            ),
            "CheckLiveness": lambda: instant.CheckLiveness(
                instant_pb2.LivenessRequest(image=common_pb2.Media(data=image)), timeout=10
            ),
            "GetFolder": lambda: folder_stub.GetFolder(
                fp.GetFolderRequest(folder_id=folder.id), timeout=10
            ),
        }
        for call in calls.values():  # warm: first calls load caches
            call()
        heavy_threads = [threading.Thread(target=heavy) for _ in range(HEAVY_CALLERS)]
        for thread in heavy_threads:
            thread.start()
        time.sleep(2.0)  # the heavy callers are in full swing
        latencies: dict[str, list[float]] = {name: [] for name in calls}
        ends = time.monotonic() + duration_s
        while time.monotonic() < ends:
            for name, call in calls.items():
                started = time.perf_counter()
                call()  # any error fails the test: the bystander is never refused
                latencies[name].append(time.perf_counter() - started)
        stop.set()
        stopped = time.monotonic()
        for thread in heavy_threads:
            thread.join(HEAVY_DEADLINE_S + 30)

    p99 = {name: _p99(samples) for name, samples in latencies.items()}
    print(
        "bystander p99 (s):",
        {name: round(v, 3) for name, v in p99.items()},
        "calls:",
        {name: len(v) for name, v in latencies.items()},
        "heavy outcomes:",
        heavy_codes,
    )
    assert sum(heavy_codes.values()) >= HEAVY_CALLERS  # the heavy load really ran
    for name, value in p99.items():
        assert value < P99_BOUND_S, f"{name} p99 {value:.2f} s under another tenant's load"
    # Once the heavy callers' deadlines have passed, none of their queries is still running.
    time.sleep(max(0.0, HEAVY_DEADLINE_S + 1.0 - (time.monotonic() - stopped)))
    assert _active_queries(pg_server, "%folder_meta%") == []
