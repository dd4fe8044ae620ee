"""The Webhooks API: subscriptions and their delivery log."""

from __future__ import annotations

from vigil.server.api.webhooks_converters import delivery_message, webhook_message
from vigil.server.context import AppContext
from vigil.server.rpc import Context
from vigil.server.security.principal import acting_company
from vigil.server.webhook_signing import check_target
from vigil.storage import webhooks
from vigil.v1 import webhooks_pb2, webhooks_pb2_grpc


class WebhooksServicer(webhooks_pb2_grpc.WebhooksServicer):
    def __init__(self, app: AppContext) -> None:
        self.app = app

    async def CreateWebhook(
        self, request: webhooks_pb2.CreateWebhookRequest, context: Context
    ) -> webhooks_pb2.Webhook:
        company_id = acting_company()
        url, folder_id = request.url.strip(), request.folder_id or None
        await check_target(url, self.app.settings.webhook_allow_private)
        hook = await self.app.db(
            lambda s: webhooks.create_webhook(url, folder_id, company_id=company_id, session=s)
        )
        return webhook_message(hook, with_secret=True)

    async def ListWebhooks(
        self, request: webhooks_pb2.ListWebhooksRequest, context: Context
    ) -> webhooks_pb2.ListWebhooksResponse:
        company_id = acting_company()
        hooks = await self.app.db(
            lambda s: webhooks.list_webhooks(company_id=company_id, session=s)
        )
        return webhooks_pb2.ListWebhooksResponse(webhooks=[webhook_message(h) for h in hooks])

    async def DeleteWebhook(
        self, request: webhooks_pb2.DeleteWebhookRequest, context: Context
    ) -> webhooks_pb2.DeleteWebhookResponse:
        company_id = acting_company()
        webhook_id = request.webhook_id
        await self.app.db(
            lambda s: webhooks.delete_webhook(webhook_id, company_id=company_id, session=s)
        )
        return webhooks_pb2.DeleteWebhookResponse()

    async def ListDeliveries(
        self, request: webhooks_pb2.ListDeliveriesRequest, context: Context
    ) -> webhooks_pb2.ListDeliveriesResponse:
        company_id = acting_company()
        folder_id, webhook_id = request.folder_id or None, request.webhook_id or None
        rows = await self.app.db(
            lambda s: webhooks.list_deliveries(
                company_id=company_id, folder_id=folder_id, webhook_id=webhook_id, session=s
            )
        )
        return webhooks_pb2.ListDeliveriesResponse(deliveries=[delivery_message(d) for d in rows])
