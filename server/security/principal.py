"""The caller of the current RPC, set by the auth interceptor and read by the servicers."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

from vigil.inference.errors import Unauthenticated


@dataclass(frozen=True)
class Principal:
    """Who calls: the credential's company and role, and the company it acts in."""

    company_id: str
    company_name: str
    role: str
    result_mode: str
    user_id: str = ""
    api_key_id: str = ""
    #: The company the call acts in (staff may name another one).
    acting_company_id: str = ""

    @property
    def actor(self) -> str:
        return f"user:{self.user_id}" if self.user_id else f"key:{self.api_key_id}"

    @property
    def safe(self) -> bool:
        return self.result_mode == "SAFE"


CURRENT: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "principal", default=None
)


def current_principal() -> Principal:
    principal = CURRENT.get()
    if principal is None:
        raise Unauthenticated("this call needs a credential")
    return principal


def acting_company() -> str:
    """The company the current call acts in: its credential's, or the one staff named."""
    principal = current_principal()
    return principal.acting_company_id or principal.company_id
