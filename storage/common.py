"""Shared pieces of the repositories: metadata validation and page tokens."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from vigil.inference.errors import InvalidArgument, NotFound

MAX_META_KEYS = 64
MAX_META_VALUE = 1024
_META_KEY = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def validate_meta(meta: dict[str, str], field: str = "meta") -> dict[str, str]:
    """Metadata is text only: at most 64 keys of [A-Za-z0-9_.-], values up to 1024 characters."""
    if len(meta) > MAX_META_KEYS:
        raise InvalidArgument(f"{field} has {len(meta)} keys; at most {MAX_META_KEYS} are allowed")
    for key, value in meta.items():
        if not _META_KEY.match(key):
            raise InvalidArgument(
                f"{field} key {key[:80]!r} is invalid: 1-64 characters of letters, digits, '_.-'"
            )
        if len(value) > MAX_META_VALUE:
            raise InvalidArgument(
                f"{field}[{key}] is {len(value)} characters; the limit is {MAX_META_VALUE}"
            )
    return dict(meta)


def encode_page_token(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode()


def decode_page_token(token: str) -> list[Any]:
    try:
        values = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument("page_token is not one this server issued") from None
    if not isinstance(values, list):
        raise InvalidArgument("page_token is not one this server issued")
    return values


def not_found(kind: str, object_id: str) -> NotFound:
    """The same answer for "absent" and "another company's": never confirm that an id exists."""
    return NotFound(f"{kind} {object_id} not found")


def page_size(requested: int, default: int = 50, maximum: int = 500) -> int:
    if requested < 0:
        raise InvalidArgument("page_size must not be negative")
    if requested > maximum:
        raise InvalidArgument(f"page_size is {requested}; the maximum is {maximum}")
    return requested or default
