"""The one place where errors become gRPC statuses, and where every RPC is counted and timed.

A :class:`VigilError` becomes its status with its message and a google.rpc.ErrorInfo detail (the
``reason``); anything else becomes INTERNAL with an opaque incident id, logged with its traceback
but never echoed to the caller. Every request message is read and checked by
:mod:`vigil.server.api.validation` on its way in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from vigil.inference.errors import VigilError
from vigil.server import logs, rpc
from vigil.server.api.validation import RequestLimits, reader
from vigil.server.metrics import RPC_LATENCY, RPC_TOTAL

log = logging.getLogger(__name__)

ERROR_DOMAIN = "vigil.v1"
_DETAILS_KEY = "grpc-status-details-bin"


def _status_details(code: grpc.StatusCode, exc: VigilError) -> bytes:
    """google.rpc.Status with an ErrorInfo (the reason) and, when known, a RetryInfo."""
    details = []
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=exc.reason, domain=ERROR_DOMAIN))
    details.append(info)
    retry_after = getattr(exc, "retry_after_s", None)
    if retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(retry_after * 1e9))
        retry = any_pb2.Any()
        retry.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        details.append(retry)
    status = status_pb2.Status(code=code.value[0], message=exc.message, details=details)
    serialized: bytes = status.SerializeToString()  # google.rpc ships no type stubs
    return serialized


class _Outcome:
    """Records the final status of one call for the metrics."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.code = grpc.StatusCode.OK
        self.started = time.perf_counter()
        self.incident: str | None = None
        self.access = logs.begin_call(method)

    def finish(self, context: rpc.Context) -> None:
        code = self.code
        if code == grpc.StatusCode.OK:
            reported = context.code()
            if isinstance(reported, grpc.StatusCode):
                code = reported
            elif isinstance(reported, int) and reported != 0:
                code = next((c for c in grpc.StatusCode if c.value[0] == reported), code)
        duration = time.perf_counter() - self.started
        RPC_TOTAL.labels(self.method, code.name).inc()
        RPC_LATENCY.labels(self.method, code.name).observe(duration)
        logs.access(self.access, code.name, duration, self.incident)


async def _abort_for(exc: BaseException, context: rpc.Context, outcome: _Outcome) -> NoReturn:
    """Turn ``exc`` into the call's status; always raises."""
    if isinstance(exc, VigilError):
        code = grpc.StatusCode[exc.status]
        outcome.code = code
        await context.abort(
            code,
            exc.message,
            trailing_metadata=((_DETAILS_KEY, _status_details(code, exc)),),
        )
    incident = uuid.uuid4().hex[:12]
    log.error("internal error in %s (incident %s)", outcome.method, incident, exc_info=exc)
    outcome.code = grpc.StatusCode.INTERNAL
    outcome.incident = incident
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error (incident {incident})")


def _is_abort(exc: BaseException) -> bool:
    # context.abort raises grpc.aio.AbortError (an internal class); let it through untouched.
    return type(exc).__name__ == "AbortError"


@contextlib.asynccontextmanager
async def _mapped_errors(
    method: str, request: rpc.Request, context: rpc.Context
) -> AsyncIterator[rpc.Transform]:
    """Around one call: its errors become statuses, its outcome is counted and timed."""
    outcome = _Outcome(method)
    try:
        yield rpc.unchanged
    except asyncio.CancelledError:
        outcome.code = grpc.StatusCode.CANCELLED
        raise
    except Exception as exc:
        if _is_abort(exc):
            raise
        await _abort_for(exc, context, outcome)
    finally:
        outcome.finish(context)


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """Maps errors to statuses and records per-RPC metrics for every method of every service;
    reads every request with the checks of ``limits``."""

    def __init__(self, limits: RequestLimits | None = None) -> None:
        self.read = reader(limits or RequestLimits())

    async def intercept_service(
        self,
        continuation: rpc.Continuation,
        handler_call_details: grpc.HandlerCallDetails,
    ) -> rpc.Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return rpc.guarded(handler, handler_call_details.method, _mapped_errors, self.read)
