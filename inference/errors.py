"""The one error hierarchy of vigil.

Every error a caller can cause or act on is a subclass of :class:`VigilError` that names its
status (the gRPC status code's name). The server maps them to gRPC statuses in one interceptor;
``inference`` and ``storage`` raise them without knowing about gRPC.
"""

from __future__ import annotations

import copy
from typing import Self


class VigilError(Exception):
    """Root of every error vigil reports to a caller. ``status`` is a gRPC status code name."""

    status = "INTERNAL"
    #: A stable machine-readable reason (google.rpc.ErrorInfo.reason), e.g. ``NO_FACE``.
    reason = "INTERNAL"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason

    def with_message(self, message: str) -> Self:
        """A copy of this error saying ``message`` (same type, status, reason and details):
        for adding context without changing a caught error in place."""
        clone = copy.copy(self)
        clone.message = message
        clone.args = (message,)
        return clone


class InvalidArgument(VigilError):
    status = "INVALID_ARGUMENT"
    reason = "INVALID_ARGUMENT"


class InvalidMedia(InvalidArgument):
    """The media bytes are empty, corrupt, truncated or of a kind vigil does not read."""

    reason = "INVALID_MEDIA"


class UnsupportedMedia(InvalidMedia):
    reason = "UNSUPPORTED_MEDIA_TYPE"


class MediaTooLarge(InvalidMedia):
    """Bytes, pixels or sides over the configured limits (checked before decoding)."""

    reason = "MEDIA_TOO_LARGE"


class InvalidTemplate(InvalidArgument):
    reason = "INVALID_TEMPLATE"


class FaceNotFound(VigilError):
    """The image decoded fine but holds no usable face."""

    status = "FAILED_PRECONDITION"
    reason = "NO_FACE"


class MultipleFaces(VigilError):
    """Several faces where the caller asked for exactly one."""

    status = "FAILED_PRECONDITION"
    reason = "MULTIPLE_FACES"


class NotFound(VigilError):
    status = "NOT_FOUND"
    reason = "NOT_FOUND"


class AlreadyExists(VigilError):
    """An object with that name already exists (e.g. a collection name within a company)."""

    status = "ALREADY_EXISTS"
    reason = "ALREADY_EXISTS"


class Overloaded(VigilError):
    """A queue is full; the caller may retry later."""

    status = "RESOURCE_EXHAUSTED"
    reason = "OVERLOADED"


class DeadlineExpired(VigilError):
    """The request's deadline passed before its work could run."""

    status = "DEADLINE_EXCEEDED"
    reason = "DEADLINE_EXPIRED"


class Unavailable(VigilError):
    """The engine is shutting down or not started."""

    status = "UNAVAILABLE"
    reason = "UNAVAILABLE"


class ModelError(VigilError):
    """A model file is missing, corrupt, or failed to load. Raised at start-up, not mid-request."""

    status = "FAILED_PRECONDITION"
    reason = "MODEL_ERROR"


class Unauthenticated(VigilError):
    """No credential, or one that is unknown, revoked or expired."""

    status = "UNAUTHENTICATED"
    reason = "UNAUTHENTICATED"


class PermissionDenied(VigilError):
    """The credential is valid but its role or result mode does not allow the call."""

    status = "PERMISSION_DENIED"
    reason = "PERMISSION_DENIED"


class RateLimited(VigilError):
    """Too many calls for this credential, or too many failed authentications."""

    status = "RESOURCE_EXHAUSTED"
    reason = "RATE_LIMITED"

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class FailedPrecondition(VigilError):
    """The object is not in a state that allows the call (e.g. a verdict of a running folder)."""

    status = "FAILED_PRECONDITION"
    reason = "FAILED_PRECONDITION"
