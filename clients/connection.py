"""How the SDK connects: the credential it sends and the channel (plaintext, TLS or mutual TLS).

Shared by the blocking and the asyncio clients and by the command line.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc

from vigil.client._requests import CHANNEL_OPTIONS

Request = TypeVar("Request")
Call = TypeVar("Call")


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
    def from_env(
        cls,
        target: str | None = None,
        *,
        api_key: str | None = None,
        access_token: str | None = None,
        tls_ca: Path | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
    ) -> Connection:
        """Each value given (not None) wins over its environment variable."""
        env = os.environ

        def path(name: str) -> Path | None:
            return Path(env[name]) if env.get(name) else None

        return cls(
            target=target or env.get("VIGIL_SERVER", "localhost:50051"),
            api_key=api_key if api_key is not None else env.get("VIGIL_API_KEY") or None,
            access_token=(
                access_token if access_token is not None else env.get("VIGIL_ACCESS_TOKEN") or None
            ),
            tls_ca=tls_ca if tls_ca is not None else path("VIGIL_TLS_CA"),
            tls_cert=tls_cert if tls_cert is not None else path("VIGIL_TLS_CERT"),
            tls_key=tls_key if tls_key is not None else path("VIGIL_TLS_KEY"),
        )

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


@dataclass(frozen=True)
class _CallDetails(grpc.ClientCallDetails):
    """A call's details, as ``_Metadata`` passes them on (grpc reads these six attributes)."""

    method: str
    timeout: float | None
    metadata: tuple[tuple[str, str | bytes], ...] | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class _Metadata(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds fixed metadata (the credential) to every call of a blocking channel."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata

    def _details(self, details: grpc.ClientCallDetails) -> _CallDetails:
        return _CallDetails(
            method=details.method,
            timeout=details.timeout,
            metadata=tuple(details.metadata or ()) + self.metadata,
            credentials=details.credentials,
            wait_for_ready=details.wait_for_ready,
            compression=details.compression,
        )

    # Each passes on what the continuation returns (a call future, or a call iterator).
    def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Request], Call],
        client_call_details: grpc.ClientCallDetails,
        request: Request,
    ) -> Call:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Request], Call],
        client_call_details: grpc.ClientCallDetails,
        request: Request,
    ) -> Call:
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Iterator[Request]], Call],
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Iterator[Request],
    ) -> Call:
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Iterator[Request]], Call],
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Iterator[Request],
    ) -> Call:
        return continuation(self._details(client_call_details), request_iterator)


def authenticated_channel(connection: Connection) -> grpc.Channel:
    """A blocking channel whose every call carries the connection's credential (for raw stubs)."""
    return grpc.intercept_channel(connection.channel(), _Metadata(connection.metadata))
