"""The blocking Python client."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import grpc

from vigil.client import _requests as build
from vigil.client.connection import Connection
from vigil.client.errors import VigilRpcError
from vigil.client.persistent import PersistentCalls
from vigil.client.results import DetectResult, LivenessResult, TemplateResult, VerifyResult
from vigil.client.video_results import StreamUpdate
from vigil.v1 import auth_pb2, auth_pb2_grpc, instant_pb2, instant_pb2_grpc

T = TypeVar("T")
Request = TypeVar("Request")
Reply = TypeVar("Reply")


class VigilClient(PersistentCalls):
    """``with VigilClient("localhost:50051") as client: client.liveness("selfie.jpg")``."""

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
        self._channel = self.connection.channel()
        self._stub = instant_pb2_grpc.InstantStub(self._channel)
        self._verdicts = auth_pb2_grpc.VerdictsStub(self._channel)
        self._persistent_stubs()

    def _call(
        self,
        method: grpc.UnaryUnaryMultiCallable[Request, Reply],
        request: Request,
        convert: Callable[[Reply], T],
    ) -> T:
        try:
            return convert(method(request, timeout=self.timeout, metadata=self._metadata))
        except grpc.RpcError as error:
            raise VigilRpcError.from_grpc(error) from None

    def detect(self, image: build.ImageLike) -> DetectResult:
        return self._call(self._stub.Detect, build.detect(image), DetectResult.from_proto)

    def liveness(self, image: build.ImageLike, require_single_face: bool = False) -> LivenessResult:
        request = build.liveness(image, require_single_face)
        return self._call(self._stub.CheckLiveness, request, LivenessResult.from_proto)

    def template(self, image: build.ImageLike, require_single_face: bool = False) -> TemplateResult:
        request = build.template(image, require_single_face)
        return self._call(self._stub.ExtractTemplate, request, TemplateResult.from_proto)

    def verify(
        self, a: build.FaceLike, b: build.FaceLike, require_single_face: bool = False
    ) -> VerifyResult:
        request = build.verify(a, b, require_single_face)
        return self._call(self._stub.Verify, request, VerifyResult.from_proto)

    def stream_liveness(
        self,
        frames: Iterable[tuple[bytes, float]],
        camera_label: str = "",
        device: str = "",
        require_single_face: bool = False,
    ) -> Iterator[StreamUpdate]:
        """Send (encoded frame, capture time ms) as they come; yields updates, the last final."""
        requests = build.stream_requests(frames, camera_label, device, require_single_face)
        call = self._stub.StreamLiveness(requests, timeout=self.timeout, metadata=self._metadata)
        try:
            for update in call:
                yield StreamUpdate.from_proto(update)
        except grpc.RpcError as error:
            raise VigilRpcError.from_grpc(error) from None
        finally:
            call.cancel()  # a consumer that stops early ends the stream

    def server_info(self) -> instant_pb2.ServerInfo:
        return self._call(self._stub.GetServerInfo, instant_pb2.GetServerInfoRequest(), lambda r: r)

    def get_verdict(self, folder_id: str, analysis_id: str = "") -> auth_pb2.SignedVerdict:
        """The folder's (or one analysis's) final decision as a signed token to relay."""
        request = build.get_verdict(folder_id, analysis_id)
        return self._call(self._verdicts.GetVerdict, request, lambda r: r)

    def public_keys(self) -> str:
        """The JWK set (JSON) that verifies verdicts offline: see :func:`verify_verdict`."""
        return self._call(self._verdicts.GetPublicKeys, build.public_keys(), lambda r: r.jwks_json)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> VigilClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
