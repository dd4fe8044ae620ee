"""Webhooks: signatures, target checks, the delivery queue on both databases, and deliveries to a
real HTTP receiver through the running server."""

from __future__ import annotations

import asyncio
import http.server
import ipaddress
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

import grpc
import pytest
import standardwebhooks
from google.protobuf.message import Message
from sqlmodel import Session

from tests.conftest import FACES, Metadata, ServerThread, make_settings, read
from vigil.client.webhooks import WebhookSignatureError, verify_delivery
from vigil.inference.errors import InvalidArgument, NotFound
from vigil.server.context import AppContext
from vigil.server.jobs import webhooks as webhook_dispatch
from vigil.server.settings import Settings
from vigil.server.webhook_signing import check_target, is_public, sign, verify
from vigil.storage import folders, webhooks
from vigil.storage.db import Database, migrate
from vigil.storage.tables import Folder, Webhook, WebhookDelivery, utcnow
from vigil.v1 import folders_pb2, folders_pb2_grpc, webhooks_pb2, webhooks_pb2_grpc

T = TypeVar("T")

SECRET = "s3cr3t-s3cr3t"
BODY = b'{"event":"folder.final","folder_id":"abc"}'

# ---- signatures --------------------------------------------------------------------------------


def test_a_good_signature_verifies() -> None:
    now = 1_700_000_000
    header = sign(SECRET, BODY, now)
    assert header.startswith(f"t={now},v1=")
    assert len(header.split("v1=")[1]) == 64
    assert verify(SECRET, BODY, header, now=now)
    assert verify(SECRET, BODY, header, now=now + 299)


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    import hashlib
    import hmac

    expected = hmac.new(SECRET.encode(), b"123." + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, BODY, 123) == f"t=123,v1={expected}"


def test_one_changed_byte_fails() -> None:
    now = 1_700_000_000
    header = sign(SECRET, BODY, now)
    tampered = bytearray(BODY)
    tampered[5] ^= 1
    assert not verify(SECRET, bytes(tampered), header, now=now)
    mac = header.split("v1=")[1]
    flipped = mac[:-1] + ("0" if mac[-1] != "0" else "1")
    assert not verify(SECRET, BODY, f"t={now},v1={flipped}", now=now)


def test_another_secret_fails() -> None:
    now = 1_700_000_000
    assert not verify("another", BODY, sign(SECRET, BODY, now), now=now)


def test_a_stale_or_future_timestamp_fails() -> None:
    now = 1_700_000_000
    header = sign(SECRET, BODY, now)
    assert not verify(SECRET, BODY, header, now=now + 301)
    assert not verify(SECRET, BODY, header, now=now - 301)
    assert verify(SECRET, BODY, header, tolerance_s=1000, now=now + 900)


def test_a_moved_timestamp_fails() -> None:
    now = 1_700_000_000
    mac = sign(SECRET, BODY, now).split("v1=")[1]
    assert not verify(SECRET, BODY, f"t={now + 1},v1={mac}", now=now)


@pytest.mark.parametrize(
    "header",
    ["", "garbage", "t=abc,v1=00", "v1=00", "t=1700000000", "t=1700000000,t=1700000000,v1=00"],
)
def test_malformed_headers_fail(header: str) -> None:
    assert not verify(SECRET, BODY, header, now=1_700_000_000)


def test_any_of_several_v1_entries_may_match() -> None:
    now = 1_700_000_000
    good = sign(SECRET, BODY, now).split("v1=")[1]
    assert verify(SECRET, BODY, f"t={now},v1={'0' * 64},v1={good}", now=now)


# ---- targets -----------------------------------------------------------------------------------

REFUSED = [
    "http://127.0.0.1/hook",
    "http://127.1.2.3:8080/hook",
    "http://10.1.2.3/hook",
    "http://172.16.0.1/hook",
    "http://192.168.1.1/hook",
    "http://169.254.169.254/latest/meta-data",
    "http://100.64.0.1/hook",
    "http://0.0.0.0/hook",
    "http://224.0.0.1/hook",
    "http://[::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://[fe80::1]/hook",
    "http://[fc00::1]/hook",
    "http://localhost:9999/hook",
]


@pytest.mark.parametrize("url", REFUSED)
async def test_private_targets_are_refused(url: str) -> None:
    with pytest.raises(InvalidArgument, match="non-public"):
        await check_target(url, allow_private=False)


@pytest.mark.parametrize("url", REFUSED)
async def test_private_targets_are_allowed_when_configured(url: str) -> None:
    target = await check_target(url, allow_private=True)
    assert target.addresses


async def test_a_public_address_is_allowed() -> None:
    target = await check_target("https://93.184.216.34:8443/in?x=1", allow_private=False)
    assert (target.scheme, target.host, target.port, target.path) == (
        "https",
        "93.184.216.34",
        8443,
        "/in?x=1",
    )
    assert target.addresses == ("93.184.216.34",)


async def test_localhost_resolves_to_loopback_and_is_refused() -> None:
    target = await check_target("http://localhost/", allow_private=True)
    assert all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in target.addresses)
    with pytest.raises(InvalidArgument, match="'localhost' resolves to"):
        await check_target("http://localhost/", allow_private=False)


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("", "required"),
        ("ftp://93.184.216.34/x", "http or https"),
        ("file:///etc/passwd", "http or https"),
        ("gopher://127.0.0.1/", "http or https"),
        ("javascript:alert(1)", "http or https"),
        ("93.184.216.34/hook", "http or https"),
        ("http:///nohost", "no host"),
        ("http://user:pw@93.184.216.34/", "credentials"),
        ("http://93.184.216.34:99999/", "not valid"),
        ("http://93.184.216.34/a b", "whitespace"),
        ("http://93.184.216.34/" + "a" * 2100, "limit is 2048"),
        ("http://no-such-host.invalid/", "does not resolve"),
    ],
)
@pytest.mark.parametrize("allow_private", [False, True])
async def test_bad_urls_are_refused(url: str, words: str, allow_private: bool) -> None:
    with pytest.raises(InvalidArgument, match=words):
        await check_target(url, allow_private=allow_private)


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("10.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("2002:0a00:0001::1", False),  # 6to4 of 10.0.0.1
        ("64:ff9b::a00:1", False),  # NAT64 of 10.0.0.1
        ("64:ff9b::808:808", True),  # NAT64 of 8.8.8.8
        ("255.255.255.255", False),
        ("ff02::1", False),
        ("::", False),
    ],
)
def test_is_public(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public


# ---- the queue, on both databases --------------------------------------------------------------


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    migrate(database.engine)
    yield database
    database.dispose()


def run(db: Database, work: Callable[[Session], T]) -> T:
    with db.session() as session:
        result = work(session)
        session.commit()
        return result


@dataclass
class World:
    a: str
    b: str
    folder: Folder
    other: Folder
    b_folder: Folder


@pytest.fixture
def world(db: Database) -> World:
    def build(s: Session) -> World:
        a = folders.ensure_company("a", session=s).id
        b = folders.ensure_company("b", session=s).id
        return World(
            a,
            b,
            folders.create_folder({"k": "1"}, company_id=a, session=s),
            folders.create_folder({}, company_id=a, session=s),
            folders.create_folder({}, company_id=b, session=s),
        )

    return run(db, build)


def test_backoff_doubles_and_is_capped() -> None:
    assert [webhooks.backoff_s(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert webhooks.backoff_s(9) == 256.0
    assert webhooks.backoff_s(10) == 300.0
    assert webhooks.backoff_s(1000) == 300.0
    assert webhooks.backoff_s(3, base_s=0.5) == 2.0


def test_create_list_delete_are_company_scoped(db: Database, world: World) -> None:
    hook = run(
        db, lambda s: webhooks.create_webhook("http://x/", None, company_id=world.a, session=s)
    )
    scoped = run(
        db,
        lambda s: webhooks.create_webhook(
            "http://y/", world.folder.id, company_id=world.a, session=s
        ),
    )
    assert len(hook.secret) >= 40 and hook.secret != scoped.secret
    assert (hook.folder_id, scoped.folder_id) == (None, world.folder.id)
    listed = run(db, lambda s: webhooks.list_webhooks(company_id=world.a, session=s))
    assert [h.id for h in listed] == [hook.id, scoped.id]
    assert run(db, lambda s: webhooks.list_webhooks(company_id=world.b, session=s)) == []
    with pytest.raises(NotFound, match=f"webhook {hook.id} not found"):
        run(db, lambda s: webhooks.delete_webhook(hook.id, company_id=world.b, session=s))
    with pytest.raises(NotFound, match="folder"):  # another company's folder
        run(
            db,
            lambda s: webhooks.create_webhook(
                "http://z/", world.folder.id, company_id=world.b, session=s
            ),
        )
    with pytest.raises(NotFound, match="folder"):
        run(
            db,
            lambda s: webhooks.create_webhook("http://z/", "nope", company_id=world.a, session=s),
        )
    run(db, lambda s: webhooks.delete_webhook(hook.id, company_id=world.a, session=s))
    listed = run(db, lambda s: webhooks.list_webhooks(company_id=world.a, session=s))
    assert [h.id for h in listed] == [scoped.id]
    with pytest.raises(NotFound):
        run(db, lambda s: webhooks.delete_webhook(hook.id, company_id=world.a, session=s))


def test_webhooks_per_company_are_capped(
    db: Database, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webhooks, "MAX_WEBHOOKS_PER_COMPANY", 2)
    for _ in range(2):
        run(db, lambda s: webhooks.create_webhook("http://x/", None, company_id=world.a, session=s))
    with pytest.raises(Exception, match="limit is 2") as caught:
        run(db, lambda s: webhooks.create_webhook("http://x/", None, company_id=world.a, session=s))
    assert getattr(caught.value, "status", None) == "RESOURCE_EXHAUSTED"
    run(db, lambda s: webhooks.create_webhook("http://x/", None, company_id=world.b, session=s))


def _enqueue(db: Database, folder: Folder, payload: dict[str, Any] | None = None) -> int:
    def work(s: Session) -> int:
        row = s.get(Folder, folder.id)
        assert row is not None
        return webhooks.enqueue_folder_event(row, payload or {"folder_id": folder.id}, session=s)

    return run(db, work)


def _subscribe(db: Database, world: World) -> tuple[Webhook, Webhook]:
    everything = run(
        db, lambda s: webhooks.create_webhook("http://all/", None, company_id=world.a, session=s)
    )
    one = run(
        db,
        lambda s: webhooks.create_webhook(
            "http://one/", world.folder.id, company_id=world.a, session=s
        ),
    )
    return everything, one


def test_events_fan_out_to_the_subscriptions_covering_the_folder(
    db: Database, world: World
) -> None:
    everything, one = _subscribe(db, world)
    assert _enqueue(db, world.folder, {"n": 1}) == 2
    assert _enqueue(db, world.other) == 1
    assert _enqueue(db, world.b_folder) == 0
    rows = run(
        db,
        lambda s: webhooks.list_deliveries(
            company_id=world.a, folder_id=world.folder.id, session=s
        ),
    )
    assert {(d.webhook_id, d.url) for d in rows} == {
        (everything.id, "http://all/"),
        (one.id, "http://one/"),
    }
    assert all(d.state == "PENDING" and d.payload == {"n": 1} and d.attempts == [] for d in rows)
    assert all(d.secret in (everything.secret, one.secret) for d in rows)
    by_hook = run(
        db,
        lambda s: webhooks.list_deliveries(company_id=world.a, webhook_id=everything.id, session=s),
    )
    assert {d.folder_id for d in by_hook} == {world.folder.id, world.other.id}
    assert len(run(db, lambda s: webhooks.list_deliveries(company_id=world.a, session=s))) == 3
    assert run(db, lambda s: webhooks.list_deliveries(company_id=world.b, session=s)) == []
    with pytest.raises(NotFound, match="folder"):
        run(
            db,
            lambda s: webhooks.list_deliveries(
                company_id=world.b, folder_id=world.folder.id, session=s
            ),
        )
    with pytest.raises(NotFound, match="webhook"):
        run(
            db,
            lambda s: webhooks.list_deliveries(
                company_id=world.b, webhook_id=everything.id, session=s
            ),
        )


def _due_now(db: Database, delivery_id: str) -> None:
    run(
        db,
        lambda s: s.get(WebhookDelivery, delivery_id).__setattr__("next_attempt_at", utcnow()),
    )


def _claim(db: Database, worker: str = "w1", lease_s: float = 60.0) -> WebhookDelivery | None:
    return run(db, lambda s: webhooks.claim_delivery(worker, lease_s, session=s))


def _record(
    db: Database,
    delivery_id: str,
    status: int,
    *,
    worker: str = "w1",
    max_attempts: int = 6,
    base: float = 0.0,
    error: str = "",
) -> WebhookDelivery | None:
    return run(
        db,
        lambda s: webhooks.record_attempt(
            delivery_id,
            worker,
            at=utcnow(),
            http_status=status,
            error=error or ("" if 200 <= status < 300 else f"HTTP {status}"),
            duration_ms=1.5,
            max_attempts=max_attempts,
            backoff_base_s=base,
            session=s,
        ),
    )


def test_claim_takes_each_due_delivery_once_under_a_lease(db: Database, world: World) -> None:
    _subscribe(db, world)
    _enqueue(db, world.folder)
    first, second = _claim(db, "w1"), _claim(db, "w2")
    assert first is not None and second is not None and first.id != second.id
    assert first.lease_owner == "w1" and first.lease_expires_at is not None
    assert _claim(db, "w3") is None  # both leased
    # only the lease holder may record
    assert _record(db, first.id, 200, worker="w2") is None
    done = _record(db, first.id, 200, worker="w1")
    assert done is not None and done.state == "DELIVERED" and done.lease_owner is None
    assert [(a["number"], a["http_status"], a["error"]) for a in done.attempts] == [(1, 200, "")]
    assert _record(db, first.id, 200, worker="w1") is None  # already final


def test_an_expired_lease_is_taken_again(db: Database, world: World) -> None:
    _subscribe(db, world)
    _enqueue(db, world.other)
    lost = _claim(db, "w1", lease_s=-1.0)  # a worker that died: its lease has run out
    assert lost is not None
    again = _claim(db, "w2")
    assert again is not None and again.id == lost.id and again.lease_owner == "w2"
    assert _record(db, lost.id, 200, worker="w1") is None  # the dead worker's late answer
    assert _record(db, lost.id, 200, worker="w2") is not None


def test_failures_back_off_then_fail_after_max_attempts(db: Database, world: World) -> None:
    _subscribe(db, world)
    _enqueue(db, world.other)
    claimed = _claim(db)
    assert claimed is not None
    before = utcnow()
    retry = _record(db, claimed.id, 500, base=1.0)
    assert retry is not None and retry.state == "PENDING" and retry.lease_owner is None
    wait = retry.next_attempt_at - before
    assert timedelta(seconds=0.9) <= wait <= timedelta(seconds=3)
    assert _claim(db) is None  # not due yet
    _due_now(db, claimed.id)
    claimed = _claim(db)
    assert claimed is not None
    before = utcnow()
    retry = _record(db, claimed.id, 0, base=1.0, error="ConnectionRefusedError: refused")
    assert retry is not None
    wait = retry.next_attempt_at - before
    assert timedelta(seconds=1.9) <= wait <= timedelta(seconds=4)  # doubled
    _due_now(db, claimed.id)
    delivery_id = claimed.id
    for _ in range(2):  # base 0: due at once
        claimed = _claim(db)
        assert claimed is not None and claimed.id == delivery_id
        last = _record(db, delivery_id, 503, max_attempts=4, base=0.0)
    assert last is not None and last.state == "FAILED"
    assert [(a["number"], a["http_status"], a["error"]) for a in last.attempts] == [
        (1, 500, "HTTP 500"),
        (2, 0, "ConnectionRefusedError: refused"),
        (3, 503, "HTTP 503"),
        (4, 503, "HTTP 503"),
    ]
    assert all(a["duration_ms"] == 1.5 and a["at"] for a in last.attempts)
    time.sleep(0.01)
    assert _claim(db) is None  # FAILED is final


def test_deleting_a_webhook_gives_up_its_pending_deliveries(db: Database, world: World) -> None:
    everything, one = _subscribe(db, world)
    _enqueue(db, world.folder)
    run(db, lambda s: webhooks.delete_webhook(one.id, company_id=world.a, session=s))
    rows = run(db, lambda s: webhooks.list_deliveries(company_id=world.a, session=s))
    assert {(d.webhook_id, d.state) for d in rows} == {
        (everything.id, "PENDING"),
        (one.id, "FAILED"),
    }
    # the log of a deleted webhook can still be listed by its id
    kept = run(
        db, lambda s: webhooks.list_deliveries(company_id=world.a, webhook_id=one.id, session=s)
    )
    assert len(kept) == 1
    claimed = _claim(db)
    assert claimed is not None and claimed.webhook_id == everything.id
    assert _claim(db) is None


def test_released_deliveries_are_due_again(db: Database, world: World) -> None:
    _subscribe(db, world)
    _enqueue(db, world.other)
    claimed = _claim(db, "w1")
    assert claimed is not None
    assert run(db, lambda s: webhooks.release_deliveries([claimed.id], "w2", session=s)) == 0
    assert run(db, lambda s: webhooks.release_deliveries([claimed.id], "w1", session=s)) == 1
    again = _claim(db, "w2")
    assert again is not None and again.id == claimed.id


def test_concurrent_claims_never_take_one_delivery_twice(db: Database, world: World) -> None:
    def subscribe(s: Session) -> None:
        for n in range(12):
            webhooks.create_webhook(f"http://h{n}/", None, company_id=world.a, session=s)

    run(db, subscribe)
    _enqueue(db, world.other)

    def drain(worker: str) -> list[str]:
        taken = []
        while (delivery := _claim(db, worker)) is not None:
            taken.append(delivery.id)
        return taken

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(drain, ["w1", "w2", "w3", "w4"]))
    taken = [i for ids in results for i in ids]
    assert len(taken) == 12 and len(set(taken)) == 12


# ---- the dispatcher ----------------------------------------------------------------------------


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(webhook_dispatch, "BACKOFF_BASE_S", 0.05)
    monkeypatch.setattr(webhook_dispatch, "POLL_S", 0.05)


@dataclass
class StandInApp:
    """What the dispatcher uses of an AppContext, over a test database."""

    database: Database
    settings: Settings
    deliveries_queued: asyncio.Event = field(default_factory=asyncio.Event)

    async def db(self, work: Callable[[Session], T]) -> T:
        return await asyncio.to_thread(run, self.database, work)


async def _dispatched(db: Database, world: World, url: str) -> tuple[StandInApp, str]:
    def subscribe(s: Session) -> str:
        webhooks.create_webhook(url, None, company_id=world.a, session=s)
        folder = s.get(Folder, world.other.id)
        assert folder is not None
        webhooks.enqueue_folder_event(folder, {"x": 1}, session=s)
        (delivery,) = webhooks.list_deliveries(company_id=world.a, session=s)
        return delivery.id

    app = StandInApp(db, Settings(webhook_allow_private=True, webhook_timeout_s=5.0))
    return app, await app.db(subscribe)


async def _delivery(app: StandInApp, delivery_id: str) -> WebhookDelivery:
    delivery = await app.db(lambda s: s.get(WebhookDelivery, delivery_id))
    assert delivery is not None
    return delivery


async def test_redirects_are_not_followed(
    db: Database, world: World, receiver: Receiver, fast_retries: None
) -> None:
    receiver.script = [302]
    app, delivery_id = await _dispatched(db, world, receiver.url + "/in")
    dispatcher = webhook_dispatch.WebhookDispatcher(cast(AppContext, app))
    dispatcher.start()
    try:
        await asyncio.to_thread(receiver.wait_for, 2)
        for _ in range(100):
            delivery = await _delivery(app, delivery_id)
            if delivery.state == "DELIVERED":
                break
            await asyncio.sleep(0.05)
    finally:
        await dispatcher.stop()
    assert [r.path for r in receiver.requests] == ["/in", "/in"]  # never "/elsewhere"
    assert [(a["http_status"], a["error"]) for a in delivery.attempts] == [
        (302, "HTTP 302"),
        (200, ""),
    ]


async def test_stop_gives_back_the_deliveries_in_flight(
    db: Database, world: World, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webhook_dispatch, "STOP_GRACE_S", 0.1)
    receiver.hold = True
    app, delivery_id = await _dispatched(db, world, receiver.url + "/slow")
    dispatcher = webhook_dispatch.WebhookDispatcher(cast(AppContext, app))
    dispatcher.start()
    app.deliveries_queued.set()
    await asyncio.to_thread(receiver.wait_for, 1)
    claimed = await _delivery(app, delivery_id)
    assert claimed.lease_owner == dispatcher.worker
    await dispatcher.stop()
    released = await _delivery(app, delivery_id)
    assert (released.state, released.lease_owner, released.attempts) == ("PENDING", None, [])
    receiver.release.set()
    # another dispatcher takes it at once (no wait for the lease to expire)
    again = await app.db(lambda s: webhooks.claim_delivery("other", 60.0, session=s))
    assert again is not None and again.id == delivery_id


# ---- deliveries through the running server -----------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A local HTTP endpoint that records every request. It answers ``fail_first`` 500s first
    (or the statuses of ``script``, then 200s) and, while ``hold`` is set, waits for ``release``."""

    fail_first: int = 0
    script: list[int] = field(default_factory=list)
    hold: bool = False
    release: threading.Event = field(default_factory=threading.Event)
    requests: list[Received] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def wait_for(self, count: int, timeout_s: float = 15.0) -> list[Received]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.requests) >= count:
                    return list(self.requests)
            time.sleep(0.02)
        raise AssertionError(f"{len(self.requests)} requests, expected {count}")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with state.lock:
                state.requests.append(Received(self.path, dict(self.headers.items()), body))
                if state.script:
                    status = state.script.pop(0)
                else:
                    status = 500 if len(state.requests) <= state.fail_first else 200
                state.statuses.append(status)
            if state.hold:
                state.release.wait(10)
            self.send_response(status)
            if 300 <= status < 400:
                self.send_header("Location", "http://127.0.0.1:1/elsewhere")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield state
    finally:
        state.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


def _company_name(company: Metadata) -> str:
    return company[0][1]


def _folder_event(server: ServerThread, company_name: str) -> tuple[str, dict[str, Any]]:
    """Make a folder of the company and queue its "all analyses final" event on the server."""
    assert server.running is not None
    app = server.running.app

    def work(s: Session) -> tuple[str, dict[str, Any]]:
        company_id = folders.ensure_company(company_name, session=s).id
        folder = folders.create_folder({"case": "webhook"}, company_id=company_id, session=s)
        payload = {"event": "folder.final", "folder_id": folder.id, "resolution": "SUCCESS"}
        webhooks.enqueue_folder_event(folder, payload, session=s)
        return folder.id, payload

    queued: tuple[str, dict[str, Any]] = server.call(lambda: app.db(work))
    server.loop.call_soon_threadsafe(app.deliveries_queued.set)
    return queued


def _wait_for_state(
    stub: webhooks_pb2_grpc.WebhooksStub,
    company: Metadata,
    folder_id: str,
    state: int,
    timeout_s: float = 15.0,
) -> webhooks_pb2.Delivery:
    deadline = time.monotonic() + timeout_s
    while True:
        found = stub.ListDeliveries(
            webhooks_pb2.ListDeliveriesRequest(folder_id=folder_id), metadata=company
        ).deliveries
        if found and found[0].state == state:
            return found[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"delivery not in state {state}: {found}")
        time.sleep(0.05)


def test_a_folder_event_is_delivered_signed_and_retried(
    api_server: ServerThread,
    api_channel: grpc.Channel,
    company: Metadata,
    receiver: Receiver,
    fast_retries: None,
) -> None:
    stub = webhooks_pb2_grpc.WebhooksStub(api_channel)
    receiver.fail_first = 1
    hook = stub.CreateWebhook(
        webhooks_pb2.CreateWebhookRequest(url=f"{receiver.url}/hooks/vigil?tenant=7"),
        metadata=company,
    )
    assert hook.id and hook.secret and hook.folder_id == "" and hook.created_at.seconds > 0
    listed = stub.ListWebhooks(webhooks_pb2.ListWebhooksRequest(), metadata=company).webhooks
    assert [(h.id, h.url, h.secret) for h in listed] == [
        (hook.id, f"{receiver.url}/hooks/vigil?tenant=7", "")
    ]

    folder_id, payload = _folder_event(api_server, _company_name(company))
    requests = receiver.wait_for(2)
    delivery = _wait_for_state(stub, company, folder_id, webhooks_pb2.DELIVERY_STATE_DELIVERED)

    assert receiver.statuses == [500, 200]
    for request in requests:
        assert request.path == "/hooks/vigil?tenant=7"
        assert request.headers["Content-Type"] == "application/json"
        assert request.headers["X-Vigil-Event"] == "folder.final"
        assert request.headers["X-Vigil-Delivery"] == delivery.id
        assert verify(hook.secret, request.body, request.headers["X-Vigil-Signature"])
        # Standard Webhooks: the stock library accepts it with the secret as returned
        assert hook.secret.startswith("whsec_")
        assert request.headers["webhook-id"] == delivery.id
        stock = standardwebhooks.Webhook(hook.secret)
        assert stock.verify(request.body, request.headers) == payload
        assert verify_delivery(hook.secret, request.body, request.headers) == payload
        with pytest.raises(WebhookSignatureError):
            verify_delivery(hook.secret, request.body + b" ", request.headers)
        assert not verify("wrong", request.body, request.headers["X-Vigil-Signature"])
        assert json.loads(request.body) == payload
    assert (delivery.webhook_id, delivery.folder_id) == (hook.id, folder_id)
    assert [(a.number, a.http_status, a.error) for a in delivery.attempts] == [
        (1, 500, "HTTP 500"),
        (2, 200, ""),
    ]
    assert all(a.at.seconds > 0 and a.duration_ms > 0 for a in delivery.attempts)
    assert not delivery.HasField("next_attempt_at")
    by_hook = stub.ListDeliveries(
        webhooks_pb2.ListDeliveriesRequest(webhook_id=hook.id), metadata=company
    ).deliveries
    assert [d.id for d in by_hook] == [delivery.id]


def test_an_unreachable_target_is_retried_then_failed(
    api_server: ServerThread, api_channel: grpc.Channel, company: Metadata, fast_retries: None
) -> None:
    assert api_server.running is not None
    attempts = api_server.running.app.settings.webhook_max_attempts
    # a port nothing listens on: bind one, then close it
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    stub = webhooks_pb2_grpc.WebhooksStub(api_channel)
    stub.CreateWebhook(
        webhooks_pb2.CreateWebhookRequest(url=f"http://127.0.0.1:{port}/"), metadata=company
    )
    folder_id, _ = _folder_event(api_server, _company_name(company))
    # backoff 0.05, 0.1, 0.2, 0.4, 0.8 s: all attempts within a few seconds
    delivery = _wait_for_state(stub, company, folder_id, webhooks_pb2.DELIVERY_STATE_FAILED)
    assert [a.number for a in delivery.attempts] == list(range(1, attempts + 1))
    assert all(a.http_status == 0 and "Connection" in a.error for a in delivery.attempts)


def test_webhook_api_errors(
    api_server: ServerThread, api_channel: grpc.Channel, company: Metadata
) -> None:
    stub = webhooks_pb2_grpc.WebhooksStub(api_channel)
    other = (("vigil-company", _company_name(company) + "-other"),)
    api_server.ensure_company(other[0][1])

    def code(
        call: Callable[..., object], request: Message, metadata: Metadata = company
    ) -> grpc.StatusCode:
        with pytest.raises(grpc.RpcError) as caught:
            call(request, metadata=metadata)
        return caught.value.code()

    create = webhooks_pb2.CreateWebhookRequest
    assert code(stub.CreateWebhook, create(url="")) == grpc.StatusCode.INVALID_ARGUMENT
    assert code(stub.CreateWebhook, create(url="ftp://x/")) == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        code(stub.CreateWebhook, create(url="http://127.0.0.1/", folder_id="nope"))
        == grpc.StatusCode.NOT_FOUND
    )
    folder_id, _ = _folder_event(api_server, _company_name(company))
    scoped = stub.CreateWebhook(
        create(url="http://127.0.0.1:1/", folder_id=folder_id), metadata=company
    )
    assert scoped.folder_id == folder_id
    # another company sees nothing of it
    assert code(
        stub.CreateWebhook, create(url="http://127.0.0.1:1/", folder_id=folder_id), other
    ) == (grpc.StatusCode.NOT_FOUND)
    assert not stub.ListWebhooks(webhooks_pb2.ListWebhooksRequest(), metadata=other).webhooks
    delete = webhooks_pb2.DeleteWebhookRequest
    assert (
        code(stub.DeleteWebhook, delete(webhook_id=scoped.id), other) == grpc.StatusCode.NOT_FOUND
    )
    deliveries = webhooks_pb2.ListDeliveriesRequest
    assert code(stub.ListDeliveries, deliveries(folder_id=folder_id), other) == (
        grpc.StatusCode.NOT_FOUND
    )
    assert code(stub.ListDeliveries, deliveries(webhook_id=scoped.id), other) == (
        grpc.StatusCode.NOT_FOUND
    )
    stub.DeleteWebhook(delete(webhook_id=scoped.id), metadata=company)
    assert code(stub.DeleteWebhook, delete(webhook_id=scoped.id)) == grpc.StatusCode.NOT_FOUND
    assert not stub.ListWebhooks(webhooks_pb2.ListWebhooksRequest(), metadata=company).webhooks


def test_private_targets_are_refused_unless_allowed(
    models_dir: Path, tmp_path: Path, receiver: Receiver, fast_retries: None
) -> None:
    server = ServerThread(
        make_settings(models_dir, data_dir=tmp_path, webhook_allow_private=False)
    ).start()
    try:
        with server.channel() as channel:
            stub = webhooks_pb2_grpc.WebhooksStub(channel)
            for url in (receiver.url, "http://localhost/", "http://10.0.0.7/", "http://[::1]/"):
                with pytest.raises(grpc.RpcError) as caught:
                    stub.CreateWebhook(webhooks_pb2.CreateWebhookRequest(url=url))
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "non-public" in (caught.value.details() or "")
            assert not stub.ListWebhooks(webhooks_pb2.ListWebhooksRequest()).webhooks

            # a webhook whose host turned private after creation (DNS changed) is refused when
            # delivering: the attempt is recorded with the reason and nothing is sent
            assert server.running is not None
            app = server.running.app

            def subscribe(s: Session) -> None:
                # the company of the channel's key (see tests/conftest.py ServerThread.new_key)
                company_id = folders.ensure_company("operator", session=s).id
                s.add(Webhook(company_id=company_id, url=receiver.url + "/", secret="x" * 43))

            server.call(lambda: app.db(subscribe))
            folder_id, _ = _folder_event(server, "operator")
            deadline = time.monotonic() + 10
            while True:
                (delivery,) = stub.ListDeliveries(
                    webhooks_pb2.ListDeliveriesRequest(folder_id=folder_id)
                ).deliveries
                if delivery.attempts or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            first = delivery.attempts[0]
            assert first.http_status == 0
            assert first.error.startswith("refused:") and "non-public" in first.error
            assert receiver.requests == []
    finally:
        server.stop()


def test_analyses_becoming_final_call_the_folder_webhook(
    api_server: ServerThread,
    api_channel: grpc.Channel,
    company: Metadata,
    receiver: Receiver,
    fast_retries: None,
) -> None:
    """The whole path: a folder's analysis finishes in the worker, its webhook is called."""
    folders_stub = folders_pb2_grpc.FoldersStub(api_channel)
    stub = webhooks_pb2_grpc.WebhooksStub(api_channel)
    folder = folders_stub.CreateFolder(
        folders_pb2.CreateFolderRequest(meta={"case": "e2e"}), metadata=company
    )
    hook = stub.CreateWebhook(
        webhooks_pb2.CreateWebhookRequest(url=receiver.url + "/f", folder_id=folder.id),
        metadata=company,
    )
    assert hook.folder_id == folder.id
    header = folders_pb2.UploadMediaHeader(
        folder_id=folder.id, content_type="image/jpeg", original_name="obama.jpg"
    )
    parts = [
        folders_pb2.UploadMediaRequest(header=header),
        folders_pb2.UploadMediaRequest(chunk=read(FACES / "obama.jpg")),
    ]
    folders_stub.UploadMedia(iter(parts), metadata=company)
    folders_stub.CreateAnalyses(
        folders_pb2.CreateAnalysesRequest(
            folder_id=folder.id,
            analyses=[folders_pb2.AnalysisRequest(type=folders_pb2.ANALYSIS_TYPE_LIVENESS)],
        ),
        metadata=company,
    )
    (request,) = receiver.wait_for(1, timeout_s=30)
    delivery = _wait_for_state(stub, company, folder.id, webhooks_pb2.DELIVERY_STATE_DELIVERED)
    assert request.path == "/f"
    assert request.headers["X-Vigil-Delivery"] == delivery.id
    assert verify(hook.secret, request.body, request.headers["X-Vigil-Signature"])
    body = json.loads(request.body)
    assert body["folder_id"] == folder.id
    assert [a["type"] for a in body["analyses"]] == ["LIVENESS"]
