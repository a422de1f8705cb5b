"""Restarting the session's registry the way a crash does, and only once it is gone."""

from __future__ import annotations

import time
from typing import Any

import ray

from raybeam.config import REGISTRY_NAME, REGISTRY_NAMESPACE
from raybeam.connection import call


def live_registry() -> Any:
    """The registry as the next API call finds it: started again if it died."""
    call("ping")
    return ray.get_actor(REGISTRY_NAME, namespace=REGISTRY_NAMESPACE)


def kill_registry(within: float = 30) -> None:
    """Kill the registry and return once it is dead. `ray.kill` returns before the actor
    dies, and the client's cached handle still reaches a dying registry: a call made at once
    may be answered by the old one, and then nothing starts the next one."""
    old = ray.get_actor(REGISTRY_NAME, namespace=REGISTRY_NAMESPACE)
    ray.kill(old)
    deadline = time.monotonic() + within
    while True:
        try:
            ray.get(old.ping.remote(), timeout=5)
        except ray.exceptions.RayActorError:
            return
        except ray.exceptions.GetTimeoutError:
            pass
        assert time.monotonic() < deadline, "the killed registry still answers"
        time.sleep(0.05)


def restart_registry() -> None:
    """Kill the registry, then start the next one (as the next API call does)."""
    kill_registry()
    call("ping")
