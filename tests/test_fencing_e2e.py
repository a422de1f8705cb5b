"""Two real Ray clusters on one storage folder: one writer at a time (SPEC §11)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.support.scenarios import SCENARIOS

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]


def start(phase: str, root: Path, storage: Path) -> tuple[subprocess.Popen[str], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAYBEAM_")}
    env.pop("RAY_ADDRESS", None)
    scratch = tempfile.mkdtemp(prefix="rbs-", dir="/tmp")
    env.update(RAYBEAM_STORAGE=str(storage), RAYBEAM_LEASE_SECONDS="4", RB_SCENARIO_TMP=scratch)
    proc = subprocess.Popen(
        [sys.executable, str(SCENARIOS / "two_clusters.py"), str(root), phase],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    return proc, scratch


def test_a_second_cluster_waits_for_the_first_ones_lease(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    holder, first_tmp = start("hold", tmp_path, storage)
    other = None
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "task_id").exists():
            assert holder.poll() is None, holder.communicate()
            assert time.monotonic() < deadline, "the first cluster never stored its task"
            time.sleep(0.2)
        other, second_tmp = start("other", tmp_path, storage)
        out, err = other.communicate(timeout=180)
        assert other.returncode == 0, f"{out}\n{err[-4000:]}"
        assert "refused: storage is in use by the registry" in out
        assert "the holder's task is there" in out
        holder_out, _ = holder.communicate(timeout=60)
        assert "holder stopping" in holder_out
        shutil.rmtree(second_tmp, ignore_errors=True)
    finally:
        for proc in (holder, other):
            if proc is not None and proc.poll() is None:
                proc.kill()
        shutil.rmtree(first_tmp, ignore_errors=True)
