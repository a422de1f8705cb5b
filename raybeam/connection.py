"""Joining Ray and finding (or creating) the registry actor."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from typing import Any

import ray

from raybeam.config import REGISTRY_NAME, REGISTRY_NAMESPACE, settings
from raybeam.errors import RaybeamError

_lock = threading.Lock()
_handle: Any = None
_handle_session: str | None = None


def ensure_ray() -> None:
    """Connect to `RAY_ADDRESS` when set; otherwise join or start a local Ray."""
    if ray.is_initialized():
        return
    with _lock:
        if ray.is_initialized():
            return
        address = settings().ray_address or None
        if address is None:
            # A local Ray binds loopback only with this set (see README, "Local Ray").
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        # Ray's start-up chatter (token notice, dashboard link) is not the user's business.
        ray.init(
            address=address,
            logging_level=logging.ERROR,
            log_to_driver=True,
            include_dashboard=False if address is None else None,
        )


def _session() -> str:
    ensure_ray()
    ctx = ray.get_runtime_context()
    return f"{ctx.get_job_id()}@{ctx.gcs_address}"


def _create_registry() -> Any:
    from raybeam.registry import Registry

    s = settings()
    return Registry.options(  # type: ignore[attr-defined]
        name=REGISTRY_NAME,
        namespace=REGISTRY_NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
    ).remote(s.storage_url, s.signing_key, s.base_url, s.output_url_expires, s.retention_seconds)


def registry() -> Any:
    """The registry actor's handle; created (or created again) with the settings in force."""
    global _handle, _handle_session
    ensure_ray()
    session = _session()
    with _lock:
        if _handle is None or _handle_session != session:
            try:
                _handle = ray.get_actor(REGISTRY_NAME, namespace=REGISTRY_NAMESPACE)
            except ValueError:
                _handle = _create_registry()
            _handle_session = session
        return _handle


def forget_registry() -> None:
    """Drop the cached handle, so the next call finds or creates a live registry."""
    global _handle
    with _lock:
        _handle = None


#: Ray does not restart the registry (see Registry); raybeam's callers start it again.
_GONE = (
    ray.exceptions.RayActorError,  # died, or unavailable while it restarts
    ray.exceptions.OutOfMemoryError,  # the memory monitor stopped it mid-call
)
_RETRIES = 8


def _unwrap(exc: ray.exceptions.RayTaskError) -> BaseException:
    return exc.cause if isinstance(exc.cause, RaybeamError) else exc


def _backoff(attempt: int) -> float | None:
    """After the registry was lost: seconds to wait before trying again, None to give up."""
    if attempt == _RETRIES - 1:
        return None
    forget_registry()
    return float(min(0.2 * 2.0**attempt, 2.0))


def call(method: str, *args: Any, timeout: float | None = None) -> Any:
    """Call a registry method and wait for its answer; raybeam errors come back as themselves.

    A registry that died is started again (it reloads its state) and the call repeated, so
    registry methods are idempotent.
    """
    for attempt in range(_RETRIES):
        try:
            return ray.get(getattr(registry(), method).remote(*args), timeout=timeout)
        except ray.exceptions.RayTaskError as exc:
            raise _unwrap(exc) from None
        except _GONE:
            if (delay := _backoff(attempt)) is None:
                raise
            time.sleep(delay)
    raise AssertionError("unreachable")


async def acall(method: str, *args: Any) -> Any:
    """`call` for asyncio code (the HTTP API)."""
    for attempt in range(_RETRIES):
        try:
            handle = _handle if _handle is not None else await asyncio.to_thread(registry)
            return await getattr(handle, method).remote(*args)
        except ray.exceptions.RayTaskError as exc:
            raise _unwrap(exc) from None
        except _GONE:
            if (delay := _backoff(attempt)) is None:
                raise
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")
