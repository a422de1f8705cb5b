"""Archived tasks on a real Ray with the HTTP API: tests/scenarios/archive.py (SPEC §11)."""

from __future__ import annotations

import tempfile

import pytest

from tests.support.net import free_port
from tests.support.scenarios import run_scenario

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]


def test_every_read_answers_the_same_for_an_archived_task() -> None:
    with tempfile.TemporaryDirectory(prefix="rb-arch-") as storage:
        out = run_scenario(
            "archive",
            storage=storage,
            # every process that may start the registry signs links for this port
            env={"RAYBEAM_ARCHIVE_AFTER_SECONDS": "1", "RAYBEAM_HTTP_PORT": str(free_port())},
            timeout=200,
        )
    assert "archived: every read the same" in out, out
    assert "after a restart: every read the same" in out, out
    assert "requeued an archived task" in out, out
    print(out)
