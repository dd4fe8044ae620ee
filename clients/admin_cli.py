"""`vigil admin …` commands that call the Admin API: companies, users, API keys, audit."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from vigil.client.commands import DEFAULT_SERVER, add_connection_arguments, connection_of
from vigil.client.errors import VigilRpcError
from vigil.v1 import auth_pb2, auth_pb2_grpc

Request = TypeVar("Request")
Reply = TypeVar("Reply", bound=Message)

ROLES = [name.removeprefix("ROLE_") for name in auth_pb2.Role.keys()[1:]]


def _call(
    args: argparse.Namespace,
    method: Callable[[auth_pb2_grpc.AdminStub], grpc.UnaryUnaryMultiCallable[Request, Reply]],
    request: Request,
) -> int:
    connection = connection_of(args)
    try:
        with connection.channel() as channel:
            call = method(auth_pb2_grpc.AdminStub(channel))
            reply = call(request, metadata=connection.metadata, timeout=30)
    except grpc.RpcError as error:
        failure = VigilRpcError.from_grpc(error)
        print(f"{failure.code}: {failure.message}", file=sys.stderr)
        return 1
    print(json.dumps(MessageToDict(reply, preserving_proto_field_name=True), indent=2))
    return 0


def _mode(args: argparse.Namespace) -> auth_pb2.ResultMode.ValueType:
    return auth_pb2.RESULT_MODE_SAFE if args.safe else auth_pb2.RESULT_MODE_FULL


def _key_create(args: argparse.Namespace) -> int:
    expires = None
    if args.expires_in_days:
        expires = Timestamp()
        expires.FromDatetime(datetime.now(UTC) + timedelta(days=args.expires_in_days))
    request = auth_pb2.CreateApiKeyRequest(
        company_id=args.company or "",
        name=args.name,
        role=auth_pb2.Role.Value(f"ROLE_{args.role}"),
        result_mode=_mode(args),
        expires_at=expires,
    )
    return _call(args, lambda stub: stub.CreateApiKey, request)


def _user_create(args: argparse.Namespace) -> int:
    password = os.environ.get("VIGIL_NEW_USER_PASSWORD") or getpass.getpass("password: ")
    request = auth_pb2.CreateUserRequest(
        company_id=args.company or "",
        email=args.email,
        password=password,
        role=auth_pb2.Role.Value(f"ROLE_{args.role}"),
        result_mode=_mode(args),
    )
    return _call(args, lambda stub: stub.CreateUser, request)


def _simple(
    method: Callable[[auth_pb2_grpc.AdminStub], grpc.UnaryUnaryMultiCallable[Request, Reply]],
    build: Callable[[argparse.Namespace], Request],
) -> Callable[[argparse.Namespace], int]:
    return lambda args: _call(args, method, build(args))


def add_admin_commands(admin: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Registers companies/keys/users/audit under `vigil admin`."""

    def command(
        name: str, help_text: str, handler: Callable[[argparse.Namespace], int]
    ) -> argparse.ArgumentParser:
        parser = admin.add_parser(name, help=help_text)
        parser.add_argument("--server", default=DEFAULT_SERVER, help="HOST:PORT")
        add_connection_arguments(parser)
        parser.set_defaults(handler=handler)
        return parser

    p = command(
        "company-create",
        "create a company",
        _simple(
            lambda stub: stub.CreateCompany, lambda a: auth_pb2.CreateCompanyRequest(name=a.name)
        ),
    )
    p.add_argument("name")
    command(
        "company-list",
        "list companies",
        _simple(lambda stub: stub.ListCompanies, lambda a: auth_pb2.ListCompaniesRequest()),
    )
    p = command("key-create", "create an API key (printed once)", _key_create)
    p.add_argument("--role", choices=ROLES, required=True)
    p.add_argument("--company", help="company id (default: your own)")
    p.add_argument("--name", default="")
    p.add_argument("--safe", action="store_true", help="bind the key to SAFE results (front ends)")
    p.add_argument("--expires-in-days", type=float)
    p = command(
        "key-list",
        "list API keys",
        _simple(
            lambda stub: stub.ListApiKeys,
            lambda a: auth_pb2.ListApiKeysRequest(company_id=a.company or ""),
        ),
    )
    p.add_argument("--company")
    p = command(
        "key-revoke",
        "revoke an API key",
        _simple(
            lambda stub: stub.RevokeApiKey,
            lambda a: auth_pb2.RevokeApiKeyRequest(api_key_id=a.key_id),
        ),
    )
    p.add_argument("key_id")
    p = command("user-create", "create a user ($VIGIL_NEW_USER_PASSWORD or a prompt)", _user_create)
    p.add_argument("email")
    p.add_argument("--role", choices=ROLES, required=True)
    p.add_argument("--company")
    p.add_argument("--safe", action="store_true")
    p = command(
        "user-list",
        "list users",
        _simple(
            lambda stub: stub.ListUsers,
            lambda a: auth_pb2.ListUsersRequest(company_id=a.company or ""),
        ),
    )
    p.add_argument("--company")
    p = command(
        "audit",
        "the audit log",
        _simple(
            lambda stub: stub.ListAuditEvents,
            lambda a: auth_pb2.ListAuditEventsRequest(company_id=a.company or ""),
        ),
    )
    p.add_argument("--company")
