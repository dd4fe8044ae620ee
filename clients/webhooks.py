"""Checking a webhook delivery's signature (Standard Webhooks format) in a receiver.

vigil signs each delivery with the headers ``webhook-id``, ``webhook-timestamp`` and
``webhook-signature``; :func:`verify_delivery` checks them with the reference library
(``standardwebhooks``), as a receiver in another language would with its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import standardwebhooks


class WebhookSignatureError(Exception):
    """The delivery is not signed with this secret, or its timestamp is outside five minutes."""


def verify_delivery(secret: str, body: bytes | str, headers: Mapping[str, str]) -> Any:
    """The delivery's JSON payload, once its signature checks out with the webhook's ``secret``
    (``whsec_…``, as CreateWebhook returned it). Raises :class:`WebhookSignatureError`.

    ``headers`` are the request's headers in any case (``webhook-id`` or ``Webhook-Id``).
    """
    try:
        return standardwebhooks.Webhook(secret).verify(body, dict(headers))
    except (standardwebhooks.WebhookVerificationError, ValueError) as error:
        raise WebhookSignatureError(str(error) or "the signature does not match") from None
