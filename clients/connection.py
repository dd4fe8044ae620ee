"""How the SDK connects: the credential it sends and the channel (plaintext, TLS or mutual TLS).

Shared by the blocking and the asyncio clients and by the command line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from vigil.client._requests import CHANNEL_OPTIONS


@dataclass(frozen=True)
class Connection:
    """Where and how to reach vigil. Values default to the ``VIGIL_*`` environment variables."""

    target: str = "localhost:50051"
    #: A service's API key (sent as ``x-api-key``).
    api_key: str | None = None
    #: A person's access token (sent as ``authorization: Bearer …``).
    access_token: str | None = None
    #: PEM CA that signed the server's certificate: turns TLS on.
    tls_ca: Path | None = None
    #: Client certificate and key for mutual TLS.
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @classmethod
    def from_env(cls, target: str | None = None, **overrides: Any) -> Connection:
        env = os.environ
        values: dict[str, Any] = {
            "target": target or env.get("VIGIL_SERVER", "localhost:50051"),
            "api_key": env.get("VIGIL_API_KEY") or None,
            "access_token": env.get("VIGIL_ACCESS_TOKEN") or None,
            "tls_ca": Path(env["VIGIL_TLS_CA"]) if env.get("VIGIL_TLS_CA") else None,
            "tls_cert": Path(env["VIGIL_TLS_CERT"]) if env.get("VIGIL_TLS_CERT") else None,
            "tls_key": Path(env["VIGIL_TLS_KEY"]) if env.get("VIGIL_TLS_KEY") else None,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        if self.api_key:
            return (("x-api-key", self.api_key),)
        if self.access_token:
            return (("authorization", f"Bearer {self.access_token}"),)
        return ()

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        if self.tls_ca is None and self.tls_cert is None:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=self.tls_ca.read_bytes() if self.tls_ca else None,
            private_key=self.tls_key.read_bytes() if self.tls_key else None,
            certificate_chain=self.tls_cert.read_bytes() if self.tls_cert else None,
        )

    def channel(self) -> grpc.Channel:
        credentials = self.channel_credentials()
        if credentials is None:
            return grpc.insecure_channel(self.target, options=CHANNEL_OPTIONS)
        return grpc.secure_channel(self.target, credentials, options=CHANNEL_OPTIONS)

    def aio_channel(self) -> grpc.aio.Channel:
        credentials = self.channel_credentials()
        if credentials is None:
            return grpc.aio.insecure_channel(self.target, options=CHANNEL_OPTIONS)
        return grpc.aio.secure_channel(self.target, credentials, options=CHANNEL_OPTIONS)


class _Metadata(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds fixed metadata (the credential) to every call of a blocking channel."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata

    def _details(self, details: Any) -> Any:
        merged = tuple(details.metadata or ()) + self.metadata
        return details._replace(metadata=merged)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


def authenticated_channel(connection: Connection) -> grpc.Channel:
    """A blocking channel whose every call carries the connection's credential (for raw stubs)."""
    return grpc.intercept_channel(connection.channel(), _Metadata(connection.metadata))
