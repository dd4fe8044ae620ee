"""Authentication and authorisation of every call, in one interceptor.

The credential (``x-api-key`` or ``authorization: Bearer <access token>``) becomes a
:class:`Principal`; the permission table decides; the principal travels to the servicers in a
context variable; SAFE principals get redacted answers; each call on stored objects is audited.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
from sqlmodel import Session

from vigil.inference.errors import (
    NotFound,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
    VigilError,
)
from vigil.server import logs, rpc
from vigil.server.context import CALL_SCOPE, AppContext, CallScope
from vigil.server.security.permissions import PERMISSIONS, STAFF, needs_credential
from vigil.server.security.principal import CURRENT, Principal
from vigil.server.security.rate_limit import BoundedLRU, FailureTracker, TokenBuckets
from vigil.server.security.redaction import redact
from vigil.server.security.tokens import Signer
from vigil.server.shared_state import SharedState
from vigil.storage import credentials
from vigil.storage.tables import AuditEvent

log = logging.getLogger(__name__)

COMPANY_METADATA_KEY = "vigil-company"
#: Services whose calls touch no stored object and are not audited (the Instant API).
_NOT_AUDITED = ("/vigil.v1.Instant/", "/vigil.v1.Auth/WhoAmI", "/vigil.v1.Verdicts/GetPublicKeys")
_OBJECT_FIELDS = (
    ("folder_id", "folder"),
    ("media_id", "media"),
    ("analysis_id", "analysis"),
    ("webhook_id", "webhook"),
    ("api_key_id", "api_key"),
    ("user_id", "user"),
    ("collection", "collection"),
    ("name", "name"),
)


def _metadata(context: rpc.Context) -> dict[str, str]:
    values: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        values[key] = value if isinstance(value, str) else value.decode(errors="replace")
    return values


def _peer_host(context: rpc.Context) -> str:
    peer = context.peer() or ""
    return peer.rsplit(":", 1)[0] if peer.count(":") >= 1 else peer


class Authenticator:
    """Turns call metadata into a Principal; remembers recent lookups for a moment
    (``CACHE_S``, at most ``VIGIL_CREDENTIAL_CACHE_SIZE`` credentials). Lookups run on the
    database threads reserved for them, so they never wait behind a company's queries.

    ``clock`` (seconds, monotonic) times the credential cache, the lockout and the rate limits.

    With a shared Redis (``app.shared``), the lockout and rate limits are counted there, and a
    cached credential is used only while the replicas' credential generation is the one it was
    cached under (a revocation on any replica bumps it); while Redis is unreachable, lockouts and
    limits are counted here and no credential is taken from the cache.
    """

    CACHE_S = 2.0

    def __init__(
        self, app: AppContext, signer: Signer, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.app = app
        self.signer = signer
        settings = app.settings
        max_keys = settings.rate_limit_max_keys
        self.failures = FailureTracker(
            settings.auth_max_failures, settings.auth_lockout_s, clock, max_keys
        )
        self.buckets = TokenBuckets(
            settings.rate_limit_per_s, settings.rate_limit_burst, clock, max_keys
        )
        self._clock = clock
        self._cache: BoundedLRU[str, tuple[float, Principal, int | None]] = BoundedLRU(
            "credentials", settings.credential_cache_size
        )
        self.shared: SharedState | None = app.shared
        if self.shared is not None:
            self.shared.on_revoked = self._cache.clear

    @property
    def clock(self) -> Callable[[], float]:
        return self._clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        """Replace the clock of the cache, the lockout and the rate limits together."""
        self._clock = clock
        self.failures.clock = clock
        self.buckets.clock = clock

    def check_lockout(self, context: rpc.Context) -> None:
        remaining = self.failures.locked_for(_peer_host(context))
        if remaining > 0:
            raise RateLimited(
                f"too many failed authentications from this address; retry in {remaining:.0f} s",
                remaining,
            )

    def record_failure(self, context: rpc.Context) -> None:
        host = _peer_host(context)
        self.failures.fail(host)
        shared = self.shared
        if shared is None or not shared.up:
            return
        settings = self.app.settings

        async def count() -> None:
            with contextlib.suppress(Exception):  # Redis down: counted on this replica only
                await shared.fail(host, settings.auth_max_failures, settings.auth_lockout_s)

        task = asyncio.get_running_loop().create_task(count())
        self.app.background_writes.add(task)
        task.add_done_callback(self.app.background_writes.discard)

    def forget(self) -> None:
        """Drop cached credentials (after a revocation or a user is disabled): here, and with a
        shared Redis on every replica before this returns."""
        self._cache.clear()
        if self.shared is not None:
            self.shared.revoke()

    async def _gate(self, context: rpc.Context) -> int | None:
        """Refuse a locked-out address; the credential generation (None: use no cache)."""
        if self.shared is None:
            self.check_lockout(context)
            return 0
        if not self.shared.up:  # until the health watch reaches Redis again: no per-call wait
            self.check_lockout(context)
            return None
        settings = self.app.settings
        try:
            remaining, generation = await self.shared.gate(
                _peer_host(context), settings.auth_max_failures, settings.auth_lockout_s
            )
        except Exception:  # Redis down: this replica's lockouts, no cache
            self.check_lockout(context)
            return None
        if remaining > 0:
            raise RateLimited(
                f"too many failed authentications from this address; retry in {remaining:.0f} s",
                remaining,
            )
        return generation

    async def _take(self, actor: str) -> float:
        if self.shared is not None and self.shared.up:
            settings = self.app.settings
            try:
                return await self.shared.take(
                    actor, settings.rate_limit_per_s, settings.rate_limit_burst
                )
            except Exception:
                pass  # Redis down: this replica's buckets
        return self.buckets.take(actor)

    async def authenticate(self, context: rpc.Context) -> Principal:
        metadata = _metadata(context)
        generation = await self._gate(context)
        key = metadata.get("x-api-key", "")
        bearer = metadata.get("authorization", "")
        if not key and not bearer:
            raise Unauthenticated(
                "this call needs a credential: x-api-key or authorization: Bearer"
            )
        try:
            principal = await self._principal(key, bearer, generation)
        except Unauthenticated:
            self.record_failure(context)
            raise
        principal = await self._acting(principal, metadata.get(COMPANY_METADATA_KEY, ""))
        wait = await self._take(principal.actor)
        if wait > 0:
            raise RateLimited(f"rate limit of this credential reached; retry in {wait:.2f} s", wait)
        return principal

    async def _principal(self, key: str, bearer: str, generation: int | None) -> Principal:
        cache_key = key or bearer
        cached = self._cache.get(cache_key) if generation is not None else None
        if (
            cached is not None
            and self._clock() - cached[0] < self.CACHE_S
            and cached[2] == generation
        ):
            return cached[1]
        if key:
            principal = await self.app.auth_db(lambda s: self._from_key(key, s))
        else:
            scheme, _, token = bearer.partition(" ")
            if scheme.lower() != "bearer" or not token:
                raise Unauthenticated("authorization must be 'Bearer <access token>'")
            claims = self.signer.verify(token.strip(), "access")
            principal = await self.app.auth_db(lambda s: self._from_claims(claims, s))
        if generation is not None:
            self._cache.put(cache_key, (self._clock(), principal, generation))
        return principal

    @staticmethod
    def _from_key(presented: str, session: Session) -> Principal:
        row = credentials.authenticate_key(presented, session=session)
        credentials.touch_key(row.id, session=session)
        company = credentials.get_company(row.company_id, session=session)
        return Principal(row.company_id, company.name, row.role, row.result_mode, api_key_id=row.id)

    @staticmethod
    def _from_claims(claims: dict[str, Any], session: Session) -> Principal:
        try:
            user = credentials.get_user(claims["sub"], company_id=None, session=session)
        except (KeyError, NotFound):
            raise Unauthenticated("the token's user no longer exists") from None
        if user.disabled:
            raise Unauthenticated("the token's user is disabled")
        company = credentials.get_company(user.company_id, session=session)
        return Principal(
            user.company_id, company.name, user.role, user.result_mode, user_id=user.id
        )

    async def _acting(self, principal: Principal, named: str) -> Principal:
        """Staff may act in another company by naming it; everyone else acts in their own."""
        acting = principal.company_id
        if named and named != principal.company_name:
            if principal.role not in STAFF:
                raise PermissionDenied("only ADMIN and OPERATOR may act in another company")
            # Never created here: a typo must not make a company (Admin.CreateCompany does).
            acting = await self.app.auth_db(
                lambda s: credentials.company_by_name(named, session=s).id
            )
        return Principal(**{**principal.__dict__, "acting_company_id": acting})


def _reset(var: contextvars.ContextVar[Any], token: contextvars.Token[Any]) -> None:
    """Undo ``var.set``. A stream the server abandons (its client gone at shutdown) is closed
    later by the event loop in another context, where the token is foreign and there is nothing
    to undo: the call must still end (and be audited) rather than raise ValueError."""
    with contextlib.suppress(ValueError):
        var.reset(token)


def authorize(principal: Principal, method: str) -> None:
    rule = PERMISSIONS.get(method)
    if rule is None:
        raise PermissionDenied(f"{method} is not open to any role")
    if principal.role not in rule.roles:
        raise PermissionDenied(f"role {principal.role} may not call {method.rsplit('/', 1)[-1]}")
    if principal.safe and not rule.safe:
        raise PermissionDenied(
            f"{method.rsplit('/', 1)[-1]} returns biometric detail; this credential is SAFE-only"
        )


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, app: AppContext, authenticator: Authenticator) -> None:
        self.app = app
        self.authenticator = authenticator

    async def intercept_service(
        self,
        continuation: rpc.Continuation,
        details: grpc.HandlerCallDetails,
    ) -> rpc.Handler | None:
        handler = await continuation(details)
        method = details.method
        if handler is None or not needs_credential(method):
            return handler
        return rpc.guarded(handler, method, self._guard)

    @contextlib.asynccontextmanager
    async def _guard(
        self, method: str, request: rpc.Request, context: rpc.Context
    ) -> AsyncIterator[rpc.Transform]:
        """Authenticate and authorise the call, act as its principal, redact for SAFE ones."""
        principal = await self.authenticator.authenticate(context)
        authorize(principal, method)
        with self._acting_as(principal, method, request, context):
            yield redact if principal.safe else rpc.unchanged

    @contextlib.contextmanager
    def _acting_as(
        self, principal: Principal, method: str, request: rpc.Request, context: rpc.Context
    ) -> Iterator[None]:
        """The principal is current for the call, its database work counts against its company
        until its deadline; its outcome is audited when it ends."""
        remaining = context.time_remaining()
        scope = CallScope(
            principal.acting_company_id or principal.company_id,
            None if remaining is None else time.monotonic() + remaining,
        )
        token = CURRENT.set(principal)
        scope_token = CALL_SCOPE.set(scope)
        logs.note_company(principal.company_name)  # for the call's access line
        status = "OK"
        try:
            yield
        except VigilError as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = "CANCELLED"
            raise
        except Exception:
            status = "INTERNAL"
            raise
        finally:
            _reset(CALL_SCOPE, scope_token)
            _reset(CURRENT, token)
            self._audit(principal, method, request, status)

    def _audit(self, principal: Principal, method: str, request: rpc.Request, status: str) -> None:
        """Record who did what to which object, after the call, off the call's path."""
        if method.startswith(_NOT_AUDITED):
            return
        object_type = object_id = ""
        if hasattr(request, "DESCRIPTOR"):  # unary requests name their object; streams don't
            for field, kind in _OBJECT_FIELDS:
                value = getattr(request, field, "")
                if isinstance(value, str) and value:
                    object_type, object_id = kind, value[:64]
                    break
        event = AuditEvent(
            company_id=principal.acting_company_id or principal.company_id,
            actor=principal.actor,
            method=method[:100],
            object_type=object_type,
            object_id=object_id,
            status=status,
        )

        async def write() -> None:
            CALL_SCOPE.set(None)  # written after the call: not under its deadline or share
            try:
                await self.app.db(lambda s: credentials.record_audit(event, session=s))
            except Exception:
                log.exception("cannot write an audit event for %s", method)

        task = asyncio.get_running_loop().create_task(write())
        self.app.background_writes.add(task)
        task.add_done_callback(self.app.background_writes.discard)
