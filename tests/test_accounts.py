"""People and keys: login, refresh, expiry, revocation, grants, operator decisions, the audit
log, rate limits and lockout — through the real server."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tests.conftest import FACES, ServerThread, make_settings, read
from vigil.server.security.auth import Authenticator
from vigil.storage import analyses as analyses_repo
from vigil.storage import credentials
from vigil.v1 import auth_pb2, auth_pb2_grpc, folders_pb2, folders_pb2_grpc

PASSWORD = "correct horse battery staple"


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as error:
        code: grpc.StatusCode = error.code()
        return code
    return grpc.StatusCode.OK


class FakeClock:
    """A clock that stands still until a test moves it (set from the test's thread, read on the
    server's)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@contextlib.contextmanager
def frozen_clock(server: ServerThread) -> Iterator[FakeClock]:
    """For the ``with`` block, the server's credential cache, lockout and rate limits follow a
    fake clock, started at the real one's time; the real clock (and an empty cache, whose entries
    were stamped with fake times) come back after."""
    security = server.vigil.security
    assert security is not None
    authenticator = security.authenticator
    real = authenticator.clock
    clock = FakeClock(real())
    authenticator.clock = clock
    try:
        yield clock
    finally:
        authenticator.clock = real
        authenticator.forget()


@pytest.fixture
def api_clock(api_server: ServerThread) -> Iterator[FakeClock]:
    with frozen_clock(api_server) as clock:
        yield clock


def test_login_refresh_and_disable(api_server: ServerThread, api_clock: FakeClock) -> None:
    company = f"acct-{uuid.uuid4().hex[:8]}"
    admin_key = api_server.new_key("CLIENT_ADMIN", company=company)
    email = f"{company}@example.com"
    with api_server.channel(admin_key) as channel:
        admin = auth_pb2_grpc.AdminStub(channel)
        user = admin.CreateUser(
            auth_pb2.CreateUserRequest(email=email, password=PASSWORD, role=auth_pb2.ROLE_CLIENT)
        )
    with grpc.insecure_channel(api_server.address) as plain:
        auth = auth_pb2_grpc.AuthStub(plain)
        with pytest.raises(grpc.RpcError) as info:
            auth.Login(auth_pb2.LoginRequest(email=email, password="wrong password!"))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        pair = auth.Login(auth_pb2.LoginRequest(email=email, password=PASSWORD))
        bearer = (("authorization", f"Bearer {pair.access_token}"),)
        me = auth.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=bearer)
        assert (me.user_id, me.role, me.company_name) == (user.id, auth_pb2.ROLE_CLIENT, company)
        folders = folders_pb2_grpc.FoldersStub(plain)
        folders.CreateFolder(folders_pb2.CreateFolderRequest(), metadata=bearer)
        renewed = auth.Refresh(auth_pb2.RefreshRequest(refresh_token=pair.refresh_token))
        assert renewed.access_token and renewed.refresh_token != pair.refresh_token
        with pytest.raises(grpc.RpcError) as info:  # a refresh token is single use
            auth.Refresh(auth_pb2.RefreshRequest(refresh_token=pair.refresh_token))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with api_server.channel(admin_key) as channel:
            auth_pb2_grpc.AdminStub(channel).DisableUser(
                auth_pb2.DisableUserRequest(user_id=user.id)
            )
        # other replicas may trust a checked credential for up to 2 s
        api_clock.advance(Authenticator.CACHE_S + 0.1)
        new_bearer = (("authorization", f"Bearer {renewed.access_token}"),)
        assert code_of(lambda: auth.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=new_bearer)) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
        assert (
            code_of(lambda: auth.Login(auth_pb2.LoginRequest(email=email, password=PASSWORD)))
            == grpc.StatusCode.UNAUTHENTICATED
        )


def test_keys_are_shown_once_revocable_and_grants_are_bounded(api_server: ServerThread) -> None:
    company = f"keys-{uuid.uuid4().hex[:8]}"
    client_admin = api_server.new_key("CLIENT_ADMIN", company=company)
    with api_server.channel(client_admin) as channel:
        admin = auth_pb2_grpc.AdminStub(channel)
        made = admin.CreateApiKey(
            auth_pb2.CreateApiKeyRequest(name="svc", role=auth_pb2.ROLE_SERVICE)
        )
        assert made.key.startswith("vk_") and made.prefix in made.key
        listed = admin.ListApiKeys(auth_pb2.ListApiKeysRequest()).keys
        assert all(not k.key for k in listed) and made.id in {k.id for k in listed}
        for role in (auth_pb2.ROLE_ADMIN, auth_pb2.ROLE_OPERATOR):
            with pytest.raises(grpc.RpcError) as info:
                admin.CreateApiKey(auth_pb2.CreateApiKeyRequest(role=role))
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as info:
            admin.CreateApiKey(auth_pb2.CreateApiKeyRequest(role=auth_pb2.Role.ValueType(42)))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with api_server.channel(made.key) as channel:
        assert (
            auth_pb2_grpc.AuthStub(channel).WhoAmI(auth_pb2.WhoAmIRequest()).role
            == auth_pb2.ROLE_SERVICE
        )
    with api_server.channel(client_admin) as channel:
        auth_pb2_grpc.AdminStub(channel).RevokeApiKey(
            auth_pb2.RevokeApiKeyRequest(api_key_id=made.id)
        )
    with api_server.channel(made.key) as channel:
        with pytest.raises(grpc.RpcError) as info:
            auth_pb2_grpc.AuthStub(channel).WhoAmI(auth_pb2.WhoAmIRequest())
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "revoked" in str(info.value.details())


def test_an_operator_resolves_a_grey_zone_analysis_and_it_is_audited(
    api_server: ServerThread,
) -> None:
    company = f"op-{uuid.uuid4().hex[:8]}"
    service = api_server.new_key("SERVICE", company=company)
    operator = api_server.new_key("CLIENT_OPERATOR", company=company)
    with api_server.channel(service) as channel:
        folders = folders_pb2_grpc.FoldersStub(channel)
        folder = folders.CreateFolder(folders_pb2.CreateFolderRequest())
        for name, tag in (("obama.jpg", "photo_id_front"), ("obama2.jpg", "photo_selfie")):
            parts = [
                folders_pb2.UploadMediaRequest(
                    header=folders_pb2.UploadMediaHeader(folder_id=folder.id, tags=[tag])
                ),
                folders_pb2.UploadMediaRequest(chunk=read(FACES / name)),
            ]
            folders.UploadMedia(iter(parts))
        analysis = folders.CreateAnalyses(
            folders_pb2.CreateAnalysesRequest(
                folder_id=folder.id,
                analyses=[
                    folders_pb2.AnalysisRequest(
                        type=folders_pb2.ANALYSIS_TYPE_BIOMETRY, threshold=0.38
                    )
                ],
            )
        ).analyses[0]
        list(folders.WatchFolder(folders_pb2.WatchFolderRequest(folder_id=folder.id), timeout=60))
        waiting = folders.GetFolder(folders_pb2.GetFolderRequest(folder_id=folder.id))
        assert waiting.resolution == folders_pb2.RESOLUTION_OPERATOR_REQUIRED
    with api_server.channel(operator) as channel:
        operators = auth_pb2_grpc.OperatorsStub(channel)
        decided = operators.ResolveAnalysis(
            auth_pb2.ResolveAnalysisRequest(
                analysis_id=analysis.id,
                resolution=folders_pb2.RESOLUTION_SUCCESS,
                comment="same man",
            )
        )
        assert decided.resolution == folders_pb2.RESOLUTION_SUCCESS
        with pytest.raises(grpc.RpcError) as info:  # decided once; not again
            operators.ResolveAnalysis(
                auth_pb2.ResolveAnalysisRequest(
                    analysis_id=analysis.id, resolution=folders_pb2.RESOLUTION_DECLINED
                )
            )
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        final = folders_pb2_grpc.FoldersStub(channel).GetFolder(
            folders_pb2.GetFolderRequest(folder_id=folder.id)
        )
        assert final.resolution == folders_pb2.RESOLUTION_SUCCESS
    company_id = company_id_of(api_server, company)
    app = api_server.vigil.app
    row = api_server.call(
        lambda: app.db(
            lambda s: analyses_repo.get_analysis(analysis.id, company_id=company_id, session=s)
        ),
    )
    assert row.decided_by is not None and row.decided_by.startswith("key:")
    assert row.decided_at is not None
    assert row.decision_comment == "same man"
    # Audit events are written just after each call: wait for the writes still running.
    api_server.call(lambda: asyncio.gather(*app.background_writes, return_exceptions=True))
    with api_server.channel(api_server.new_key("CLIENT_ADMIN", company=company)) as channel:
        events = (
            auth_pb2_grpc.AdminStub(channel)
            .ListAuditEvents(auth_pb2.ListAuditEventsRequest())
            .events
        )
    seen = {(e.method.rsplit("/", 1)[-1], e.object_id, e.status) for e in events}
    assert ("ResolveAnalysis", analysis.id, "OK") in seen
    assert ("ResolveAnalysis", analysis.id, "FAILED_PRECONDITION") in seen
    assert ("CreateAnalyses", folder.id, "OK") in seen
    assert all(e.actor.startswith(("key:", "user:")) for e in events)


def company_id_of(server: ServerThread, name: str) -> str:
    app = server.vigil.app
    return server.call(lambda: app.db(lambda s: credentials.company_by_name(name, session=s).id))


@pytest.fixture(scope="module")
def strict_server(models_dir: Path) -> Iterator[ServerThread]:
    settings = make_settings(
        models_dir,
        rate_limit_per_s=2.0,
        rate_limit_burst=3.0,
        auth_max_failures=3,
        auth_lockout_s=2.0,
    )
    started = ServerThread(settings).start()
    yield started
    started.stop()


@pytest.fixture
def strict_clock(strict_server: ServerThread) -> Iterator[FakeClock]:
    with frozen_clock(strict_server) as clock:
        yield clock


def test_rate_limit_answers_with_retry_info(
    strict_server: ServerThread, strict_clock: FakeClock
) -> None:
    key = strict_server.new_key("CLIENT")
    with strict_server.channel(key) as channel:
        auth = auth_pb2_grpc.AuthStub(channel)
        codes = [code_of(lambda: auth.WhoAmI(auth_pb2.WhoAmIRequest())) for _ in range(6)]
        assert codes[:3] == [grpc.StatusCode.OK] * 3
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes[3:]
        try:
            auth.WhoAmI(auth_pb2.WhoAmIRequest())
        except grpc.RpcError as error:
            status = rpc_status.from_call(error)
            assert status is not None
            retry = error_details_pb2.RetryInfo()
            assert any(d.Unpack(retry) for d in status.details)
            assert 0 < retry.retry_delay.ToTimedelta().total_seconds() <= 1.0
        strict_clock.advance(1.0)
        assert code_of(lambda: auth.WhoAmI(auth_pb2.WhoAmIRequest())) == grpc.StatusCode.OK


def test_lockout_after_repeated_failures(
    strict_server: ServerThread, strict_clock: FakeClock
) -> None:
    good = strict_server.new_key("CLIENT")
    with grpc.insecure_channel(strict_server.address) as channel:
        auth = auth_pb2_grpc.AuthStub(channel)
        bad = (("x-api-key", "vk_deadbeef_" + "x" * 43),)
        for _ in range(3):
            assert code_of(lambda: auth.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=bad)) == (
                grpc.StatusCode.UNAUTHENTICATED
            )
        locked = (("x-api-key", good),)
        with pytest.raises(
            grpc.RpcError
        ) as info:  # even a good key, from this address, for a while
            auth.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=locked)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "failed authentications" in str(info.value.details())
        strict_clock.advance(2.1)
        assert auth.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=locked).role == auth_pb2.ROLE_CLIENT
