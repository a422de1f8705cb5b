"""Webhooks on every final status, sent off the task's path, each attempt kept on the record.

Deliveries run as background tasks on the registry's event loop, through one shared
`httpx.AsyncClient` (made on first use, inside that loop): a slow or dead receiver holds only
its own delivery. Storage work (the signing key, presigned links) runs in a thread, so it
never stalls the loop either. A registry that restarts sends the webhooks that its previous
incarnation had not finished (not delivered, attempts left), so a final status is announced at
least once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

import httpx

from raybeam import webhooks
from raybeam.host import Host
from raybeam.middleware import Middleware
from raybeam.record import TaskRecord, iso

log = logging.getLogger("raybeam.webhooks")

#: concurrent deliveries; past it, a delivery waits up to the connect timeout for a slot
MAX_CONNECTIONS = 500


class Webhooks(Middleware):
    policy = webhooks.DeliveryPolicy()

    def __init__(self, host: Host) -> None:
        super().__init__(host)
        self.client: httpx.AsyncClient | None = None
        #: ids of tasks whose webhook is being delivered by this incarnation
        self.sending: set[str] = set()

    def on_boot(self) -> None:
        self.host.spawn(self._resume())

    def on_final(self, rec: TaskRecord) -> None:
        self._start(rec)

    def _start(self, rec: TaskRecord) -> None:
        url = rec.spec.callback_url
        if url and rec.id not in self.sending:
            self.sending.add(rec.id)
            self.host.spawn(self._send(rec, url))

    async def _resume(self) -> None:
        # Once what the boot changed is stored, as on_final would have it. A delivery that
        # an earlier incarnation left unfinished (none sent yet, or a retry due during the
        # restart) goes on with the attempts it has left.
        await self.host.persist()
        for rec in self.host.records():
            if rec.status.is_final and rec.spec.callback_url and self._unfinished(rec.webhook):
                self._start(rec)

    def _unfinished(self, webhook: dict[str, Any] | None) -> bool:
        if webhook is None:
            return True
        return not webhook.get("delivered") and len(webhook["attempts"]) < self.policy.attempts

    async def _send(self, rec: TaskRecord, url: str) -> None:
        earlier = rec.webhook["attempts"] if rec.webhook else []
        webhook: dict[str, Any] = {"url": url, "delivered": False, "attempts": list(earlier)}
        policy = dataclasses.replace(self.policy, attempts=self.policy.attempts - len(earlier))

        async def record(attempt: dict[str, Any]) -> None:
            webhook["attempts"].append(attempt)
            code = attempt.get("status_code")
            if isinstance(code, int) and 200 <= code < 300:
                webhook["delivered"] = True
            rec.webhook = webhook
            if self.host.task(rec.id) is rec:  # not purged meanwhile
                await self.host.persist(rec)

        try:
            try:
                payload, key = await asyncio.to_thread(self._prepare, rec)
            except Exception as exc:
                log.exception("could not prepare the webhook of task %s", rec.id)
                await record({"at": iso(time.time()), "error": f"not sent: {exc}"[:300]})
                return
            rec.webhook = webhook
            await webhooks.deliver(url, payload, key, record, policy, client=self._client())
        finally:
            self.sending.discard(rec.id)

    def _prepare(self, rec: TaskRecord) -> tuple[dict[str, Any], bytes]:
        """The payload and the signing key; both may need the storage, so not on the loop."""
        outputs = self.host.public_outputs(rec)
        payload = webhooks.build_payload(
            rec.id, rec.status.value, rec.result, outputs, rec.failure_reason
        )
        key: bytes = self.host.storage.signing_key()
        return payload, key

    def _client(self) -> httpx.AsyncClient:
        # Made here, inside the actor's running loop, which every delivery then shares.
        if self.client is None:
            self.client = httpx.AsyncClient(
                follow_redirects=False,
                limits=httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=20),
            )
        return self.client
