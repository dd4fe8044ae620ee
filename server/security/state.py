"""The security state a running server holds: its token signer and its authenticator."""

from __future__ import annotations

from dataclasses import dataclass

from vigil.server.context import AppContext
from vigil.server.security.auth import Authenticator
from vigil.server.security.tokens import Signer, load_or_create_key
from vigil.server.settings import Settings


@dataclass
class Security:
    app: AppContext
    signer: Signer
    authenticator: Authenticator

    @property
    def settings(self) -> Settings:
        return self.app.settings


def build_security(app: AppContext) -> Security:
    signer = Signer(load_or_create_key(app.settings.resolved_signing_key_file))
    return Security(app, signer, Authenticator(app, signer))
