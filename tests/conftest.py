"""Test fixtures: one real local Ray cluster for the whole session, with logical GPUs.

Tests that need it take the `ray_cluster` fixture (and are marked `ray`); unit tests never
start Ray. The cluster runs on loopback with a private temp dir and storage folder, and only
its own processes are stopped at the end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support.offline import keep_on_loopback

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.pop("RAY_ADDRESS", None)
# Ray's cloud-metadata probes go to a closed loopback proxy, not off the machine (see there)
keep_on_loopback()
# webhook receivers here listen on loopback, which webhooks reach only when allowed (SPEC §10);
# set before Ray starts, so the registry and the webhook sender inherit it
os.environ.setdefault("RAYBEAM_WEBHOOK_ALLOWED_NETWORKS", "127.0.0.0/8")


@dataclass
class RayCluster:
    address: str
    storage: str
    root: str


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    import logging

    import ray

    root = tempfile.mkdtemp(prefix="rb-", dir="/tmp")
    storage = os.path.join(root, "storage")
    os.environ["RAYBEAM_STORAGE"] = storage
    ctx = ray.init(
        num_cpus=4,
        num_gpus=2,
        resources={"accelerator_type:A10G": 1},
        include_dashboard=False,
        logging_level=logging.ERROR,
        _temp_dir=os.path.join(root, "ray"),
        _system_config={"automatic_object_spilling_enabled": False},
    )
    try:
        yield RayCluster(ctx.address_info["gcs_address"], storage, root)
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def unique_name() -> str:
    """A queue name no other test uses, so tests sharing the registry never collide."""
    return "q_" + uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def serve_port(ray_cluster: RayCluster) -> Iterator[int]:
    """The port of the session's one Ray Serve. The HTTP modules deploy their app on it in
    turn and remove only the app (`tests.support.serving.remove_app`), so Serve's controller
    and proxy start once, not once per module. `raybeam serve` (test_cli) may stop it on
    SIGTERM; the next deploy starts it again."""
    from tests.support.net import quiet_port

    yield quiet_port()  # kept for the whole session: not from the range connections draw on
    from ray import serve

    with contextlib.suppress(Exception):  # stopped already, or never started
        serve.shutdown()  # type: ignore[no-untyped-call]
