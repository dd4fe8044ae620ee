"""`vigil admin …` commands that call the Admin API: companies, users, API keys, audit."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from vigil.client.commands import (
    DEFAULT_SERVER,
    add_connection_arguments,
    connection_of,
    contract_json,
)
from vigil.client.errors import VigilRpcError
from vigil.v1 import auth_pb2, auth_pb2_grpc

Request = TypeVar("Request")
Reply = TypeVar("Reply", bound=Message)

COMPANY_HELP = "company name or id (default: your own)"
ROLES = [name.removeprefix("ROLE_") for name in auth_pb2.Role.keys()[1:]]


class _Failed(Exception):
    """A call failed; its message is printed on stderr (exit 1)."""


def _company_id(
    stub: auth_pb2_grpc.AdminStub, args: argparse.Namespace, metadata: tuple[tuple[str, str], ...]
) -> str:
    """``--company`` as an id: a company's name is looked up (ListCompanies, ADMIN only; for
    others the value is passed on as given, and the server checks it)."""
    wanted = getattr(args, "company", None) or ""
    if not wanted:
        return ""
    try:
        companies = stub.ListCompanies(
            auth_pb2.ListCompaniesRequest(), metadata=metadata, timeout=args.timeout
        ).companies
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.PERMISSION_DENIED:
            return str(wanted)
        raise
    for company in companies:
        if wanted in (company.id, company.name):
            return company.id
    raise _Failed(f"NOT_FOUND: no company is named {wanted!r} or has that id")


def _call(
    args: argparse.Namespace,
    method: Callable[[auth_pb2_grpc.AdminStub], grpc.UnaryUnaryMultiCallable[Request, Reply]],
    build: Callable[[argparse.Namespace], Request],
) -> int:
    connection = connection_of(args)
    try:
        with connection.channel() as channel:
            stub = auth_pb2_grpc.AdminStub(channel)
            args.company_id = _company_id(stub, args, connection.metadata)
            reply = method(stub)(build(args), metadata=connection.metadata, timeout=args.timeout)
    except grpc.RpcError as error:
        failure = VigilRpcError.from_grpc(error)
        print(f"{failure.code}: {failure.message}", file=sys.stderr)
        return 1
    except _Failed as failed:
        print(str(failed), file=sys.stderr)
        return 1
    print(json.dumps(contract_json(reply), indent=2) if args.json else _human(reply))
    return 0


def _line(item: dict[str, Any]) -> str:
    """One record on one line: its plain fields as key=value (nested ones left out)."""
    return " ".join(
        f"{key}={value}" for key, value in item.items() if not isinstance(value, dict | list)
    )


def _human(reply: Message) -> str:
    """A list reply as a line per item; any other reply as its fields on one line."""
    data = contract_json(reply)
    lists = [value for value in data.values() if isinstance(value, list)]
    if len(data) <= 2 and lists:  # {items: [...]} or {items: [...], next_page_token: ...}
        return "\n".join(_line(item) for item in lists[0]) if lists[0] else "(none)"
    return _line(data)


def _mode(args: argparse.Namespace) -> auth_pb2.ResultMode.ValueType:
    return auth_pb2.RESULT_MODE_SAFE if args.safe else auth_pb2.RESULT_MODE_FULL


def _key_request(args: argparse.Namespace) -> auth_pb2.CreateApiKeyRequest:
    expires = None
    if args.expires_in_days:
        expires = Timestamp()
        expires.FromDatetime(datetime.now(UTC) + timedelta(days=args.expires_in_days))
    request = auth_pb2.CreateApiKeyRequest(
        company_id=args.company_id,
        name=args.name,
        role=auth_pb2.Role.Value(f"ROLE_{args.role}"),
        result_mode=_mode(args),
        expires_at=expires,
    )
    return request


def _user_request(args: argparse.Namespace) -> auth_pb2.CreateUserRequest:
    password = os.environ.get("VIGIL_NEW_USER_PASSWORD") or getpass.getpass("password: ")
    request = auth_pb2.CreateUserRequest(
        company_id=args.company_id,
        email=args.email,
        password=password,
        role=auth_pb2.Role.Value(f"ROLE_{args.role}"),
        result_mode=_mode(args),
    )
    return request


def _simple(
    method: Callable[[auth_pb2_grpc.AdminStub], grpc.UnaryUnaryMultiCallable[Request, Reply]],
    build: Callable[[argparse.Namespace], Request],
) -> Callable[[argparse.Namespace], int]:
    return lambda args: _call(args, method, build)


def add_admin_commands(admin: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Registers companies/keys/users/audit under `vigil admin`."""

    def command(
        name: str, help_text: str, handler: Callable[[argparse.Namespace], int]
    ) -> argparse.ArgumentParser:
        parser = admin.add_parser(name, help=help_text)
        parser.add_argument("--server", default=DEFAULT_SERVER, help="HOST:PORT")
        parser.add_argument("--json", action="store_true", help="print the reply as JSON")
        parser.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
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
    p = command(
        "key-create",
        "create an API key (printed once)",
        _simple(lambda stub: stub.CreateApiKey, _key_request),
    )
    p.add_argument("--role", choices=ROLES, required=True)
    p.add_argument("--company", help=COMPANY_HELP)
    p.add_argument("--name", default="")
    p.add_argument("--safe", action="store_true", help="bind the key to SAFE results (front ends)")
    p.add_argument("--expires-in-days", type=float)
    p = command(
        "key-list",
        "list API keys",
        _simple(
            lambda stub: stub.ListApiKeys,
            lambda a: auth_pb2.ListApiKeysRequest(company_id=a.company_id),
        ),
    )
    p.add_argument("--company", help=COMPANY_HELP)
    p = command(
        "key-revoke",
        "revoke an API key",
        _simple(
            lambda stub: stub.RevokeApiKey,
            lambda a: auth_pb2.RevokeApiKeyRequest(api_key_id=a.key_id),
        ),
    )
    p.add_argument("key_id")
    p = command(
        "user-create",
        "create a user ($VIGIL_NEW_USER_PASSWORD or a prompt)",
        _simple(lambda stub: stub.CreateUser, _user_request),
    )
    p.add_argument("email")
    p.add_argument("--role", choices=ROLES, required=True)
    p.add_argument("--company", help=COMPANY_HELP)
    p.add_argument("--safe", action="store_true")
    p = command(
        "user-list",
        "list users",
        _simple(
            lambda stub: stub.ListUsers,
            lambda a: auth_pb2.ListUsersRequest(company_id=a.company_id),
        ),
    )
    p.add_argument("--company", help=COMPANY_HELP)
    p = command(
        "audit",
        "the audit log",
        _simple(
            lambda stub: stub.ListAuditEvents,
            lambda a: auth_pb2.ListAuditEventsRequest(company_id=a.company_id),
        ),
    )
    p.add_argument("--company", help=COMPANY_HELP)
