"""The registry as the HTTP API reaches it: an async call that maps Ray's failures to HTTP."""

from __future__ import annotations

import time
from typing import Any, Protocol

import ray

from raybeam import connection
from serve_app.errors import ApiError


class RegistryClient(Protocol):
    async def call(self, method: str, *args: Any) -> Any:
        """Call a registry method; raybeam errors come back as themselves."""


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

    async def call(self, method: str, *args: Any) -> Any:
        if method == "queue_info":
            cached = self.queues.get(args[0])
            if cached is not None and time.monotonic() - cached[0] < QUEUE_TTL:
                return cached[1]
        if not ray.is_initialized():
            raise unavailable("this process is not connected to Ray")
        try:
            answer = await connection.acall(method, *args)
        except (ray.exceptions.RayActorError, ray.exceptions.RaySystemError) as exc:
            raise unavailable(f"the task registry did not answer: {exc}") from None
        if method == "queue_info" and answer is not None:
            self.queues[args[0]] = (time.monotonic(), answer)
        return answer
