"""The asyncio Python client (same requests and results as the blocking one)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from typing import TypeVar

import grpc

from vigil.client import _requests as build
from vigil.client.aio_persistent import AsyncPersistentCalls
from vigil.client.connection import Connection
from vigil.client.errors import VigilRpcError
from vigil.client.results import DetectResult, LivenessResult, TemplateResult, VerifyResult
from vigil.client.video_results import StreamUpdate
from vigil.v1 import auth_pb2, auth_pb2_grpc, instant_pb2, instant_pb2_grpc

T = TypeVar("T")
Request = TypeVar("Request")
Reply = TypeVar("Reply")


class AsyncVigilClient(AsyncPersistentCalls):
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
        self._verdicts = auth_pb2_grpc.VerdictsStub(self._channel)
        self._persistent_stubs()

    async def _call(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[Request, Reply],
        request: Request,
        convert: Callable[[Reply], T],
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

    async def stream_liveness(
        self,
        frames: Iterable[tuple[bytes, float]],
        camera_label: str = "",
        device: str = "",
        require_single_face: bool = False,
    ) -> AsyncIterator[StreamUpdate]:
        """Send (encoded frame, capture time ms) as they come; yields updates, the last final."""
        requests = build.stream_requests(frames, camera_label, device, require_single_face)
        call = self._stub.StreamLiveness(requests, timeout=self.timeout, metadata=self._metadata)
        try:
            async for update in call:
                yield StreamUpdate.from_proto(update)
        except grpc.RpcError as error:
            raise VigilRpcError.from_grpc(error) from None
        finally:
            call.cancel()  # a consumer that stops early ends the stream

    async def server_info(self) -> instant_pb2.ServerInfo:
        return await self._call(
            self._stub.GetServerInfo, instant_pb2.GetServerInfoRequest(), lambda r: r
        )

    async def get_verdict(self, folder_id: str, analysis_id: str = "") -> auth_pb2.SignedVerdict:
        """The folder's (or one analysis's) final decision as a signed token to relay."""
        request = build.get_verdict(folder_id, analysis_id)
        return await self._call(self._verdicts.GetVerdict, request, lambda r: r)

    async def public_keys(self) -> str:
        """The JWK set (JSON) that verifies verdicts offline: see :func:`verify_verdict`."""
        return await self._call(
            self._verdicts.GetPublicKeys, build.public_keys(), lambda r: r.jwks_json
        )

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncVigilClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
