"""Run a user's driver script in a subprocess, joined to the session's Ray cluster."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_driver(folder: Path, address: str, script: str = "driver.py") -> str:
    """Run `folder/script` as a second driver of the cluster at `address`; its stdout."""
    out = subprocess.run(
        [sys.executable, script],
        cwd=folder,
        env=dict(os.environ, RAY_ADDRESS=address),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout
