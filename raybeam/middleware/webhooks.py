"""Webhooks on every final status, sent off the task's path, each attempt kept on the record.

The registry makes no request itself: each delivery goes to a `Sender`, by default the
webhook sender actor (raybeam/sender.py), which reports every attempt back as it ends; this
middleware records it on the task. So a slow, huge or hostile receiver reaches another
process, never the registry's loop or memory. Storage work (the key, presigned links) runs
in a thread. A registry that restarts sends the webhooks that its previous incarnation had
not finished (none tried yet, or a retry due, with attempts left), so a final status is
announced at least once; one that ended (delivered, out of attempts, or ended on an error
that is not tried again) is never sent again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

from raybeam import webhooks
from raybeam.host import Host
from raybeam.middleware import Middleware
from raybeam.record import TaskRecord, iso
from raybeam.wire import read_large_result

log = logging.getLogger("raybeam.webhooks")

#: how an attempt that never left the registry is recorded (tried again after a restart)
NOT_SENT = "not sent: "


class Sender(Protocol):
    def deliver(
        self, url: str, payload: dict[str, Any], key: bytes, policy: webhooks.DeliveryPolicy
    ) -> AsyncIterator[dict[str, Any]]:
        """Deliver `payload` to `url`; yields each attempt as it ends (SPEC §4)."""
        ...


class Webhooks(Middleware):
    policy = webhooks.DeliveryPolicy()

    def __init__(self, host: Host, sender: Sender | None = None) -> None:
        super().__init__(host)
        self.sender = sender
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
        unfinished = [
            rec
            for rec in self.host.records()
            if rec.status.is_final and rec.spec.callback_url and self._unfinished(rec.webhook)
        ]
        if unfinished:
            log.warning(
                "sending %d webhook deliveries that the previous registry left unfinished",
                len(unfinished),
            )
        for rec in unfinished:
            self._start(rec)

    def keeps(self, rec: TaskRecord) -> bool:
        return rec.id in self.sending or bool(
            rec.spec.callback_url and self._unfinished(rec.webhook)
        )

    def _unfinished(self, webhook: dict[str, Any] | None) -> bool:
        """True while a delivery may still go: none tried yet, or the last attempt is one
        that is tried again (or never left here), with attempts left. A delivery that ended
        on an answer or an error not tried again (a read timeout: the receiver may have
        acted on it; a refused address) is never sent again, by no incarnation."""
        if webhook is None:
            return True
        attempts = webhook["attempts"]
        if webhook.get("delivered") or len(attempts) >= self.policy.attempts:
            return False
        if not attempts:
            return True
        last = attempts[-1]
        return str(last.get("error", "")).startswith(NOT_SENT) or webhooks.may_retry(last)

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
                await record({"at": iso(time.time()), "error": f"{NOT_SENT}{exc}"[:300]})
                return
            rec.webhook = webhook
            try:
                async for attempt in self._sender().deliver(url, payload, key, policy):
                    await record(attempt)
            except Exception as exc:
                log.exception("the webhook of task %s could not be handed out", rec.id)
                await record({"at": iso(time.time()), "error": f"{NOT_SENT}{exc}"[:300]})
        finally:
            self.sending.discard(rec.id)

    def _prepare(self, rec: TaskRecord) -> tuple[dict[str, Any], bytes]:
        """The payload and the signing key; both may need the storage, so not on the loop."""
        outputs = self.host.public_outputs(rec)
        result = rec.result
        if rec.result_key is not None:  # a large return value, stored beside the outputs
            data = self.host.storage.read_bytes(rec.result_key)
            result = None if data is None else read_large_result(rec.result_key, data)[0]
        payload = webhooks.build_payload(
            rec.id, rec.status.value, result, outputs, rec.failure_reason, rec.progress
        )
        key: bytes = self.host.storage.webhook_key()
        return payload, key

    def _sender(self) -> Sender:
        if self.sender is None:
            from raybeam.sender import RaySender  # Ray only where deliveries are made

            self.sender = RaySender()
        return self.sender
