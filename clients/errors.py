"""The SDK's one error type: a failed call with its gRPC status name, message and reason."""

from __future__ import annotations

import grpc


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
    """The google.rpc.ErrorInfo reason from the status details, if the server sent one."""
    try:
        from google.rpc import error_details_pb2
        from grpc_status import rpc_status
    except ImportError:  # grpcio-status is optional for the SDK
        return None
    if not isinstance(error, grpc.Call):
        return None
    status = rpc_status.from_call(error)
    if status is None:
        return None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return None
