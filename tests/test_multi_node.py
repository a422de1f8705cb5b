"""raybeam on three `ray start` nodes on loopback with storage on moto's S3 server: the
scenario of examples/multi_node.py (also `scripts/cluster-demo`), which checks each step."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.timeout(420)]

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "multi_node.py"


def test_raybeam_on_three_nodes_with_s3() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAYBEAM_", "AWS_", "RAY_"))}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    out = subprocess.run(
        [sys.executable, str(EXAMPLE)], env=env, capture_output=True, text=True, timeout=400
    )
    assert out.returncode == 0, f"{out.stdout[-6000:]}\n{out.stderr[-6000:]}"
    lines = out.stdout
    assert "1. 5 CPU tasks from Python, all on the cpu node" in lines
    assert "2. the A10G task ran on the gpu node" in lines
    assert re.search(r"3\. HTTP task \S+ COMPLETE .* webhook received, 2 outputs downloaded", lines)
    assert re.search(r"4\. cpu node killed: .* completed [\d.]+ s after the kill", lines)
    assert "5. registry killed with 6 tasks in flight: all COMPLETE" in lines
    assert "6. the HTTP API answers" in lines
    assert "all steps passed" in lines
    print(lines)  # the figures, in the test's output
