"""Webhook rows ↔ protobuf messages."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from vigil.server.api.converters import stamp, timestamp
from vigil.storage.tables import Webhook, WebhookDelivery
from vigil.v1 import webhooks_pb2

_STATES = {
    "PENDING": webhooks_pb2.DELIVERY_STATE_PENDING,
    "DELIVERED": webhooks_pb2.DELIVERY_STATE_DELIVERED,
    "FAILED": webhooks_pb2.DELIVERY_STATE_FAILED,
}


def webhook_message(hook: Webhook, *, with_secret: bool = False) -> webhooks_pb2.Webhook:
    """The secret is only ever included in CreateWebhook's answer."""
    return webhooks_pb2.Webhook(
        id=hook.id,
        url=hook.url,
        folder_id=hook.folder_id or "",
        secret=hook.secret if with_secret else "",
        created_at=timestamp(hook.created_at),
    )


def attempt_message(attempt: dict[str, Any]) -> webhooks_pb2.DeliveryAttempt:
    message = webhooks_pb2.DeliveryAttempt(
        number=int(attempt.get("number", 0)),
        http_status=int(attempt.get("http_status", 0)),
        error=str(attempt.get("error", "")),
        duration_ms=float(attempt.get("duration_ms", 0.0)),
    )
    at = attempt.get("at")
    if at:
        message.at.CopyFrom(stamp(datetime.fromisoformat(str(at))))
    return message


def delivery_message(delivery: WebhookDelivery) -> webhooks_pb2.Delivery:
    message = webhooks_pb2.Delivery(
        id=delivery.id,
        webhook_id=delivery.webhook_id or "",
        folder_id=delivery.folder_id,
        state=_STATES.get(delivery.state, webhooks_pb2.DELIVERY_STATE_UNSPECIFIED),
        attempts=[attempt_message(a) for a in delivery.attempts],
        created_at=timestamp(delivery.created_at),
    )
    if delivery.state == "PENDING":
        message.next_attempt_at.CopyFrom(stamp(delivery.next_attempt_at))
    return message
