"""Auth (login, refresh, who am I), Admin (companies, users, keys, audit), Operators, Verdicts."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, timedelta

from sqlmodel import Session

from vigil.inference.errors import InvalidArgument, PermissionDenied, Unauthenticated
from vigil.server.api import accounts_converters as conv
from vigil.server.api.converters import timestamp
from vigil.server.api.folders_converters import analysis_message
from vigil.server.rpc import Context
from vigil.server.security.permissions import GRANTABLE_BY_CLIENT_ADMIN
from vigil.server.security.principal import Principal, acting_company, current_principal
from vigil.server.security.state import Security
from vigil.storage import analyses, credentials
from vigil.storage.common import not_found, page_size
from vigil.storage.results import Resolution
from vigil.storage.tables import Analysis, Folder, utcnow
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

    async def Login(self, request: auth_pb2.LoginRequest, context: Context) -> auth_pb2.TokenPair:
        def work(session: Session) -> auth_pb2.TokenPair:
            user = credentials.authenticate_password(
                request.email, request.password, session=session
            )
            return _tokens(self.security, user.id, session)

        return await self._counting_failures(work, context)

    async def Refresh(
        self, request: auth_pb2.RefreshRequest, context: Context
    ) -> auth_pb2.TokenPair:
        def work(session: Session) -> auth_pb2.TokenPair:
            user = credentials.use_refresh_token(request.refresh_token, session=session)
            return _tokens(self.security, user.id, session)

        return await self._counting_failures(work, context)

    async def _counting_failures(
        self, work: Callable[[Session], auth_pb2.TokenPair], context: Context
    ) -> auth_pb2.TokenPair:
        """Run a credential check; a refused credential (only that: not a database outage)
        counts towards the caller's address lockout."""
        authenticator = self.security.authenticator
        authenticator.check_lockout(context)
        try:
            return await self.app.db(work)
        except Unauthenticated:
            authenticator.record_failure(context)
            raise

    async def WhoAmI(self, request: auth_pb2.WhoAmIRequest, context: Context) -> auth_pb2.Principal:
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


def _scope(principal: Principal) -> str | None:
    """The company whose users and keys the caller may change (None: any, for ADMIN)."""
    return None if principal.role == "ADMIN" else principal.acting_company_id


def _check_grant(principal: Principal, role: str, result_mode: str) -> None:
    if principal.role != "ADMIN" and role not in GRANTABLE_BY_CLIENT_ADMIN:
        raise PermissionDenied(f"role {principal.role} may not grant role {role}")
    if principal.safe and result_mode != "SAFE":
        raise PermissionDenied("a SAFE-only credential may only grant SAFE results")


class AdminServicer(auth_pb2_grpc.AdminServicer):
    def __init__(self, security: Security) -> None:
        self.security = security
        self.app = security.app

    async def CreateCompany(
        self, request: auth_pb2.CreateCompanyRequest, context: Context
    ) -> auth_pb2.Company:
        company = await self.app.db(lambda s: credentials.create_company(request.name, session=s))
        return conv.company_message(company)

    async def ListCompanies(
        self, request: auth_pb2.ListCompaniesRequest, context: Context
    ) -> auth_pb2.ListCompaniesResponse:
        rows = await self.app.db(lambda s: credentials.list_companies(session=s))
        return auth_pb2.ListCompaniesResponse(companies=[conv.company_message(c) for c in rows])

    async def CreateUser(
        self, request: auth_pb2.CreateUserRequest, context: Context
    ) -> auth_pb2.User:
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

    async def ListUsers(
        self, request: auth_pb2.ListUsersRequest, context: Context
    ) -> auth_pb2.ListUsersResponse:
        principal = current_principal()

        def work(session: Session) -> auth_pb2.ListUsersResponse:
            company = _target_company(principal, request.company_id, session)
            users = credentials.list_users(company_id=company, session=session)
            return auth_pb2.ListUsersResponse(users=[conv.user_message(u) for u in users])

        return await self.app.db(work)

    async def DisableUser(
        self, request: auth_pb2.DisableUserRequest, context: Context
    ) -> auth_pb2.User:
        scope = _scope(current_principal())
        user = await self.app.db(
            lambda s: credentials.disable_user(request.user_id, company_id=scope, session=s)
        )
        self.security.authenticator.forget()
        return conv.user_message(user)

    async def CreateApiKey(
        self, request: auth_pb2.CreateApiKeyRequest, context: Context
    ) -> auth_pb2.ApiKey:
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

    async def ListApiKeys(
        self, request: auth_pb2.ListApiKeysRequest, context: Context
    ) -> auth_pb2.ListApiKeysResponse:
        principal = current_principal()

        def work(session: Session) -> auth_pb2.ListApiKeysResponse:
            company = _target_company(principal, request.company_id, session)
            keys = credentials.list_api_keys(company_id=company, session=session)
            return auth_pb2.ListApiKeysResponse(keys=[conv.key_message(k) for k in keys])

        return await self.app.db(work)

    async def RevokeApiKey(
        self, request: auth_pb2.RevokeApiKeyRequest, context: Context
    ) -> auth_pb2.ApiKey:
        scope = _scope(current_principal())
        key = await self.app.db(
            lambda s: credentials.revoke_api_key(request.api_key_id, company_id=scope, session=s)
        )
        self.security.authenticator.forget()
        return conv.key_message(key)

    async def ListAuditEvents(
        self, request: auth_pb2.ListAuditEventsRequest, context: Context
    ) -> auth_pb2.ListAuditEventsResponse:
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


OPERATOR_DECISIONS = {
    folders_pb2.RESOLUTION_SUCCESS: Resolution.SUCCESS,
    folders_pb2.RESOLUTION_DECLINED: Resolution.DECLINED,
}


class OperatorsServicer(auth_pb2_grpc.OperatorsServicer):
    def __init__(self, security: Security) -> None:
        self.app = security.app

    async def ResolveAnalysis(
        self, request: auth_pb2.ResolveAnalysisRequest, context: Context
    ) -> folders_pb2.Analysis:
        principal = current_principal()
        decision = OPERATOR_DECISIONS.get(request.resolution)
        if decision is None:
            raise InvalidArgument(
                "an operator resolves to RESOLUTION_SUCCESS or RESOLUTION_DECLINED"
            )
        row = await self.app.db(
            lambda s: analyses.resolve_by_operator(
                request.analysis_id,
                decision,
                request.comment,
                actor=principal.actor,
                company_id=principal.acting_company_id,
                session=s,
            )
        )
        return analysis_message(row)


class VerdictsServicer(auth_pb2_grpc.VerdictsServicer):
    def __init__(self, security: Security) -> None:
        self.security = security
        self.app = security.app

    async def GetVerdict(
        self, request: auth_pb2.GetVerdictRequest, context: Context
    ) -> auth_pb2.SignedVerdict:
        company, analysis_id = acting_company(), request.analysis_id or None

        def work(session: Session) -> tuple[Folder, Resolution, list[Analysis]]:
            folder, resolution = analyses.final_resolution(
                request.folder_id, analysis_id, company_id=company, session=session
            )
            rows = analyses.folder_analyses(folder.id, company_id=company, session=session)
            return folder, resolution, [r for r in rows if analysis_id in (None, r.id)]

        folder, resolution, covered = await self.app.db(work)
        claims = {
            "company": company,
            "folder": folder.id,
            # A verifier cannot miss which one it holds: verify_verdict refuses an analysis's
            # verdict unless it asks for that analysis (a passing analysis of a DECLINED folder).
            "scope": "analysis" if analysis_id else "folder",
            "analysis": analysis_id,
            "resolution": resolution,
            "folder_resolution": folder.resolution,
            "transaction_id": folder.meta.get("transaction_id"),
            # The thresholds each decision used, and which were the caller's rather than the
            # server's (only a credential that sees scores may choose one).
            "thresholds": {row.id: dict(row.thresholds) for row in covered},
            "caller_thresholds": sorted(row.id for row in covered if "threshold" in row.params),
        }
        ttl = timedelta(seconds=self.security.settings.verdict_ttl_s)
        token, expires = self.security.signer.sign(claims, ttl, "verdict")
        return auth_pb2.SignedVerdict(
            token=token, expires_at=timestamp(expires), key_id=self.security.signer.key_id
        )

    async def GetPublicKeys(
        self, request: auth_pb2.GetPublicKeysRequest, context: Context
    ) -> auth_pb2.PublicKeys:
        return auth_pb2.PublicKeys(jwks_json=self.security.signer.jwks_json())
