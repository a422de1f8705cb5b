"""Run a script of tests/scenarios/ in a subprocess with its own private Ray."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SCENARIOS = Path(__file__).parent.parent / "scenarios"


def run_scenario(
    name: str,
    *args: str,
    storage: str,
    env: dict[str, str] | None = None,
    drop: tuple[str, ...] = ("RAYBEAM_",),
    timeout: float = 150,
) -> str:
    """The scenario's stdout; fails the test with its output when it exits non-zero."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    environ.pop("RAY_ADDRESS", None)
    environ.update(env or {}, RAYBEAM_STORAGE=storage)
    # Ray's socket paths must stay short, so its temp dir lives under /tmp.
    environ["RB_SCENARIO_TMP"] = scratch = tempfile.mkdtemp(prefix="rbs-", dir="/tmp")
    # ray.cluster_utils.Cluster notes its address in /tmp/ray whatever its temp dir, and fails
    # when that folder is missing (as on a machine where no Ray ran with its defaults)
    os.makedirs("/tmp/ray", exist_ok=True)
    try:
        out = subprocess.run(
            [sys.executable, str(SCENARIOS / f"{name}.py"), *args],
            env=environ,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    assert out.returncode == 0, f"{name} {args} failed:\n{out.stdout}\n{out.stderr[-4000:]}"
    return out.stdout
