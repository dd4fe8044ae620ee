"""The SDK's one error type: a failed call with its gRPC status name, message and reason."""

from __future__ import annotations

import grpc

_DETAILS_KEY = "grpc-status-details-bin"


class VigilRpcError(Exception):
    """A call to vigil failed. ``code`` is the gRPC status name (e.g. ``INVALID_ARGUMENT``)."""

    def __init__(self, code: str, message: str, reason: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.reason = reason

    @classmethod
    def from_grpc(cls, error: grpc.RpcError) -> VigilRpcError:
        code = error.code() if hasattr(error, "code") else None
        details = error.details() if hasattr(error, "details") else str(error)
        return cls(code.name if code is not None else "UNKNOWN", details or "", _reason(error))


def _reason(error: grpc.RpcError) -> str | None:
    """The google.rpc.ErrorInfo reason from the status details, if the server sent one.

    Read from the trailing metadata directly, which both the blocking client's errors and
    ``grpc.aio.AioRpcError`` (not a ``grpc.Call``) carry.
    """
    try:
        from google.rpc import error_details_pb2, status_pb2
    except ImportError:  # googleapis-common-protos is optional for the SDK
        return None
    trailing_metadata = getattr(error, "trailing_metadata", None)
    if not callable(trailing_metadata):
        return None
    for key, value in trailing_metadata() or ():
        if key != _DETAILS_KEY or not isinstance(value, bytes):
            continue
        for detail in status_pb2.Status.FromString(value).details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                # googleapis-common-protos has stubs but no py.typed: mypy reads it as untyped.
                reason: str = info.reason
                return reason
    return None
