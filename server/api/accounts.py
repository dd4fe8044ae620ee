"""Auth (login, refresh, who am I), Admin (companies, users, keys, audit), Operators, Verdicts."""

from __future__ import annotations

from datetime import UTC, timedelta
from typing import Any

import grpc
from sqlmodel import Session

from vigil.inference.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from vigil.server.api import accounts_converters as conv
from vigil.server.api.folders_converters import analysis_message, timestamp
from vigil.server.security.permissions import GRANTABLE_BY_CLIENT_ADMIN
from vigil.server.security.principal import Principal, acting_company, current_principal
from vigil.server.security.tls import Security
from vigil.storage import analyses, credentials, folders
from vigil.storage.common import not_found, page_size
from vigil.storage.tables import utcnow
from vigil.v1 import auth_pb2, auth_pb2_grpc, folders_pb2


def _tokens(security: Security, user_id: str, session: Session) -> auth_pb2.TokenPair:
    settings = security.settings
    access, access_exp = security.signer.sign(
        {"sub": user_id}, timedelta(seconds=settings.access_token_ttl_s), "access"
    )
    refresh, refresh_exp = credentials.issue_refresh_token(
        user_id, timedelta(seconds=settings.refresh_token_ttl_s), session=session
    )
    return auth_pb2.TokenPair(
        access_token=access,
        access_expires_at=timestamp(access_exp),
        refresh_token=refresh,
        refresh_expires_at=timestamp(refresh_exp),
    )


class AuthServicer(auth_pb2_grpc.AuthServicer):
    def __init__(self, security: Security) -> None:
        self.security = security
        self.app = security.app

    async def Login(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.security.authenticator.check_lockout(context)

        def work(session: Session) -> auth_pb2.TokenPair:
            user = credentials.authenticate_password(
                request.email, request.password, session=session
            )
            return _tokens(self.security, user.id, session)

        try:
            return await self.app.db(work)
        except Exception:
            self.security.authenticator.record_failure(context)
            raise

    async def Refresh(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.security.authenticator.check_lockout(context)

        def work(session: Session) -> auth_pb2.TokenPair:
            user = credentials.use_refresh_token(request.refresh_token, session=session)
            return _tokens(self.security, user.id, session)

        try:
            return await self.app.db(work)
        except Exception:
            self.security.authenticator.record_failure(context)
            raise

    async def WhoAmI(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        p = current_principal()
        return auth_pb2.Principal(
            company_id=p.company_id,
            company_name=p.company_name,
            role=conv.role_value(p.role),
            result_mode=conv.result_mode_value(p.result_mode),
            user_id=p.user_id,
            api_key_id=p.api_key_id,
        )


def _target_company(principal: Principal, requested: str, session: Session) -> str:
    """The company an account request is about: ADMIN may name any; others only their own."""
    if not requested or requested == principal.acting_company_id:
        return principal.acting_company_id
    if principal.role == "ADMIN":
        return credentials.get_company(requested, session=session).id
    raise not_found("company", requested)


def _check_grant(principal: Principal, role: str, result_mode: str) -> None:
    if principal.role != "ADMIN" and role not in GRANTABLE_BY_CLIENT_ADMIN:
        raise PermissionDenied(f"role {principal.role} may not grant role {role}")
    if principal.safe and result_mode != "SAFE":
        raise PermissionDenied("a SAFE-only credential may only grant SAFE results")


class AdminServicer(auth_pb2_grpc.AdminServicer):
    def __init__(self, security: Security) -> None:
        self.security = security
        self.app = security.app

    async def CreateCompany(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        company = await self.app.db(lambda s: credentials.create_company(request.name, session=s))
        return conv.company_message(company)

    async def ListCompanies(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        rows = await self.app.db(lambda s: credentials.list_companies(session=s))
        return auth_pb2.ListCompaniesResponse(companies=[conv.company_message(c) for c in rows])

    async def CreateUser(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        principal = current_principal()
        role, mode = conv.role_name(request.role), conv.result_mode_name(request.result_mode)
        _check_grant(principal, role, mode)

        def work(session: Session) -> auth_pb2.User:
            company = _target_company(principal, request.company_id, session)
            user = credentials.create_user(
                request.email, request.password, role, mode, company_id=company, session=session
            )
            return conv.user_message(user)

        return await self.app.db(work)

    async def ListUsers(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        principal = current_principal()

        def work(session: Session) -> auth_pb2.ListUsersResponse:
            company = _target_company(principal, request.company_id, session)
            users = credentials.list_users(company_id=company, session=session)
            return auth_pb2.ListUsersResponse(users=[conv.user_message(u) for u in users])

        return await self.app.db(work)

    async def DisableUser(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        principal = current_principal()
        scope = None if principal.role == "ADMIN" else principal.acting_company_id

        def work(session: Session) -> auth_pb2.User:
            user = credentials.get_user(request.user_id, company_id=scope, session=session)
            user.disabled = True
            session.add(user)
            return conv.user_message(user)

        reply = await self.app.db(work)
        self.security.authenticator.forget()
        return reply

    async def CreateApiKey(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        principal = current_principal()
        role, mode = conv.role_name(request.role), conv.result_mode_name(request.result_mode)
        _check_grant(principal, role, mode)
        expires = (
            request.expires_at.ToDatetime(tzinfo=UTC) if request.HasField("expires_at") else None
        )
        if expires is not None and expires <= utcnow():
            raise InvalidArgument("expires_at is in the past")

        def work(session: Session) -> auth_pb2.ApiKey:
            company = _target_company(principal, request.company_id, session)
            key, secret = credentials.create_api_key(
                request.name,
                role,
                mode,
                company_id=company,
                created_by=principal.actor,
                expires_at=expires,
                session=session,
            )
            return conv.key_message(key, secret)

        return await self.app.db(work)

    async def ListApiKeys(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        principal = current_principal()

        def work(session: Session) -> auth_pb2.ListApiKeysResponse:
            company = _target_company(principal, request.company_id, session)
            keys = credentials.list_api_keys(company_id=company, session=session)
            return auth_pb2.ListApiKeysResponse(keys=[conv.key_message(k) for k in keys])

        return await self.app.db(work)

    async def RevokeApiKey(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        principal = current_principal()
        scope = None if principal.role == "ADMIN" else principal.acting_company_id
        key = await self.app.db(
            lambda s: credentials.revoke_api_key(request.api_key_id, company_id=scope, session=s)
        )
        self.security.authenticator.forget()
        return conv.key_message(key)

    async def ListAuditEvents(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        principal = current_principal()
        size = page_size(request.page_size)

        def work(session: Session) -> auth_pb2.ListAuditEventsResponse:
            company = _target_company(principal, request.company_id, session)
            rows, token = credentials.list_audit(
                company_id=company, page_size=size, page_token=request.page_token, session=session
            )
            return auth_pb2.ListAuditEventsResponse(
                events=[conv.audit_message(e) for e in rows], next_page_token=token
            )

        return await self.app.db(work)


class OperatorsServicer(auth_pb2_grpc.OperatorsServicer):
    def __init__(self, security: Security) -> None:
        self.app = security.app

    async def ResolveAnalysis(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        principal = current_principal()
        if request.resolution not in (
            folders_pb2.RESOLUTION_SUCCESS,
            folders_pb2.RESOLUTION_DECLINED,
        ):
            raise InvalidArgument(
                "an operator resolves to RESOLUTION_SUCCESS or RESOLUTION_DECLINED"
            )
        decision = folders_pb2.Resolution.Name(request.resolution).removeprefix("RESOLUTION_")

        def work(session: Session) -> folders_pb2.Analysis:
            row = analyses.get_analysis(
                request.analysis_id, company_id=principal.acting_company_id, session=session
            )
            if row.state != "FINISHED" or row.resolution != "OPERATOR_REQUIRED":
                raise FailedPrecondition(
                    f"analysis {row.id} is {row.state}/{row.resolution}, not awaiting an operator"
                )
            row.resolution = decision
            row.decided_by, row.decided_at = principal.actor, utcnow()
            row.decision_comment = request.comment[:2000]
            session.add(row)
            session.flush()
            analyses.refresh_folder_resolution(row.folder_id, session=session)
            return analysis_message(row)

        return await self.app.db(work)


class VerdictsServicer(auth_pb2_grpc.VerdictsServicer):
    def __init__(self, security: Security) -> None:
        self.security = security
        self.app = security.app

    async def GetVerdict(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        company = acting_company()

        def claims(session: Session) -> dict[str, Any]:
            folder = folders.get_folder(request.folder_id, company_id=company, session=session)
            resolution = folder.resolution
            if request.analysis_id:
                row = analyses.get_analysis(
                    request.analysis_id, company_id=company, session=session
                )
                if row.folder_id != folder.id:
                    raise not_found("analysis", request.analysis_id)
                resolution = None if row.state == "PROCESSING" else row.resolution
            if resolution in (None, "PROCESSING"):
                raise FailedPrecondition("the verdict is not final yet")
            return {
                "company": company,
                "folder": folder.id,
                "analysis": request.analysis_id or None,
                "resolution": resolution,
                "transaction_id": folder.meta.get("transaction_id"),
            }

        body = await self.app.db(claims)
        ttl = timedelta(seconds=self.security.settings.verdict_ttl_s)
        token, expires = self.security.signer.sign(body, ttl, "verdict")
        return auth_pb2.SignedVerdict(
            token=token, expires_at=timestamp(expires), key_id=self.security.signer.key_id
        )

    async def GetPublicKeys(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return auth_pb2.PublicKeys(jwks_json=self.security.signer.jwks_json())
