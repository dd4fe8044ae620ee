"""Delivers queued webhook events (signed, retried with backoff, every attempt recorded).

One asyncio task claims due deliveries (woken by ``app.deliveries_queued``, else every
``POLL_S``) and runs up to ``CONCURRENCY`` of them at once. Each attempt re-checks the target
(DNS may have changed since the webhook was created), connects to exactly the addresses it
checked, POSTs the JSON body with a fresh signature and never follows redirects (a 3xx is a
failed attempt). The HTTP call is blocking ``http.client`` in a thread pool of its own. Logs name
the delivery and the host, never the secret, the body or the url's path and query.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.client
import json
import logging
import os
import socket
import ssl
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from vigil.inference.errors import InvalidArgument
from vigil.server.context import AppContext
from vigil.server.webhook_signing import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    Target,
    check_target,
    sign,
    standard_headers,
)
from vigil.storage import webhooks
from vigil.storage.tables import WebhookDelivery, utcnow

log = logging.getLogger(__name__)

EVENT = "folder.final"
#: Backoff of the first retry; it doubles per attempt (capped in ``storage.webhooks``).
BACKOFF_BASE_S = 1.0
#: How often an idle dispatcher looks for due deliveries (retries come due without a wake-up).
POLL_S = 0.5
#: Deliveries in flight at once per dispatcher.
CONCURRENCY = 4
#: On stop, how long deliveries in flight may take to finish before they are abandoned.
STOP_GRACE_S = 2.0
#: Response bytes read (and discarded) before the connection is closed.
MAX_RESPONSE_BYTES = 64 * 1024
USER_AGENT = "vigil-webhooks/1"


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to a checked address while the Host header names the url's host."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """As :class:`_PinnedHTTPConnection`, with TLS verified against the url's host name."""

    def __init__(
        self, host: str, port: int, address: str, timeout: float, context: ssl.SSLContext
    ) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._address = address
        self._tls = context

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)


@functools.cache
def _tls() -> ssl.SSLContext:
    return ssl.create_default_context()


def post(target: Target, body: bytes, headers: dict[str, str], timeout: float) -> int:
    """POST ``body`` to ``target`` (first address that accepts a connection); the status code.

    Blocking. Raises OSError / http.client.HTTPException when no response came.
    """
    last: OSError | None = None
    for address in target.addresses:
        conn: http.client.HTTPConnection
        if target.scheme == "https":
            conn = _PinnedHTTPSConnection(target.host, target.port, address, timeout, _tls())
        else:
            conn = _PinnedHTTPConnection(target.host, target.port, address, timeout)
        try:
            try:
                conn.connect()
            except OSError as exc:
                last = exc  # refused, unreachable, timed out, TLS failed: try the next address
                continue
            conn.request("POST", target.path, body=body, headers=headers)
            response = conn.getresponse()
            response.read(MAX_RESPONSE_BYTES)
            return int(response.status)
        finally:
            conn.close()
    raise last or OSError("no address to connect to")


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:500]


class WebhookDispatcher:
    def __init__(self, app: AppContext) -> None:
        self.app = app
        self.worker = f"webhooks-{socket.gethostname()[:24]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._task: asyncio.Task[None] | None = None
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._slots: asyncio.Semaphore | None = None
        self._http = ThreadPoolExecutor(CONCURRENCY, thread_name_prefix="vigil-webhook")

    @property
    def lease_s(self) -> float:
        """Longer than one attempt can take (check, connect, send, answer), with a margin."""
        return 2 * self.app.settings.webhook_timeout_s + 30.0

    def start(self) -> None:
        self._slots = asyncio.Semaphore(CONCURRENCY)
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.worker)

    async def stop(self) -> None:
        """Stop claiming; let deliveries in flight finish briefly, then abandon and release them."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._inflight:
            await asyncio.wait(list(self._inflight.values()), timeout=STOP_GRACE_S)
        abandoned = list(self._inflight)
        for task in list(self._inflight.values()):
            task.cancel()
        await asyncio.gather(*self._inflight.values(), return_exceptions=True)
        self._inflight.clear()
        if abandoned:
            try:
                await self.app.db(
                    lambda s: webhooks.release_deliveries(abandoned, self.worker, session=s)
                )
            except Exception:  # the leases expire anyway
                log.warning("could not release %d webhook deliveries", len(abandoned))
        self._http.shutdown(wait=False, cancel_futures=True)

    async def _run(self) -> None:
        assert self._slots is not None
        queued = self.app.deliveries_queued
        while True:
            await self._slots.acquire()
            try:
                delivery = await self._claim()
            except Exception:
                self._slots.release()
                log.exception("claiming a webhook delivery failed; retrying")
                await asyncio.sleep(POLL_S)
                continue
            if delivery is None:
                self._slots.release()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(queued.wait(), POLL_S)
                queued.clear()
                continue
            task = asyncio.create_task(self._deliver(delivery))
            self._inflight[delivery.id] = task
            task.add_done_callback(functools.partial(self._finished, delivery.id))

    async def _claim(self) -> WebhookDelivery | None:
        """Claim one due delivery; if cancelled meanwhile, give back what the claim took."""
        claim = asyncio.ensure_future(
            self.app.db(lambda s: webhooks.claim_delivery(self.worker, self.lease_s, session=s))
        )
        try:
            return await asyncio.shield(claim)
        except asyncio.CancelledError:
            taken = await asyncio.gather(claim, return_exceptions=True)
            if isinstance(taken[0], WebhookDelivery):
                ids = [taken[0].id]
                await self.app.db(
                    lambda s: webhooks.release_deliveries(ids, self.worker, session=s)
                )
            raise

    def _finished(self, delivery_id: str, _task: asyncio.Task[None]) -> None:
        self._inflight.pop(delivery_id, None)
        assert self._slots is not None
        self._slots.release()

    async def _deliver(self, delivery: WebhookDelivery) -> None:
        settings = self.app.settings
        body = json.dumps(delivery.payload, separators=(",", ":"), sort_keys=True).encode()
        at = utcnow()
        started = time.perf_counter()
        status, error, host = 0, "", "?"
        try:
            target = await check_target(delivery.url, settings.webhook_allow_private)
            host = target.host
            now = int(time.time())
            headers = {
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                # Standard Webhooks (webhook-id is the delivery: the same on each retry, so a
                # receiver can drop a repeat), then vigil's own header for earlier receivers.
                **standard_headers(delivery.secret, delivery.id, body, now),
                SIGNATURE_HEADER: sign(delivery.secret, body, now),
                DELIVERY_HEADER: delivery.id,
                EVENT_HEADER: EVENT,
            }
            status = await asyncio.get_running_loop().run_in_executor(
                self._http, post, target, body, headers, settings.webhook_timeout_s
            )
            if not 200 <= status < 300:
                error = f"HTTP {status}"
        except InvalidArgument as exc:
            error = f"refused: {exc.message}"[:500]
        except (OSError, http.client.HTTPException, ValueError) as exc:
            error = _describe(exc)
        except Exception as exc:  # recorded like any failed attempt, never kills the dispatcher
            log.exception("webhook delivery %s: unexpected error", delivery.id)
            error = _describe(exc)
        duration_ms = (time.perf_counter() - started) * 1000.0
        await self._record(delivery, at, status, error, duration_ms, host)

    async def _record(
        self,
        delivery: WebhookDelivery,
        at: datetime,
        status: int,
        error: str,
        duration_ms: float,
        host: str,
    ) -> None:
        settings = self.app.settings
        base = BACKOFF_BASE_S
        try:
            updated = await self.app.db(
                lambda s: webhooks.record_attempt(
                    delivery.id,
                    self.worker,
                    at=at,
                    http_status=status,
                    error=error,
                    duration_ms=duration_ms,
                    max_attempts=settings.webhook_max_attempts,
                    backoff_base_s=base,
                    session=s,
                )
            )
        except Exception:
            log.exception("recording webhook delivery %s failed (it will be retried)", delivery.id)
            return
        if updated is None:
            log.warning("webhook delivery %s: lease lost, attempt not recorded", delivery.id)
            return
        log.info(
            "webhook delivery %s to %s: attempt %d %s (%.0f ms) -> %s",
            delivery.id,
            host,
            len(updated.attempts),
            f"HTTP {status}" if status else error,
            duration_ms,
            updated.state,
        )
