"""Small gRPC plumbing shared by the API and security layers: wrapping a servicer's handler.

An interceptor that acts around every call (error mapping and metrics, authentication and
audit) gives a :data:`Guard`: an async context manager entered before the servicer's behaviour
runs and left after its last response, with the exception that ended it, if any. It yields the
function applied to each response. :func:`guarded` rebuilds grpc's handler around the guard for
each RPC kind (unary_unary, unary_stream, stream_unary, stream_stream), whether the behaviour is
a coroutine (one response, or a stream written with ``await context.write``) or an async
generator, and keeps the handler's response serializer.

Given a :data:`Reader`, :func:`guarded` also reads the requests: a message the reader refuses
(bytes that do not parse, a field out of bounds) does not fail inside grpc (which would answer
UNKNOWN) but reaches the call as a :class:`Refused`, and the call raises its error inside every
guard, where it becomes a precise status and is audited like any other refusal.

This module imports nothing of vigil.server.api, vigil.server.jobs or vigil.server.security.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeAlias, cast

import grpc
from google.protobuf.message import Message

__all__ = [
    "Call",
    "Context",
    "Continuation",
    "Guard",
    "Handler",
    "Reader",
    "Refused",
    "Request",
    "Stream",
    "Transform",
    "guarded",
    "unchanged",
]

# grpc's classes are generic in its type stubs only: the aliases naming them are strings.

#: grpc's method handler. Its stubs are generic in the request and response types, but a server
#: interceptor sees handlers of every method of every service: the types are not known here.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
#: What a server interceptor's ``intercept_service`` receives to get the next handler.
Continuation: TypeAlias = Callable[[grpc.HandlerCallDetails], Awaitable["Handler | None"]]
#: What a behaviour receives: one request message, or the client's stream of them.
Request: TypeAlias = Message | AsyncIterator[Message]
#: The servicer context of a call, whatever its messages' types.
Context: TypeAlias = "grpc.aio.ServicerContext[Message, Message]"
#: A coroutine behaviour: returns the response, or None when it streams with ``context.write``.
Call: TypeAlias = Callable[[Request, Context], Awaitable[Message | None]]
#: An async generator behaviour: yields the responses of a server stream.
Stream: TypeAlias = Callable[[Request, Context], AsyncIterator[Message]]
#: Applied to each response before it is sent (e.g. redaction); see :func:`unchanged`.
Transform: TypeAlias = Callable[[Message], Message]
#: ``guard(method, request, context)``: what an interceptor does around one call.
Guard: TypeAlias = Callable[[str, Request, Context], AbstractAsyncContextManager[Transform]]
#: grpc's request deserializer: bytes → message.
Deserializer: TypeAlias = Callable[[bytes], Message]
#: ``read(data, deserializer)``: the request message, or an exception saying why not.
Reader: TypeAlias = Callable[[bytes, Deserializer], Message]


class Refused:
    """A request message the reader refused; the call raises ``error`` inside its guards."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


#: Behaviours made by :func:`guarded`: only the innermost one (the servicer's) checks requests.
_GUARDED: weakref.WeakSet[Callable[..., Any]] = weakref.WeakSet()

_KINDS: tuple[tuple[str, Callable[..., Handler]], ...] = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler),
    ("unary_stream", grpc.unary_stream_rpc_method_handler),
    ("stream_unary", grpc.stream_unary_rpc_method_handler),
    ("stream_stream", grpc.stream_stream_rpc_method_handler),
)


def unchanged(response: Message) -> Message:
    """The :data:`Transform` of a guard that leaves responses as they are."""
    return response


def guarded(handler: Handler, method: str, guard: Guard, read: Reader | None = None) -> Handler:
    """``handler`` with its behaviour run inside ``guard`` (a handler of no known kind is
    returned as it is); its requests read with ``read`` when given."""
    for kind, make_handler in _KINDS:
        # grpc's stubs type the behaviours as synchronous callables; on an aio server they are
        # coroutine functions or async generator functions, checked below.
        behavior: Callable[..., Any] | None = getattr(handler, kind)
        if not behavior:
            continue
        wrapped: Callable[..., Any] = (
            _guard_stream(method, cast(Stream, behavior), guard)
            if inspect.isasyncgenfunction(behavior)
            else _guard_call(method, cast(Call, behavior), guard)
        )
        _GUARDED.add(wrapped)
        deserializer = handler.request_deserializer
        return make_handler(
            wrapped,
            request_deserializer=(
                _reading(deserializer, read) if read and deserializer else deserializer
            ),
            response_serializer=handler.response_serializer,
        )
    return handler


def _reading(deserializer: Deserializer, read: Reader) -> Callable[[bytes], object]:
    def deserialize(data: bytes) -> object:
        try:
            return read(data, deserializer)
        except Exception as exc:  # raised by the call, inside its guards
            return Refused(exc)

    return deserialize


def _accepted(request: Request | Refused, innermost: bool) -> Request:
    """The request as the servicer may see it; a refused one raises (innermost guard only)."""
    if not innermost:
        return cast(Request, request)
    if isinstance(request, Refused):
        raise request.error
    if isinstance(request, Message):
        return request
    return _accepted_stream(request)


async def _accepted_stream(requests: AsyncIterator[Message | Refused]) -> AsyncIterator[Message]:
    async for message in requests:
        if isinstance(message, Refused):
            raise message.error
        yield message


def _guard_call(method: str, behavior: Call, guard: Guard) -> Call:
    innermost = behavior not in _GUARDED

    async def call(request: Request, context: Context) -> Message | None:
        async with guard(method, request, context) as transform:
            response = await behavior(_accepted(request, innermost), context)
            return transform(response) if response is not None else response

    return call


def _guard_stream(method: str, behavior: Stream, guard: Guard) -> Stream:
    innermost = behavior not in _GUARDED

    async def stream(request: Request, context: Context) -> AsyncIterator[Message]:
        async with guard(method, request, context) as transform:
            async for response in behavior(_accepted(request, innermost), context):
                yield transform(response)

    return stream
