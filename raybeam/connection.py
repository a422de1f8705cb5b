"""Joining Ray and finding (or creating) the registry actor."""

from __future__ import annotations

import logging
import os
import threading
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


def registry() -> Any:
    """The registry actor's handle, created on first use with the settings in force."""
    global _handle, _handle_session
    ensure_ray()
    session = _session()
    if _handle is not None and _handle_session == session:
        return _handle
    from raybeam.registry import Registry

    s = settings()
    try:
        handle = ray.get_actor(REGISTRY_NAME, namespace=REGISTRY_NAMESPACE)
    except ValueError:
        handle = Registry.options(  # type: ignore[attr-defined]
            name=REGISTRY_NAME,
            namespace=REGISTRY_NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
        ).remote(s.storage_url, s.signing_key, s.base_url, s.output_url_expires)
    _handle, _handle_session = handle, session
    return handle


def call(method: str, *args: Any, timeout: float | None = None) -> Any:
    """Call a registry method and wait for its answer; raybeam errors come back as themselves."""
    try:
        return ray.get(getattr(registry(), method).remote(*args), timeout=timeout)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, RaybeamError):
            raise exc.cause from None
        raise
