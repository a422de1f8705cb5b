"""Two real Ray clusters on one storage, a folder or S3 (moto's server): one writer at a time
(SPEC §11)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.moto_server import AWS_ENV, create_bucket, moto_s3
from tests.support.scenarios import SCENARIOS

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]


@pytest.fixture(params=["folder", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """Where both clusters keep their state, and the environment that reaches it."""
    if request.param == "folder":
        yield str(tmp_path / "storage"), {}
        return
    with moto_s3(set_env=False) as endpoint:
        bucket = "rb-" + uuid.uuid4().hex[:12]
        create_bucket(endpoint, bucket)
        yield f"s3://{bucket}/raybeam", {**AWS_ENV, "AWS_ENDPOINT_URL_S3": endpoint}


def start(
    phase: str, root: Path, storage: tuple[str, dict[str, str]]
) -> tuple[subprocess.Popen[str], str]:
    url, storage_env = storage
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAYBEAM_", "AWS_"))}
    env.pop("RAY_ADDRESS", None)
    scratch = tempfile.mkdtemp(prefix="rbs-", dir="/tmp")
    env.update(storage_env)
    env.update(RAYBEAM_STORAGE=url, RAYBEAM_LEASE_SECONDS="4", RB_SCENARIO_TMP=scratch)
    proc = subprocess.Popen(
        [sys.executable, str(SCENARIOS / "two_clusters.py"), str(root), phase],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    return proc, scratch


def test_a_second_cluster_waits_for_the_first_ones_lease(
    tmp_path: Path, storage: tuple[str, dict[str, str]]
) -> None:
    holder, first_tmp = start("hold", tmp_path, storage)
    # the second cluster starts beside the first, and calls its registry only once the
    # first one has stored its task (so holds the lease)
    other, second_tmp = start("other", tmp_path, storage)
    stopped = None
    try:

        def wait_for(name: str) -> None:
            deadline = time.monotonic() + 150
            while not (tmp_path / name).exists():
                for proc in (holder, other):
                    assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, f"{name} never came"
                time.sleep(0.2)

        wait_for("refused")
        stopped = int((tmp_path / "registry_pid").read_text())
        os.kill(stopped, signal.SIGSTOP)  # a stalled registry: its lease runs out
        wait_for("took_over")
        os.kill(stopped, signal.SIGCONT)
        stopped = None
        (tmp_path / "woken").touch()
        out, err = other.communicate(timeout=180)
        assert other.returncode == 0, f"{out}\n{err[-4000:]}"
        assert f"storage {storage[0]}" in out
        assert "refused: storage is in use by the registry" in out
        assert "the holder's task is there" in out
        assert "only the first task is stored" in out
        holder_out, holder_err = holder.communicate(timeout=60)
        assert holder.returncode == 0, f"{holder_out}\n{holder_err[-4000:]}"
        # the new holder is named: the other cluster's registry
        taker = r"lost the storage's lease to [^ /]+/127\.0\.0\.1:\d+/\S+ and stopped"
        assert re.search("fenced: this registry " + taker, holder_out), holder_out
        assert re.search("refuses calls: this registry " + taker, holder_out), holder_out
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        for proc in (holder, other):
            if proc.poll() is None:
                proc.kill()
        shutil.rmtree(first_tmp, ignore_errors=True)
        shutil.rmtree(second_tmp, ignore_errors=True)
