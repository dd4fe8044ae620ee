"""Webhook subscriptions and their deliveries (a queue in the database, like analyses).

A subscription covers one folder or, without ``folder_id``, every folder of its company. When a
folder's analyses are all final, ``enqueue_folder_event`` queues one delivery per subscription,
with a snapshot of its url and secret, so a later change of the subscription does not alter an
event already queued.

A PENDING delivery whose ``next_attempt_at`` has come and that holds no live lease is due.
``claim_delivery`` takes one with a single atomic ``UPDATE … WHERE id = (SELECT … FOR UPDATE SKIP
LOCKED LIMIT 1) RETURNING`` (as ``vigil.storage.analyses.claim``); ``record_attempt`` appends the
attempt and, only while the caller still holds the lease, makes the delivery DELIVERED (2xx),
FAILED (the last attempt) or schedules the next try with exponential backoff.
"""

from __future__ import annotations

import base64
import secrets
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, func, or_, update
from sqlmodel import Session, col, select

from vigil.inference.errors import InvalidArgument, Overloaded
from vigil.storage.common import not_found
from vigil.storage.folders import get_folder
from vigil.storage.tables import Folder, Webhook, WebhookDelivery, utcnow

#: Subscriptions one company may hold (each folder event fans out to all of them).
MAX_WEBHOOKS_PER_COMPANY = 100
MAX_URL_LENGTH = 2048
#: The newest deliveries ``list_deliveries`` returns.
MAX_LISTED_DELIVERIES = 500
#: Backoff: base * 2**(attempt - 1) seconds, capped.
BACKOFF_CAP_S = 300.0


# ---- subscriptions -----------------------------------------------------------------------------


def create_webhook(
    url: str, folder_id: str | None, *, company_id: str, session: Session
) -> Webhook:
    """Subscribe ``url`` to one folder of the company (or all of them, ``folder_id`` None).

    The url is expected to be checked already (scheme, address: ``server.webhook_signing``).
    The returned row carries the new secret: show it once, never again.
    """
    if not url:
        raise InvalidArgument("url is required")
    if len(url) > MAX_URL_LENGTH:
        raise InvalidArgument(f"url is {len(url)} characters; the limit is {MAX_URL_LENGTH}")
    if folder_id:
        get_folder(folder_id, company_id=company_id, session=session)
    count = session.exec(
        select(func.count()).select_from(Webhook).where(Webhook.company_id == company_id)
    ).one()
    if count >= MAX_WEBHOOKS_PER_COMPANY:
        raise Overloaded(
            f"the company has {count} webhooks; the limit is {MAX_WEBHOOKS_PER_COMPANY}",
            reason="QUOTA_EXCEEDED",
        )
    hook = Webhook(
        company_id=company_id,
        folder_id=folder_id or None,
        url=url,
        # Standard Webhooks' form (whsec_ + base64 of the key), which its libraries take as is.
        secret="whsec_" + base64.b64encode(secrets.token_bytes(32)).decode(),
    )
    session.add(hook)
    session.flush()
    return hook


def get_webhook(webhook_id: str, *, company_id: str, session: Session) -> Webhook:
    hook = session.exec(
        select(Webhook).where(Webhook.id == webhook_id, Webhook.company_id == company_id)
    ).first()
    if hook is None:
        raise not_found("webhook", webhook_id)
    return hook


def list_webhooks(*, company_id: str, session: Session) -> list[Webhook]:
    stmt = (
        select(Webhook)
        .where(Webhook.company_id == company_id)
        .order_by(col(Webhook.created_at), col(Webhook.id))
    )
    return list(session.exec(stmt).all())


def delete_webhook(webhook_id: str, *, company_id: str, session: Session) -> int:
    """Delete a subscription; its deliveries not yet made are given up (FAILED, log kept).

    Returns how many pending deliveries were given up.
    """
    hook = get_webhook(webhook_id, company_id=company_id, session=session)
    result = session.execute(
        update(WebhookDelivery)
        .where(
            col(WebhookDelivery.webhook_id) == hook.id,
            col(WebhookDelivery.company_id) == company_id,
            col(WebhookDelivery.state) == "PENDING",
        )
        .values(state="FAILED", lease_owner=None, lease_expires_at=None)
    )
    session.delete(hook)
    session.flush()
    return int(cast(CursorResult[Any], result).rowcount or 0)


# ---- deliveries --------------------------------------------------------------------------------


def enqueue_folder_event(folder: Folder, payload: dict[str, Any], *, session: Session) -> int:
    """Queue one delivery per subscription that covers ``folder`` (its own and company-wide).

    Called in the transaction that makes the folder's last analysis final. Returns the count.
    """
    hooks = session.exec(
        select(Webhook).where(
            Webhook.company_id == folder.company_id,
            or_(col(Webhook.folder_id).is_(None), col(Webhook.folder_id) == folder.id),
        )
    ).all()
    for hook in hooks:
        session.add(
            WebhookDelivery(
                company_id=folder.company_id,
                webhook_id=hook.id,
                folder_id=folder.id,
                url=hook.url,
                secret=hook.secret,
                payload=payload,
            )
        )
    session.flush()
    return len(hooks)


def backoff_s(attempt: int, base_s: float = 1.0, cap_s: float = BACKOFF_CAP_S) -> float:
    """The wait after failed attempt number ``attempt`` (1-based): base, 2·base, 4·base… ≤ cap."""
    return float(min(cap_s, base_s * 2.0 ** min(max(attempt - 1, 0), 30)))


def claim_delivery(worker: str, lease_s: float, *, session: Session) -> WebhookDelivery | None:
    """Take the delivery due longest under a lease, or None. Commits."""
    now = utcnow()
    due = (
        select(WebhookDelivery.id)
        .where(
            WebhookDelivery.state == "PENDING",
            col(WebhookDelivery.next_attempt_at) <= now,
            or_(
                col(WebhookDelivery.lease_expires_at).is_(None),
                col(WebhookDelivery.lease_expires_at) < now,
            ),
        )
        .order_by(col(WebhookDelivery.next_attempt_at))
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    claimed = session.execute(
        update(WebhookDelivery)
        .where(col(WebhookDelivery.id) == due)
        .values(lease_owner=worker, lease_expires_at=now + timedelta(seconds=lease_s))
        .returning(col(WebhookDelivery.id))
    ).first()
    session.commit()
    if claimed is None:
        return None
    return session.get(WebhookDelivery, claimed[0], populate_existing=True)


def record_attempt(
    delivery_id: str,
    worker: str,
    *,
    at: datetime,
    http_status: int,
    error: str,
    duration_ms: float,
    max_attempts: int,
    backoff_base_s: float = 1.0,
    session: Session,
) -> WebhookDelivery | None:
    """Append one attempt, made by the lease's holder ``worker``, and settle the delivery.

    2xx: DELIVERED. Otherwise FAILED once ``max_attempts`` attempts were made, else PENDING again
    at ``now + backoff``. Returns the delivery, or None (nothing written) when the worker no
    longer holds it (lease lost, delivery given up). Commits.
    """
    delivery = session.get(WebhookDelivery, delivery_id, populate_existing=True)
    if delivery is None or delivery.lease_owner != worker or delivery.state != "PENDING":
        session.rollback()
        return None
    number = len(delivery.attempts) + 1
    attempt = {
        "number": number,
        "at": at.isoformat(),
        "http_status": int(http_status),
        "error": error[:1000],
        "duration_ms": round(float(duration_ms), 3),
    }
    delivered = 200 <= http_status < 300
    if delivered:
        state = "DELIVERED"
    elif number >= max_attempts:
        state = "FAILED"
    else:
        state = "PENDING"
    next_at = (
        utcnow() + timedelta(seconds=backoff_s(number, backoff_base_s))
        if state == "PENDING"
        else delivery.next_attempt_at
    )
    result = session.execute(
        update(WebhookDelivery)
        .where(
            col(WebhookDelivery.id) == delivery_id,
            col(WebhookDelivery.lease_owner) == worker,
            col(WebhookDelivery.state) == "PENDING",
        )
        .values(
            attempts=[*delivery.attempts, attempt],
            state=state,
            next_attempt_at=next_at,
            lease_owner=None,
            lease_expires_at=None,
        )
    )
    if not cast(CursorResult[Any], result).rowcount:
        session.rollback()
        return None
    session.commit()
    return session.get(WebhookDelivery, delivery_id, populate_existing=True)


def release_deliveries(ids: list[str], worker: str, *, session: Session) -> int:
    """Give back leases this worker holds (it is stopping): the deliveries are due again now."""
    if not ids:
        return 0
    result = session.execute(
        update(WebhookDelivery)
        .where(
            col(WebhookDelivery.id).in_(ids),
            col(WebhookDelivery.lease_owner) == worker,
            col(WebhookDelivery.state) == "PENDING",
        )
        .values(lease_owner=None, lease_expires_at=None)
    )
    session.commit()
    return int(cast(CursorResult[Any], result).rowcount or 0)


def list_deliveries(
    *,
    company_id: str,
    folder_id: str | None = None,
    webhook_id: str | None = None,
    session: Session,
) -> list[WebhookDelivery]:
    """The company's newest deliveries (at most ``MAX_LISTED_DELIVERIES``), newest first.

    A ``folder_id`` must be a folder of the company; a ``webhook_id`` a webhook of the company or
    one (since deleted) its deliveries name; else NOT_FOUND.
    """
    stmt = select(WebhookDelivery).where(WebhookDelivery.company_id == company_id)
    if folder_id:
        get_folder(folder_id, company_id=company_id, session=session)
        stmt = stmt.where(WebhookDelivery.folder_id == folder_id)
    if webhook_id:
        stmt = stmt.where(WebhookDelivery.webhook_id == webhook_id)
    rows = list(
        session.exec(
            stmt.order_by(
                col(WebhookDelivery.created_at).desc(), col(WebhookDelivery.id).desc()
            ).limit(MAX_LISTED_DELIVERIES)
        ).all()
    )
    if webhook_id and not rows:
        known = session.exec(
            select(Webhook.id).where(Webhook.id == webhook_id, Webhook.company_id == company_id)
        ).first()
        if known is None:
            raise not_found("webhook", webhook_id)
    return rows
