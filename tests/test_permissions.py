"""Every RPC × every kind of caller → the expected status, through the real server (both DBs).

Callers: no credential, a malformed key, an unknown key, a revoked key, an expired key, an expired
access token, and a valid key of each role. An allowed role may still fail on the (empty) request
— but never with UNAUTHENTICATED or PERMISSION_DENIED; a denied role always gets PERMISSION_DENIED.
"""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from sqlmodel import Session

from tests.conftest import Metadata, ServerThread
from vigil.server.security.permissions import PERMISSIONS, PUBLIC, ROLES
from vigil.storage import credentials, folders
from vigil.storage.tables import utcnow
from vigil.v1 import (
    auth_pb2,
    challenges_pb2,
    collections_pb2,
    folders_pb2,
    instant_pb2,
    statistics_pb2,
    webhooks_pb2,
)

SERVICES = [
    service
    for module in (
        auth_pb2,
        challenges_pb2,
        collections_pb2,
        folders_pb2,
        instant_pb2,
        statistics_pb2,
        webhooks_pb2,
    )
    for service in module.DESCRIPTOR.services_by_name.values()
]
METHODS = [(service, method) for service in SERVICES for method in service.methods]
#: The call metadata of each caller: (the unauthenticated ones by name, each role's key).
Callers = tuple[dict[str, Metadata], dict[str, Metadata]]


def path(service: ServiceDescriptor, method: MethodDescriptor) -> str:
    return f"/{service.full_name}/{method.name}"


def call(
    channel: grpc.Channel, service: ServiceDescriptor, method: MethodDescriptor, metadata: Metadata
) -> grpc.StatusCode:
    """Call with an empty request (an empty stream for streaming requests); the final status."""
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    kind = (
        ("stream" if method.client_streaming else "unary")
        + "_"
        + ("stream" if method.server_streaming else "unary")
    )
    stub = getattr(channel, kind)(
        path(service, method),
        request_serializer=request_class.SerializeToString,
        response_deserializer=response_class.FromString,
    )
    request = iter(()) if method.client_streaming else request_class()
    try:
        reply = stub(request, metadata=metadata, timeout=20)
        if method.server_streaming:
            list(reply)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


# The specification, written out on purpose instead of read from server/permissions.py, so a
# change to the code's table fails here until the specification is changed too.
# A=ADMIN O=OPERATOR C=CLIENT CA=CLIENT_ADMIN CO=CLIENT_OPERATOR S=SERVICE; -safe: SAFE refused.
_ABBREVIATIONS = {
    "A": "ADMIN", "O": "OPERATOR", "C": "CLIENT", "CA": "CLIENT_ADMIN", "CO": "CLIENT_OPERATOR",
    "S": "SERVICE",
}  # fmt: skip
EXPECTED = {
    "Instant/CheckLiveness": "A C CA S",
    "Instant/Verify": "A C CA S",
    "Instant/StreamLiveness": "A C CA S",
    "Instant/Detect": "A C CA S -safe",
    "Instant/ExtractTemplate": "A C CA S -safe",
    "Instant/GetServerInfo": "A O C CA CO S",
    "Folders/CreateFolder": "A C CA S",
    "Folders/UpdateFolderMeta": "A C CA S",
    "Folders/UploadMedia": "A C CA S",
    "Folders/CreateAnalyses": "A C CA S",
    "Folders/Submit": "A C CA S",
    "Folders/DeleteFolder": "A CA S",
    "Folders/DeleteMedia": "A CA S",
    "Folders/GetFolder": "A O C CA CO S",
    "Folders/ListFolders": "A O C CA CO S",
    "Folders/GetMedia": "A O C CA CO S",
    "Folders/GetAnalysis": "A O C CA CO S",
    "Folders/ListAnalyses": "A O C CA CO S",
    "Folders/WatchFolder": "A O C CA CO S",
    "Folders/DownloadMedia": "A O C CA CO S -safe",
    "Collections/CreateCollection": "A CA S -safe",
    "Collections/DeleteCollection": "A CA S -safe",
    "Collections/AddFace": "A CA S -safe",
    "Collections/RemoveFace": "A CA S -safe",
    "Collections/ListCollections": "A O CA CO S -safe",
    "Collections/ListFaces": "A O CA CO S -safe",
    "Collections/Search": "A C CA S -safe",
    "Webhooks/CreateWebhook": "A CA S",
    "Webhooks/DeleteWebhook": "A CA S",
    "Webhooks/ListWebhooks": "A O CA CO S",
    "Webhooks/ListDeliveries": "A O CA CO S",
    "Auth/WhoAmI": "A O C CA CO S",
    "Admin/CreateCompany": "A",
    "Admin/ListCompanies": "A",
    "Admin/CreateUser": "A CA",
    "Admin/ListUsers": "A CA",
    "Admin/DisableUser": "A CA",
    "Admin/CreateApiKey": "A CA",
    "Admin/ListApiKeys": "A CA",
    "Admin/RevokeApiKey": "A CA",
    "Admin/ListAuditEvents": "A CA",
    "Operators/ResolveAnalysis": "A O CO",
    "Verdicts/GetVerdict": "A O C CA CO S",
    "Verdicts/GetPublicKeys": "A O C CA CO S",
    "Challenges/CreateChallenge": "A C CA S",
    "Challenges/GetChallenge": "A C CA S",
    "Challenges/AnswerChallenge": "A C CA S",
    "Challenges/StreamAnswer": "A C CA S",
    "Statistics/GetStatistics": "A O CA CO",
}


def test_the_permission_table_is_the_specification() -> None:
    for short, spec in EXPECTED.items():
        words = spec.split()
        rule = PERMISSIONS[f"/vigil.v1.{short}"]
        assert set(rule.roles) == {_ABBREVIATIONS[w] for w in words if w != "-safe"}, short
        assert rule.safe == ("-safe" not in words), short
    assert {f"/vigil.v1.{short}" for short in EXPECTED} == set(PERMISSIONS)


def test_every_rpc_is_in_the_permission_table() -> None:
    listed = set(PERMISSIONS) | PUBLIC
    missing = [path(s, m) for s, m in METHODS if path(s, m) not in listed]
    assert not missing, f"RPCs without a permission rule: {missing}"
    stale = [p for p in PERMISSIONS if p not in {path(s, m) for s, m in METHODS}]
    assert not stale, f"rules for RPCs that do not exist: {stale}"


@pytest.fixture
def callers(api_server: ServerThread) -> Callers:
    """Credentials of every kind, in a company of their own."""
    company = f"perm-{utcnow().timestamp()}"
    keys = {role: api_server.new_key(role, company=company) for role in ROLES}
    app = api_server.vigil.app
    assert api_server.vigil.security is not None
    signer = api_server.vigil.security.signer

    def bad_keys(session: Session) -> tuple[str, str, str]:
        company_id = folders.ensure_company(company, session=session).id
        revoked, revoked_key = credentials.create_api_key(
            "revoked",
            "ADMIN",
            "FULL",
            company_id=company_id,
            created_by="t",
            expires_at=None,
            session=session,
        )
        revoked.revoked_at = utcnow()
        _, expired_key = credentials.create_api_key(
            "expired",
            "ADMIN",
            "FULL",
            company_id=company_id,
            created_by="t",
            expires_at=utcnow() - timedelta(seconds=1),
            session=session,
        )
        user = credentials.create_user(
            f"{company}@example.com",
            "a long enough password",
            "ADMIN",
            "FULL",
            company_id=company_id,
            session=session,
        )
        return revoked_key, expired_key, user.id

    revoked_key, expired_key, user_id = api_server.call(lambda: app.db(bad_keys))
    expired_token, _ = signer.sign({"sub": user_id}, timedelta(seconds=-5), "access")
    unauthenticated: dict[str, Metadata] = {
        "none": (),
        "malformed key": (("x-api-key", "not-a-key"),),
        "unknown key": (("x-api-key", "vk_00000000_" + "A" * 43),),
        "revoked key": (("x-api-key", revoked_key),),
        "expired key": (("x-api-key", expired_key),),
        "expired token": (("authorization", f"Bearer {expired_token}"),),
        "forged token": (("authorization", "Bearer " + expired_token[:-4] + "AAAA"),),
    }
    by_role: dict[str, Metadata] = {role: (("x-api-key", key),) for role, key in keys.items()}
    return unauthenticated, by_role


def test_every_rpc_for_every_caller(api_server: ServerThread, callers: Callers) -> None:
    unauthenticated, by_role = callers
    failures: list[str] = []
    with grpc.insecure_channel(api_server.address) as channel:
        for service, method in METHODS:
            name = path(service, method)
            if name in PUBLIC:
                continue
            spec = EXPECTED[name.removeprefix("/vigil.v1.")].split()
            allowed = {_ABBREVIATIONS[w] for w in spec if w != "-safe"}
            for caller, metadata in unauthenticated.items():
                code = call(channel, service, method, metadata)
                if code != grpc.StatusCode.UNAUTHENTICATED:
                    failures.append(f"{name} with {caller}: {code.name}, expected UNAUTHENTICATED")
            for role, metadata in by_role.items():
                code = call(channel, service, method, metadata)
                if role in allowed:
                    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                        failures.append(f"{name} as {role}: {code.name}, expected to be let in")
                elif code != grpc.StatusCode.PERMISSION_DENIED:
                    failures.append(f"{name} as {role}: {code.name}, expected PERMISSION_DENIED")
    assert not failures, "\n".join(failures)


def test_health_and_reflection_need_no_credential(api_server: ServerThread) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(api_server.address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_only_staff_may_name_another_company(api_server: ServerThread) -> None:
    from vigil.v1 import folders_pb2_grpc

    client = api_server.new_key("CLIENT_ADMIN", company="perm-own")
    with api_server.channel(client) as channel:
        stub = folders_pb2_grpc.FoldersStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ListFolders(
                folders_pb2.ListFoldersRequest(), metadata=(("vigil-company", "other"),)
            )
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        stub.ListFolders(
            folders_pb2.ListFoldersRequest(), metadata=(("vigil-company", "perm-own"),)
        )
