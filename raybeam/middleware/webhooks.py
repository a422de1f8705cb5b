"""Webhooks on every final status, sent off the task's path, each attempt kept on the record."""

from __future__ import annotations

import logging
from typing import Any

import httpx

from raybeam import webhooks
from raybeam.middleware import Middleware
from raybeam.record import TaskRecord

log = logging.getLogger("raybeam.webhooks")


class Webhooks(Middleware):
    policy = webhooks.DeliveryPolicy()

    def __init__(self, registry: Any) -> None:
        super().__init__(registry)
        self.client: httpx.AsyncClient | None = None

    def on_final(self, rec: TaskRecord) -> None:
        if rec.spec.callback_url:
            self.registry._spawn(self._send(rec, rec.spec.callback_url))

    async def _send(self, rec: TaskRecord, url: str) -> None:
        if self.client is None:
            self.client = httpx.AsyncClient(follow_redirects=False)
        outputs = self.registry._info(rec)["outputs"]
        payload = webhooks.build_payload(
            rec.id, rec.status.value, rec.result, outputs, rec.failure_reason
        )
        rec.webhook = {"url": url, "delivered": False, "attempts": []}
        webhook = rec.webhook

        async def record(attempt: dict[str, Any]) -> None:
            webhook["attempts"].append(attempt)
            code = attempt.get("status_code")
            if isinstance(code, int) and 200 <= code < 300:
                webhook["delivered"] = True
            await self.registry._persist(rec)

        key = self.registry.storage.signing_key()
        await webhooks.deliver(url, payload, key, record, self.policy, client=self.client)
