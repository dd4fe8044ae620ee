"""Shared pieces of the repositories: metadata validation, limits, authenticated page tokens."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from vigil.inference.errors import InvalidArgument, NotFound, VigilError

#: Longest part of a caller's value echoed back in an error message (a 100 KB id must not come
#: back whole: the reply's metadata would exceed gRPC's limit).
ECHO_CHARS = 80


class QuotaExceeded(VigilError):
    """A per-company or per-object quota is used up (RESOURCE_EXHAUSTED)."""

    status = "RESOURCE_EXHAUSTED"
    reason = "QUOTA_EXCEEDED"


def echo(value: str, limit: int = ECHO_CHARS) -> str:
    """``value`` cut to ``limit`` characters for an error message (``…`` marks the cut)."""
    return value if len(value) <= limit else value[:limit] + "…"


@dataclass(frozen=True)
class MetaLimits:
    """Bounds of a folder's or a media's metadata (the server's settings name each)."""

    max_keys: int = 64
    max_key_chars: int = 64
    max_value_chars: int = 1024


_META_KEY = re.compile(r"^[A-Za-z0-9_.\-]+$")


def validate_meta(
    meta: dict[str, str], field: str = "meta", limits: MetaLimits | None = None
) -> dict[str, str]:
    """Metadata is text only: a bounded number of keys of [A-Za-z0-9_.-], bounded values."""
    limits = limits or MetaLimits()
    if len(meta) > limits.max_keys:
        raise InvalidArgument(
            f"{field} has {len(meta)} keys; at most {limits.max_keys} are allowed "
            "(VIGIL_META_MAX_KEYS)"
        )
    for key, value in meta.items():
        if not key or len(key) > limits.max_key_chars or not _META_KEY.match(key):
            raise InvalidArgument(
                f"{field} key {echo(key)!r} is invalid: 1-{limits.max_key_chars} characters of "
                "letters, digits, '_.-' (VIGIL_META_MAX_KEY_CHARS)"
            )
        if len(value) > limits.max_value_chars or "\x00" in value:
            raise InvalidArgument(
                f"{field}[{key}] is {len(value)} characters; the limit is "
                f"{limits.max_value_chars} (VIGIL_META_MAX_VALUE_CHARS), without NUL characters"
            )
    return dict(meta)


# ---- page tokens ------------------------------------------------------------------------------

# The HMAC key of page tokens. The server sets one derived from its signing key at start
# (replicas share that key, so a token from one is good on another); until then a random one.
_page_token_key = os.urandom(32)


def set_page_token_key(key: bytes) -> None:
    """Authenticate page tokens with ``key`` from now on (tokens issued before stop working)."""
    global _page_token_key
    _page_token_key = bytes(key)


def _mac(payload: bytes) -> bytes:
    return hmac.new(_page_token_key, payload, hashlib.sha256).digest()[:16]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode_page_token(values: list[Any]) -> str:
    """An opaque token: the JSON of ``values`` and an HMAC of it, both base64url."""
    payload = json.dumps(values, separators=(",", ":")).encode()
    return f"{_b64(payload)}.{_b64(_mac(payload))}"


_NOT_ISSUED = "page_token is not one this server issued; start again without one"


def decode_page_token(token: str) -> list[Any]:
    """The values of a token this server issued (its HMAC checked), else INVALID_ARGUMENT."""
    body, _, mac = token.partition(".")
    try:
        payload, presented = _unb64(body), _unb64(mac)
    except (ValueError, binascii.Error):
        raise InvalidArgument(_NOT_ISSUED) from None
    if not hmac.compare_digest(presented, _mac(payload)):
        raise InvalidArgument(_NOT_ISSUED)
    try:
        values = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument(_NOT_ISSUED) from None
    if not isinstance(values, list):
        raise InvalidArgument(_NOT_ISSUED)
    return values


def decode_keyset_token(token: str) -> tuple[datetime, str]:
    """A keyset position (the last row's time and id) from a page token, checked in shape."""
    values = decode_page_token(token)
    if len(values) != 2 or not all(isinstance(v, str) for v in values):
        raise InvalidArgument(_NOT_ISSUED)
    try:
        moment = datetime.fromisoformat(values[0])
    except ValueError:
        raise InvalidArgument(_NOT_ISSUED) from None
    return moment, values[1]


def not_found(kind: str, object_id: str) -> NotFound:
    """The same answer for "absent" and "another company's": never confirm that an id exists."""
    return NotFound(f"{kind} {echo(object_id)} not found")


def page_size(requested: int, default: int = 50, maximum: int = 500) -> int:
    if requested < 0:
        raise InvalidArgument("page_size must not be negative")
    if requested > maximum:
        raise InvalidArgument(f"page_size is {requested}; the maximum is {maximum}")
    return requested or default
