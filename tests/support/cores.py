"""A registry core without Ray for the unit tests: a real journal on a temp folder, and a
dispatch that records what the core hands out."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from raybeam import middleware
from raybeam.core import RegistryCore
from raybeam.host import Host
from raybeam.journal import Journal
from raybeam.record import TaskRecord, TaskSpec
from raybeam.storage import Storage


class FakeDispatch:
    """Records what the core hands out; nothing runs."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.functions: dict[str, bytes] = {}
        self.submitted: list[tuple[str, str]] = []
        self.stopped: list[str] = []

    def add_function(self, digest: str, blob: bytes) -> None:
        self.functions[digest] = blob

    def has_function(self, digest: str) -> bool:
        return digest in self.functions

    def submit(self, rec: TaskRecord) -> None:
        rec.run = self.host.new_run()
        self.submitted.append((rec.id, rec.run))

    def submit_all(self, records: Sequence[TaskRecord]) -> None:
        for rec in records:
            self.submit(rec)

    def stop(self, rec: TaskRecord) -> None:
        self.stopped.append(rec.id)

    def ended(self, rec: TaskRecord) -> None:
        pass

    def observe(self, queue: str, duration: float) -> None:
        pass

    def containers(self, queue: str) -> int | None:
        return None

    async def upkeep(self) -> None:
        await asyncio.Event().wait()


def make_core(
    root: Path,
    hooks: Callable[[Host], list[middleware.Middleware]] = middleware.default,
    dispatch: Callable[[Host], Any] = FakeDispatch,
) -> RegistryCore:
    storage = Storage(str(root / "storage"), signing_key="k")
    return RegistryCore(
        Journal(storage.fs, storage.path("registry")),
        storage,
        output_url_expires=3600,
        retention_seconds=86400,
        incarnation="test",
        dispatch=dispatch,
        middleware=hooks,
    )


def definition(name: str = "q", cap: int = 100, **spec: Any) -> dict[str, Any]:
    return {
        "name": name,
        "spec": dataclasses.asdict(TaskSpec(function=spec.pop("function", "f1"), **spec)),
        "max_pending_tasks": cap,
        "authorized": True,
        "params": [],
        "warm": None,
    }


def item(task_id: str, **overrides: Any) -> dict[str, Any]:
    return {"id": task_id, "payload": "p", "overrides": overrides}


def run(
    root: Path,
    scenario: Callable[[RegistryCore], Awaitable[None]],
    hooks: Callable[[Host], list[middleware.Middleware]] = middleware.default,
) -> None:
    async def main() -> None:
        core = make_core(root, hooks)
        await core.boot()
        await core.archived()  # as every registry call that may read it waits for it
        try:
            await scenario(core)
        finally:
            for task in list(core.background):
                task.cancel()
            await asyncio.gather(*core.background, return_exceptions=True)

    asyncio.run(main())


def dispatched(core: RegistryCore) -> FakeDispatch:
    assert isinstance(core.dispatch, FakeDispatch)
    return core.dispatch
