"""Webhook signatures, and which targets a webhook may call.

Each delivery is signed in the Standard Webhooks format (standardwebhooks.com), so a receiver in
any language checks it with a stock library (``standardwebhooks.Webhook(secret).verify(body,
headers)``; the webhook's secret, ``whsec_…``, is what those libraries take)::

    webhook-id: <delivery id>
    webhook-timestamp: <unix seconds>
    webhook-signature: v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>

and, for receivers written against earlier versions, also with vigil's own header (:func:`verify`)::

    X-Vigil-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>

The timestamp is signed with the body, so a captured request cannot be replayed later than the
receiver's tolerance. :func:`check_target` refuses urls that are not http(s) and hosts that
resolve to private, loopback, link-local, multicast, reserved or unspecified addresses (unless
allowed); it returns the addresses it checked, so the caller can connect to exactly those (a DNS
answer that changes between the check and the connection cannot redirect the call).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import SplitResult, urlsplit

import standardwebhooks

from vigil.inference.errors import InvalidArgument

SIGNATURE_HEADER = "X-Vigil-Signature"
DELIVERY_HEADER = "X-Vigil-Delivery"
EVENT_HEADER = "X-Vigil-Event"
#: Standard Webhooks' headers (lower case, as the specification writes them).
WEBHOOK_ID_HEADER = "webhook-id"
WEBHOOK_TIMESTAMP_HEADER = "webhook-timestamp"
WEBHOOK_SIGNATURE_HEADER = "webhook-signature"
#: Standard Webhooks' secret prefix: what follows is the base64 of the HMAC key.
SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE_S = 300
MAX_URL_LENGTH = 2048

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _mac(secret: str, body: bytes, timestamp: int) -> str:
    message = str(int(timestamp)).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The ``X-Vigil-Signature`` value for ``body`` sent at ``timestamp`` (unix seconds)."""
    return f"t={int(timestamp)},v1={_mac(secret, body, timestamp)}"


def verify(
    secret: str,
    body: bytes,
    header: str,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """True when ``header`` signs ``body`` with ``secret`` and its timestamp is within
    ``tolerance_s`` of ``now`` (default: the clock). Compares in constant time; any ``v1``
    entry may match (several are allowed, e.g. while a secret is rotated)."""
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            return False
        if key == "t":
            if timestamp is not None or not (value.isascii() and value.isdigit()):
                return False
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        return False
    expected = _mac(secret, body, timestamp).encode()
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(expected, candidate.encode("ascii", "replace"))
    return matched


def _standard_signer(secret: str) -> standardwebhooks.Webhook:
    # Secrets made before the standard format (no prefix) key the HMAC with their UTF-8 bytes:
    # receivers of those pass the same bytes to their library.
    if secret.startswith(SECRET_PREFIX):
        return standardwebhooks.Webhook(secret)
    return standardwebhooks.Webhook(secret.encode())


def standard_headers(secret: str, message_id: str, body: bytes, timestamp: int) -> dict[str, str]:
    """The Standard Webhooks headers that sign ``body`` as message ``message_id`` at
    ``timestamp`` (unix seconds)."""
    at = datetime.fromtimestamp(int(timestamp), UTC)
    signature = _standard_signer(secret).sign(message_id, at, body.decode())
    return {
        WEBHOOK_ID_HEADER: message_id,
        WEBHOOK_TIMESTAMP_HEADER: str(int(timestamp)),
        WEBHOOK_SIGNATURE_HEADER: signature,
    }


# ---- targets -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A checked webhook url: where to connect (``addresses``, in resolver order) and as whom."""

    scheme: str
    host: str
    port: int
    path: str
    addresses: tuple[str, ...]


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, 6to4), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address.sixtofour


def is_public(address: IPAddress) -> bool:
    """False for private, loopback, link-local, multicast, reserved, unspecified, shared (CGNAT)
    and other non-global addresses, including IPv4 ones wrapped in IPv6."""
    if isinstance(address, ipaddress.IPv6Address):
        if address in _NAT64:  # DNS64/NAT64 networks: the IPv4 address it stands for decides
            return is_public(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        inner = _embedded_ipv4(address)
        if inner is not None and not is_public(inner):
            return False
    return not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    )


def parse_url(url: str) -> tuple[SplitResult, str, int]:
    """Syntax checks of a webhook url: (parts, host, port). Raises InvalidArgument."""
    if not url:
        raise InvalidArgument("url is required")
    if len(url) > MAX_URL_LENGTH:
        raise InvalidArgument(f"url is {len(url)} characters; the limit is {MAX_URL_LENGTH}")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise InvalidArgument("url must not contain whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidArgument(f"url is not valid: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise InvalidArgument(f"url scheme must be http or https, not {parts.scheme or 'none'!r}")
    if parts.username is not None or parts.password is not None:
        raise InvalidArgument("url must not contain credentials (user:password@)")
    host = parts.hostname
    if not host:
        raise InvalidArgument("url has no host")
    try:
        host = host.encode("idna").decode("ascii")
    except UnicodeError:
        raise InvalidArgument(f"url host {host!r} is not a valid host name") from None
    return parts, host, port or (443 if scheme == "https" else 80)


def _resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    seen: list[str] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = str(sockaddr[0])
        if address not in seen:
            seen.append(address)
    return seen


async def check_target(url: str, allow_private: bool) -> Target:
    """Check ``url`` and resolve its host; every address must be public unless ``allow_private``.

    Raises InvalidArgument saying why not. Resolution runs in a thread.
    """
    parts, host, port = parse_url(url)
    try:
        addresses = await asyncio.to_thread(_resolve, host, port)
    except (OSError, UnicodeError) as exc:
        raise InvalidArgument(f"url host {host!r} does not resolve ({exc})") from None
    if not addresses:
        raise InvalidArgument(f"url host {host!r} does not resolve")
    if not allow_private:
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
            if not is_public(ip):
                raise InvalidArgument(
                    f"url host {host!r} resolves to {ip}, a private, loopback or otherwise "
                    "non-public address; webhooks may not call those (webhook_allow_private)"
                )
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return Target(parts.scheme.lower(), host, port, path, tuple(addresses))
