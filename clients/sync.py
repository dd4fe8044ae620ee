"""The blocking Python client."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from clients import _requests as build
from clients.errors import VigilRpcError
from clients.results import DetectResult, LivenessResult, TemplateResult, VerifyResult
from vigil.v1 import instant_pb2, instant_pb2_grpc

T = TypeVar("T")


class VigilClient:
    """``with VigilClient("localhost:50051") as client: client.liveness("selfie.jpg")``."""

    def __init__(self, target: str = "localhost:50051", timeout: float | None = 30.0) -> None:
        self.timeout = timeout
        self._channel = grpc.insecure_channel(target, options=build.CHANNEL_OPTIONS)
        self._stub = instant_pb2_grpc.InstantStub(self._channel)

    def _call(self, method: Callable[..., Any], request: Any, convert: Callable[[Any], T]) -> T:
        try:
            return convert(method(request, timeout=self.timeout))
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

    def server_info(self) -> instant_pb2.ServerInfo:
        return self._call(self._stub.GetServerInfo, instant_pb2.GetServerInfoRequest(), lambda r: r)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> VigilClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
