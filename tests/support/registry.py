"""Restarting the session's registry the way a crash does, and only once it is gone."""

from __future__ import annotations

import time
from typing import Any

import ray

from raybeam import connection
from raybeam.config import REGISTRY_NAME, REGISTRY_NAMESPACE
from raybeam.connection import call


def live_registry() -> Any:
    """The registry as the next API call finds it: started again if it died."""
    call("ping")
    return ray.get_actor(REGISTRY_NAME, namespace=REGISTRY_NAMESPACE)


def kill_registry(within: float = 30) -> None:
    """Kill the registry, if one runs, and return once it is dead and its name is free.
    `ray.kill` returns before the actor dies, and a handle still reaches a dying registry: a
    call made at once may be answered by the old one (and then nothing starts the next one),
    or a new registry may be asked for by the old one's name and be handed the old one."""
    try:
        old = ray.get_actor(REGISTRY_NAME, namespace=REGISTRY_NAMESPACE)
    except ValueError:
        return
    ray.kill(old, no_restart=True)
    connection.forget_registry()
    deadline = time.monotonic() + within
    while True:
        try:
            ray.get(old.ping.remote(), timeout=5)
        except ray.exceptions.RayActorError:
            break
        except ray.exceptions.GetTimeoutError:
            pass
        assert time.monotonic() < deadline, "the killed registry still answers"
        time.sleep(0.05)
    while True:
        try:
            named = ray.get_actor(REGISTRY_NAME, namespace=REGISTRY_NAMESPACE)
        except ValueError:
            return
        if named._actor_id != old._actor_id:  # a next registry already
            return
        assert time.monotonic() < deadline, "the killed registry still holds its name"
        time.sleep(0.05)


def restart_registry() -> None:
    """Kill the registry, then start the next one (as the next API call does)."""
    kill_registry()
    call("ping")
