"""The webhook sender: a detached actor of its own that makes every webhook delivery.

The registry's webhook middleware hands each delivery to it and records the attempts it
reports back, one by one (a streaming call). So no receiver, however slow, large or hostile
its answers, can slow or crash the registry: the worst it reaches is this actor, which
reads at most 64 KiB of an answer, ends an attempt after `RAYBEAM_WEBHOOK_TIMEOUT` seconds
and lets one destination hold only a few connections (raybeam/webhooks.py). It keeps no
state, reserves no CPU, and Ray restarts it if it dies; a delivery cut short by that goes on
with the attempts it has left.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import ray

from raybeam import webhooks
from raybeam.config import REGISTRY_NAMESPACE

log = logging.getLogger("raybeam.webhooks")

#: the sender actor's name, in the `raybeam` namespace
SENDER_NAME = "raybeam_webhook_sender"
#: times a delivery looks for the sender again after losing it, before giving up
LOST_SENDER_RETRIES = 5


@ray.remote(  # type: ignore[call-overload]
    num_cpus=0,
    max_restarts=-1,
    # a delivery cut short is resumed by the caller, which knows the attempts it has left
    max_task_retries=0,
    max_concurrency=10_000,
)
class WebhookSender:
    def __init__(self) -> None:
        self.client: Any = None
        self.limits = webhooks.DestinationLimits()

    async def deliver(
        self, url: str, payload: dict[str, Any], key: bytes, policy: webhooks.DeliveryPolicy
    ) -> AsyncIterator[dict[str, Any]]:
        """Each attempt of one delivery, as `webhooks.attempts` yields it."""
        if self.client is None:  # made inside the actor's loop, which every delivery shares
            self.client = webhooks.new_client()
        async for attempt in webhooks.attempts(url, payload, key, policy, self.client, self.limits):
            yield attempt

    async def pid(self) -> int:
        """The sender's process id (for memory figures and health checks)."""
        return os.getpid()


def sender_actor() -> Any:
    """The sender actor's handle, created on first use (blocking: call it off the loop)."""
    return WebhookSender.options(  # type: ignore[attr-defined]
        name=SENDER_NAME, namespace=REGISTRY_NAMESPACE, lifetime="detached", get_if_exists=True
    ).remote()


class RaySender:
    """Deliveries through the sender actor, as the webhook middleware makes them."""

    def __init__(self) -> None:
        self.handle: Any = None

    async def _actor(self) -> Any:
        if not ray.is_initialized():  # never start a Ray of our own just to send a webhook
            raise RuntimeError("this process is not connected to Ray")
        if self.handle is None:
            self.handle = await asyncio.to_thread(sender_actor)
        return self.handle

    async def deliver(
        self, url: str, payload: dict[str, Any], key: bytes, policy: webhooks.DeliveryPolicy
    ) -> AsyncIterator[dict[str, Any]]:
        left = policy.attempts
        for lost in range(LOST_SENDER_RETRIES + 1):
            try:
                actor = await self._actor()
                stream = actor.deliver.options(num_returns="streaming").remote(
                    url, payload, key, dataclasses.replace(policy, attempts=left)
                )
                async for ref in stream:
                    attempt: dict[str, Any] = await ref
                    left -= 1
                    yield attempt
                return
            except (ray.exceptions.RayActorError, ray.exceptions.RaySystemError) as exc:
                self.handle = None
                if left <= 0 or lost == LOST_SENDER_RETRIES:
                    raise
                log.warning("the webhook sender was lost (%s); looking for it again", exc)
                await asyncio.sleep(min(0.2 * 2**lost, 2.0))
