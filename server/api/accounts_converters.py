"""Accounts (companies, users, keys, audit) ↔ protobuf, and enum validation for them."""

from __future__ import annotations

from vigil.inference.errors import InvalidArgument
from vigil.server.api.converters import timestamp
from vigil.storage.tables import ApiKey, AuditEvent, Company, User
from vigil.v1 import auth_pb2


def role_name(value: int) -> str:
    if value not in auth_pb2.Role.values() or value == auth_pb2.ROLE_UNSPECIFIED:
        raise InvalidArgument(
            f"role {value} is not a role; use one of {', '.join(auth_pb2.Role.keys()[1:])}"
        )
    return auth_pb2.Role.Name(auth_pb2.Role.ValueType(value)).removeprefix("ROLE_")


def result_mode_name(value: int) -> str:
    """SAFE or FULL; unspecified means FULL (a front-end key must ask for SAFE)."""
    if value not in auth_pb2.ResultMode.values():
        raise InvalidArgument(f"result_mode {value} is not a result mode")
    if value == auth_pb2.RESULT_MODE_UNSPECIFIED:
        return "FULL"
    return auth_pb2.ResultMode.Name(auth_pb2.ResultMode.ValueType(value)).removeprefix(
        "RESULT_MODE_"
    )


def role_value(name: str) -> auth_pb2.Role.ValueType:
    return auth_pb2.Role.Value(f"ROLE_{name}")


def result_mode_value(name: str) -> auth_pb2.ResultMode.ValueType:
    return auth_pb2.ResultMode.Value(f"RESULT_MODE_{name}")


def company_message(company: Company) -> auth_pb2.Company:
    return auth_pb2.Company(
        id=company.id, name=company.name, created_at=timestamp(company.created_at)
    )


def user_message(user: User) -> auth_pb2.User:
    return auth_pb2.User(
        id=user.id,
        company_id=user.company_id,
        email=user.email,
        role=role_value(user.role),
        result_mode=result_mode_value(user.result_mode),
        disabled=user.disabled,
        created_at=timestamp(user.created_at),
    )


def key_message(key: ApiKey, secret: str = "") -> auth_pb2.ApiKey:
    return auth_pb2.ApiKey(
        id=key.id,
        company_id=key.company_id,
        name=key.name,
        role=role_value(key.role),
        result_mode=result_mode_value(key.result_mode),
        key=secret,
        prefix=f"vk_{key.prefix}",
        created_at=timestamp(key.created_at),
        expires_at=timestamp(key.expires_at),
        revoked_at=timestamp(key.revoked_at),
        last_used_at=timestamp(key.last_used_at),
    )


def audit_message(event: AuditEvent) -> auth_pb2.AuditEvent:
    return auth_pb2.AuditEvent(
        id=event.id,
        at=timestamp(event.at),
        company_id=event.company_id,
        actor=event.actor,
        method=event.method,
        object_type=event.object_type,
        object_id=event.object_id,
        status=event.status,
    )
