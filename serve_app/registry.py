"""The registry as the HTTP API reaches it: an async call that maps Ray's failures to HTTP."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

import ray
from fastapi import Request

from raybeam import connection
from serve_app.errors import ApiError


class RegistryClient(Protocol):
    async def call(self, method: str, *args: Any) -> Any:
        """Call a registry method; raybeam errors come back as themselves."""


def registry_of(request: Request) -> RegistryClient:
    """The registry that `create_app` put on the app (starlette's `State` is untyped)."""
    client: RegistryClient = request.app.state.registry
    return client


#: seconds a replica trusts a queue definition it fetched
QUEUE_TTL = 5.0


def unavailable(detail: str) -> ApiError:
    return ApiError(503, "RegistryUnavailable", detail, {"Retry-After": "5"})


class RayRegistry:
    """The detached registry actor; started again (it reloads its state) if it died.

    Queue definitions are kept for QUEUE_TTL seconds, which saves every enqueue a round
    trip to the registry; a queue registered again is seen here within that time.
    """

    def __init__(self) -> None:
        self.queues: dict[str, tuple[float, dict[str, Any]]] = {}
        #: submits that arrived while one was on its way, sent together next
        self.waiting: list[tuple[str, list[dict[str, Any]], asyncio.Future[list[str]]]] = []
        self.sender: asyncio.Task[None] | None = None

    @property
    def sending(self) -> bool:
        return self.sender is not None and not self.sender.done()

    async def call(self, method: str, *args: Any) -> Any:
        if method == "queue_info":
            cached = self.queues.get(args[0])
            if cached is not None and time.monotonic() - cached[0] < QUEUE_TTL:
                return cached[1]
        if not ray.is_initialized():
            raise unavailable("this process is not connected to Ray")
        if method == "submit":
            return await self._submit(*args)
        answer = await self._acall(method, *args)
        if method == "queue_info" and answer is not None:
            self.queues[args[0]] = (time.monotonic(), answer)
        return answer

    async def _acall(self, method: str, *args: Any) -> Any:
        try:
            return await connection.acall(method, *args)
        except (ray.exceptions.RayActorError, ray.exceptions.RaySystemError) as exc:
            raise unavailable(f"the task registry did not answer: {exc}") from None

    async def _submit(self, queue: str, items: list[dict[str, Any]]) -> list[str]:
        """One request's submit; under concurrent requests, several go in one registry call
        (each still answered only once its tasks are stored)."""
        answer: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        self.waiting.append((queue, items, answer))
        if not self.sending:
            self.sender = asyncio.create_task(self._send())
        return await answer

    async def _send(self) -> None:
        while self.waiting:
            batch, self.waiting = self.waiting, []
            try:
                if len(batch) == 1:
                    queue, items, answer = batch[0]
                    ids = await self._acall("submit", queue, items)
                    if not answer.done():  # done: the client went away meanwhile
                        answer.set_result(ids)
                    continue
                answers = await self._acall("submit_each", [(q, i) for q, i, _ in batch])
            except Exception as exc:
                for _, _, answer in batch:
                    if not answer.done():
                        answer.set_exception(exc)
                continue
            for (_, _, answer), result in zip(batch, answers, strict=True):
                if answer.done():
                    continue
                if isinstance(result, Exception):
                    answer.set_exception(result)
                else:
                    answer.set_result(result)
