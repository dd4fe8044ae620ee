"""The security pieces a server holds: the token signer, the authenticator, TLS credentials."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

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


class InsecureConfiguration(Exception):
    """Credentials would travel in plaintext and the operator did not allow it."""


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS (or mutual TLS) credentials from settings; None for plaintext, when allowed."""
    if settings.tls:
        assert settings.tls_cert_file is not None and settings.tls_key_file is not None
        chain = settings.tls_cert_file.read_bytes()
        key = settings.tls_key_file.read_bytes()
        client_ca = (
            settings.tls_client_ca_file.read_bytes() if settings.tls_client_ca_file else None
        )
        return grpc.ssl_server_credentials(
            [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
        )
    if settings.tls_cert_file or settings.tls_key_file or settings.tls_client_ca_file:
        raise InsecureConfiguration("TLS needs both VIGIL_TLS_CERT_FILE and VIGIL_TLS_KEY_FILE")
    if not settings.allow_plaintext:
        raise InsecureConfiguration(
            "refusing to serve credentials over plaintext: set VIGIL_TLS_CERT_FILE and "
            "VIGIL_TLS_KEY_FILE, or VIGIL_ALLOW_PLAINTEXT=true for local use"
        )
    return None
