"""Secrets through Ray's internal key-value store, on the session's Ray (SPEC §10): what a
deployer publishes, a Ray worker reads without any argument or runtime_env carrying it."""

from __future__ import annotations

import pickle
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from ray.experimental import internal_kv

from raybeam import keys
from raybeam.config import REGISTRY_NAMESPACE, Settings
from raybeam.storage import Storage

pytestmark = [pytest.mark.ray, pytest.mark.timeout(90)]


@pytest.fixture
def published(ray_cluster: Any) -> Iterator[Settings]:
    deployer = Settings(
        auth_tokens=("e2e-token",),
        signing_key=f"sign-{uuid.uuid4().hex}",
        webhook_key=f"hook-{uuid.uuid4().hex}",
    )
    keys.publish_secrets(deployer)
    try:
        yield deployer
    finally:  # other tests on this cluster use the generated keys
        internal_kv._internal_kv_del(b"secret/", del_by_prefix=True, namespace=REGISTRY_NAMESPACE)


@ray.remote(num_cpus=0)
def in_a_worker(storage: Storage) -> dict[str, Any]:
    # the copy of `storage` was rebuilt here without keys: it found the published ones
    return {
        "tokens": keys.read_secrets().auth_tokens,
        "signing": storage.signing_key().decode(),
        "webhook": storage.webhook_key().decode(),
    }


def test_a_worker_reads_the_published_secrets(published: Settings, tmp_path: Path) -> None:
    storage = Storage(str(tmp_path / f"storage-{uuid.uuid4().hex}"))
    assert published.signing_key.encode() not in pickle.dumps(storage)
    seen = ray.get(in_a_worker.remote(storage), timeout=60)
    assert seen == {
        "tokens": ("e2e-token",),
        "signing": published.signing_key,
        "webhook": published.webhook_key,
    }
    assert keys.read_secrets() == keys.Secrets(
        ("e2e-token",), published.signing_key, published.webhook_key
    )
