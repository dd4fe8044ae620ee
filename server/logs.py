"""Logging: text or JSON lines (``VIGIL_LOG_FORMAT``), one access line per call, quiet libraries.

The access line (logger ``vigil.access``) carries the method, final status, duration, the calling
company's name and the incident id of an internal error: never request or reply fields, so no
media, templates, keys or tokens. The authentication layer names the company through
:func:`note_company`; the error-mapping interceptor, outermost, writes the line.
"""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
from dataclasses import dataclass
from typing import Literal

ACCESS = logging.getLogger("vigil.access")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: LogRecord attributes that are not ``extra=`` fields.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


@dataclass
class CallRecord:
    """What the access line says about one call; filled in while the call runs."""

    method: str
    company: str = ""


_CALL: contextvars.ContextVar[CallRecord | None] = contextvars.ContextVar(
    "vigil_call", default=None
)


def begin_call(method: str) -> CallRecord:
    record = CallRecord(method)
    _CALL.set(record)
    return record


def note_company(name: str) -> None:
    """The authenticated caller's company, for the current call's access line."""
    record = _CALL.get()
    if record is not None:
        record.company = name


def access(record: CallRecord, status: str, duration_s: float, incident: str | None) -> None:
    ACCESS.info(
        "%s %s %.1f ms company=%s%s",
        record.method,
        status,
        duration_s * 1000,
        record.company or "-",
        f" incident={incident}" if incident else "",
        extra={
            "method": record.method,
            "status": status,
            "duration_ms": round(duration_s * 1000, 3),
            "company": record.company or None,
            "incident": incident,
        },
    )


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, extra fields and
    the traceback as ``exc_info`` text."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update((key, value) for key, value in vars(record).items() if key not in _STANDARD)
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure(level: str, log_format: Literal["text", "json"] = "text") -> None:
    """The root handler in the chosen format; Alembic's per-migration lines kept out unless DEBUG
    is asked for."""
    numeric = logging.getLevelName(level.upper())
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    if numeric > logging.DEBUG:
        logging.getLogger("alembic").setLevel(logging.WARNING)
    # gRPC C-core's own stderr lines are not Python logging: C-core reads GRPC_VERBOSITY when grpc
    # is imported, before this runs. The images set GRPC_VERBOSITY=ERROR.
