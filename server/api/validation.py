"""Every request message is read and checked here, once, at the edge, before any servicer runs.

The error-mapping interceptor installs :func:`reader` as the request deserializer of every RPC
(server/rpc.py carries a refusal to the call, which raises it inside its guards), so:

- bytes that do not parse as the request message (bad UTF-8 in a string, a truncated length
  prefix, groups nested past protobuf's limit) are INVALID_ARGUMENT, not grpc's UNKNOWN;
- no string holds a NUL character (PostgreSQL refuses them in text) or is longer than its bound
  (ids, emails, passwords, names, content types, page tokens, metadata; everything else
  ``VIGIL_MAX_STRING_CHARS``);
- every float is finite, a template's components are bounded, every Timestamp is inside
  0001-01-01..9999-12-31 with nanos in 0..999,999,999;
- the repeated fields that size a query or a write (metadata filters, analyses per call,
  metadata keys) are bounded by their settings.

Each refusal names the field (``analyses[2].threshold``) and, where one applies, the setting;
a value is never echoed whole.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from vigil.inference.errors import InvalidArgument, InvalidTemplate
from vigil.server.settings import Settings
from vigil.storage.common import MetaLimits, echo

#: Largest absolute value of a template component (embeddings are unit-scale; 3e38 made
#: distances infinite).
TEMPLATE_MAX_ABS = 1000.0
#: Timestamp's own range (google/protobuf/timestamp.proto): 0001-01-01 to 9999-12-31.
TIMESTAMP_MIN_S, TIMESTAMP_MAX_S = -62_135_596_800, 253_402_300_799
MAX_NANOS = 999_999_999

#: Tighter bounds of strings by field name (a field's own name, in any message).
_NAMED_BOUNDS: dict[str, int] = {
    "password": 1024,
    "email": 320,
    "name": 256,
    "collection": 256,
    "original_name": 256,
    "person_label": 256,
    "content_type": 255,
    "page_token": 1024,
    "url": 2048,
    "model": 256,
    "model_version": 256,
    "camera_label": 256,
    "device": 256,
    "tags": 64,
}
_ID_BOUND = 128

#: (message, field) → what a repeated field or map is bounded by: a Limits attribute and the
#: setting that names it.
_COUNTED: dict[tuple[str, str], tuple[str, str]] = {
    ("vigil.v1.ListFoldersRequest", "meta"): ("list_max_filters", "VIGIL_LIST_MAX_FILTERS"),
    ("vigil.v1.ListFoldersRequest", "resolutions"): (
        "list_max_filters",
        "VIGIL_LIST_MAX_FILTERS",
    ),
    ("vigil.v1.CreateAnalysesRequest", "analyses"): (
        "max_analyses_per_call",
        "VIGIL_MAX_ANALYSES_PER_CALL",
    ),
    ("vigil.v1.SubmitHeader", "analyses"): (
        "max_analyses_per_call",
        "VIGIL_MAX_ANALYSES_PER_CALL",
    ),
    ("vigil.v1.UpdateFolderMetaRequest", "remove"): ("meta_max_keys", "VIGIL_META_MAX_KEYS"),
}
#: Any map field is metadata: bounded in keys and in key and value sizes.
_MAP_SETTING = "VIGIL_META_MAX_KEYS"


@dataclass(frozen=True)
class RequestLimits:
    """The bounds :func:`check` applies (the settings of the same names)."""

    max_string_chars: int = 4096
    meta_max_keys: int = 64
    meta_max_key_chars: int = 64
    meta_max_value_chars: int = 1024
    list_max_filters: int = 32
    max_analyses_per_call: int = 16

    @classmethod
    def of(cls, settings: Settings) -> RequestLimits:
        return cls(
            max_string_chars=settings.max_string_chars,
            meta_max_keys=settings.meta_max_keys,
            meta_max_key_chars=settings.meta_max_key_chars,
            meta_max_value_chars=settings.meta_max_value_chars,
            list_max_filters=settings.list_max_filters,
            max_analyses_per_call=settings.max_analyses_per_call,
        )

    @property
    def meta(self) -> MetaLimits:
        return MetaLimits(self.meta_max_keys, self.meta_max_key_chars, self.meta_max_value_chars)


def meta_limits(settings: Settings) -> MetaLimits:
    """The metadata bounds the repositories apply, from the settings."""
    return RequestLimits.of(settings).meta


def reader(limits: RequestLimits) -> Callable[[bytes, Callable[[bytes], Message]], Message]:
    """``read(data, deserializer)``: the parsed, checked request, or InvalidArgument."""

    def read(data: bytes, deserializer: Callable[[bytes], Message]) -> Message:
        try:
            message = deserializer(data)
        except (DecodeError, ValueError, RecursionError) as exc:
            kind = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
            name = kind.full_name if kind is not None else "request"
            raise InvalidArgument(
                f"the request is not a valid {name} message ({echo(str(exc), 120)})"
            ) from None
        check(message, limits)
        return message

    return read


def check(message: Message, limits: RequestLimits, path: str = "") -> None:
    """Refuse ``message`` (INVALID_ARGUMENT naming the field) if any field breaks a rule."""
    kind = message.DESCRIPTOR.full_name
    if kind == "google.protobuf.Timestamp":
        _check_timestamp(message, path or "timestamp")
        return
    for field, value in message.ListFields():
        name = f"{path}.{field.name}" if path else field.name
        if _is_map(field):
            _check_map(field, value, limits, name)
        elif field.is_repeated:
            _check_count(kind, field, len(value), limits, name)
            for index, item in enumerate(value):
                _check_value(kind, field, item, limits, f"{name}[{index}]")
        else:
            _check_value(kind, field, value, limits, name)


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _check_count(
    message: str, field: FieldDescriptor, count: int, limits: RequestLimits, name: str
) -> None:
    bound = _COUNTED.get((message, field.name))
    if bound is not None:
        limit: int = getattr(limits, bound[0])
        if count > limit:
            raise InvalidArgument(
                f"{name} has {count} entries; at most {limit} are allowed ({bound[1]})"
            )


def _check_map(field: FieldDescriptor, value: Any, limits: RequestLimits, name: str) -> None:
    if len(value) > limits.meta_max_keys:
        raise InvalidArgument(
            f"{name} has {len(value)} keys; at most {limits.meta_max_keys} are allowed "
            f"({_MAP_SETTING})"
        )
    for key, item in value.items():
        _check_string(
            str(key), limits.meta_max_key_chars, f"{name} key", "VIGIL_META_MAX_KEY_CHARS"
        )
        if isinstance(item, Message):
            check(item, limits, f"{name}[{echo(str(key), 40)}]")
        elif isinstance(item, str):
            _check_string(
                item,
                limits.meta_max_value_chars,
                f"{name}[{echo(str(key), 40)}]",
                "VIGIL_META_MAX_VALUE_CHARS",
            )


def _check_value(
    message: str, field: FieldDescriptor, value: Any, limits: RequestLimits, name: str
) -> None:
    kind = field.type
    if kind == FieldDescriptor.TYPE_MESSAGE or kind == FieldDescriptor.TYPE_GROUP:
        check(value, limits, name)
    elif kind == FieldDescriptor.TYPE_STRING:
        limit, setting = _string_bound(message, field, limits)
        _check_string(value, limit, name, setting)
    elif kind in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        if message == "vigil.v1.Template":
            _check_component(value, name)
        elif not math.isfinite(value):
            raise InvalidArgument(f"{name} is {_number(value)}; it must be a finite number")


def _number(value: float) -> str:
    return "NaN" if math.isnan(value) else "infinite" if math.isinf(value) else f"{value:g}"


def _check_component(value: float, name: str) -> None:
    """A template's component: finite and bounded, so that no distance overflows."""
    if not math.isfinite(value) or abs(value) > TEMPLATE_MAX_ABS:
        raise InvalidTemplate(
            f"{name} is {_number(value)}; a template's components are finite numbers within "
            f"±{TEMPLATE_MAX_ABS:g}"
        )


def _string_bound(
    message: str, field: FieldDescriptor, limits: RequestLimits
) -> tuple[int, str | None]:
    if message in ("vigil.v1.MetaFilter",):
        if field.name == "key":
            return limits.meta_max_key_chars, "VIGIL_META_MAX_KEY_CHARS"
        return limits.meta_max_value_chars, "VIGIL_META_MAX_VALUE_CHARS"
    if message == "vigil.v1.UpdateFolderMetaRequest" and field.name == "remove":
        return limits.meta_max_key_chars, "VIGIL_META_MAX_KEY_CHARS"
    if field.name == "id" or field.name.endswith("_id"):
        return min(_ID_BOUND, limits.max_string_chars), None
    named = _NAMED_BOUNDS.get(field.name)
    if named is not None:
        return min(named, limits.max_string_chars), None
    return limits.max_string_chars, "VIGIL_MAX_STRING_CHARS"


def _check_string(value: str, limit: int, name: str, setting: str | None) -> None:
    if "\x00" in value:
        raise InvalidArgument(f"{name} contains a NUL character")
    if len(value) > limit:
        named = f" ({setting})" if setting else ""
        raise InvalidArgument(f"{name} is {len(value)} characters; the limit is {limit}{named}")


def _check_timestamp(stamp: Any, name: str) -> None:
    seconds, nanos = stamp.seconds, stamp.nanos
    if not TIMESTAMP_MIN_S <= seconds <= TIMESTAMP_MAX_S:
        raise InvalidArgument(
            f"{name}.seconds is {seconds}; a timestamp lies between 0001-01-01 and 9999-12-31"
        )
    if not 0 <= nanos <= MAX_NANOS:
        raise InvalidArgument(f"{name}.nanos is {nanos}; it must be 0..{MAX_NANOS}")
