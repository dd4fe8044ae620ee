"""TLS: the server's credentials (TLS or mutual TLS) from settings, or plaintext when allowed."""

from __future__ import annotations

import grpc

from vigil.server.settings import Settings


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
