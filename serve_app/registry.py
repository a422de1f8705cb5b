"""The registry as the HTTP API reaches it: an async call that maps Ray's failures to HTTP."""

from __future__ import annotations

from typing import Any, Protocol

import ray

from raybeam import connection
from serve_app.errors import ApiError


class RegistryClient(Protocol):
    async def call(self, method: str, *args: Any) -> Any:
        """Call a registry method; raybeam errors come back as themselves."""


def unavailable(detail: str) -> ApiError:
    return ApiError(503, "RegistryUnavailable", detail, {"Retry-After": "5"})


class RayRegistry:
    """The detached registry actor; started again (it reloads its state) if it died."""

    async def call(self, method: str, *args: Any) -> Any:
        if not ray.is_initialized():
            raise unavailable("this process is not connected to Ray")
        try:
            return await connection.acall(method, *args)
        except (ray.exceptions.RayActorError, ray.exceptions.RaySystemError) as exc:
            raise unavailable(f"the task registry did not answer: {exc}") from None
