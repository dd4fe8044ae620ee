"""The asyncio Python client (same requests and results as the blocking one)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from clients import _requests as build
from clients.connection import Connection
from clients.errors import VigilRpcError
from clients.results import DetectResult, LivenessResult, TemplateResult, VerifyResult
from vigil.v1 import instant_pb2, instant_pb2_grpc

T = TypeVar("T")


class AsyncVigilClient:
    """``async with AsyncVigilClient("localhost:50051") as client: await client.liveness(...)``."""

    def __init__(
        self,
        target: str | None = None,
        timeout: float | None = 30.0,
        *,
        api_key: str | None = None,
        access_token: str | None = None,
        connection: Connection | None = None,
    ) -> None:
        """``target`` and the credential default to VIGIL_SERVER / VIGIL_API_KEY; pass a
        :class:`Connection` for TLS or mutual TLS."""
        self.timeout = timeout
        self.connection = connection or Connection.from_env(
            target, api_key=api_key, access_token=access_token
        )
        self._metadata = self.connection.metadata
        self._channel = self.connection.aio_channel()
        self._stub = instant_pb2_grpc.InstantStub(self._channel)

    async def _call(
        self, method: Callable[..., Awaitable[Any]], request: Any, convert: Callable[[Any], T]
    ) -> T:
        try:
            return convert(await method(request, timeout=self.timeout, metadata=self._metadata))
        except grpc.RpcError as error:
            raise VigilRpcError.from_grpc(error) from None

    async def detect(self, image: build.ImageLike) -> DetectResult:
        return await self._call(self._stub.Detect, build.detect(image), DetectResult.from_proto)

    async def liveness(
        self, image: build.ImageLike, require_single_face: bool = False
    ) -> LivenessResult:
        request = build.liveness(image, require_single_face)
        return await self._call(self._stub.CheckLiveness, request, LivenessResult.from_proto)

    async def template(
        self, image: build.ImageLike, require_single_face: bool = False
    ) -> TemplateResult:
        request = build.template(image, require_single_face)
        return await self._call(self._stub.ExtractTemplate, request, TemplateResult.from_proto)

    async def verify(
        self, a: build.FaceLike, b: build.FaceLike, require_single_face: bool = False
    ) -> VerifyResult:
        request = build.verify(a, b, require_single_face)
        return await self._call(self._stub.Verify, request, VerifyResult.from_proto)

    async def server_info(self) -> instant_pb2.ServerInfo:
        return await self._call(
            self._stub.GetServerInfo, instant_pb2.GetServerInfoRequest(), lambda r: r
        )

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncVigilClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
