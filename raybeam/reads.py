"""Reads of the registry's state, answered from what is stored.

A record whose latest change is still on its way to the journal is read once that change
lands, so a client never sees a status, result or webhook attempt that a registry crash
could take back (and then run the task again).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Iterable
from typing import Any

from raybeam.core import RegistryCore
from raybeam.record import TaskRecord


def version(rec: TaskRecord) -> str:
    """What a watcher has seen of a record: its status and how many progress values."""
    return f"{rec.status.value}:{rec.progress_seq}"


class Reads:
    def __init__(self, core: RegistryCore) -> None:
        self.core = core

    async def committed(self, records: Iterable[TaskRecord]) -> None:
        """Return once no change of `records` is waiting to be stored. A record changes a
        handful of times in its life, so this ends after a few batches at most."""
        records = list(records)
        commits = self.core.commits
        while any(commits.pending("task", rec.id) for rec in records):
            await commits.commit()

    def stats(self, queue: str) -> dict[str, int]:
        containers = self.core.dispatch.containers(queue)
        active = self.core.running[queue] if containers is None else containers
        return {"active_containers": active, "queue_depth": self.core.counts[queue]}

    def info(self, rec: TaskRecord) -> dict[str, Any]:
        return rec.info(self.core.public_outputs(rec), self.stats(rec.queue))

    async def _stored(self, task_id: str) -> TaskRecord | None:
        rec = self.core.tasks.get(task_id)
        if rec is not None:
            await self.committed([rec])
        return rec

    async def get(self, task_id: str) -> dict[str, Any] | None:
        rec = await self._stored(task_id)
        return None if rec is None else self.info(rec)

    async def history(self, task_id: str) -> list[tuple[str, float]] | None:
        rec = await self._stored(task_id)
        return None if rec is None else list(rec.history)

    async def output_location(self, task_id: str, name: str | None) -> dict[str, Any] | None:
        rec = await self._stored(task_id)
        if rec is None:
            return None
        storage = self.core.storage_url
        for output in rec.outputs:
            if name is None or output["name"] == name:
                return {"storage": storage, "key": output["key"], "name": output["name"]}
        return {"storage": storage, "key": None, "names": [o["name"] for o in rec.outputs]}

    def output_key(self, output_id: str) -> str | None:
        """The storage key of an output by its id (the local download route's lookup)."""
        return self.core.output_keys.get(output_id)

    async def exists(self, task_ids: list[str]) -> list[bool]:
        tasks = self.core.tasks
        await self.committed(tasks[t] for t in task_ids if t in tasks)
        return [t in tasks for t in task_ids]

    async def statuses(self, task_ids: list[str]) -> dict[str, str | None]:
        tasks = self.core.tasks
        await self.committed(tasks[t] for t in task_ids if t in tasks)
        return {t: None if (rec := tasks.get(t)) is None else rec.status.value for t in task_ids}

    async def wait_final(self, task_id: str, timeout: float | None) -> dict[str, Any] | None:
        """The record once final, or as it is when `timeout` seconds pass first."""
        rec = self.core.tasks.get(task_id)
        if rec is None:
            return None
        if not rec.status.is_final:
            await self.wait(self.core.waiters, [task_id], timeout)
        await self.committed([rec])
        info = self.info(rec)
        info["result_blob"] = rec.result_blob
        return info

    async def watch(self, task_id: str, seen: str | None, timeout: float) -> dict[str, Any] | None:
        """The record once its stored state differs from `seen` (or after `timeout` s):
        `seen` is a status, or a record's `version` (its status and progress count), so
        progress wakes a watcher that passes versions."""
        rec = self.core.tasks.get(task_id)
        if rec is None:
            return None
        if seen in (rec.status.value, version(rec)) and not rec.status.is_final:
            await self.wait(self.core.watchers, [task_id], timeout)
        await self.committed([rec])
        info = self.info(rec)
        info["version"] = version(rec)
        return info

    async def wait_any(self, task_ids: list[str], timeout: float) -> list[str]:
        """The ids among `task_ids` that are final (and stored so) or unknown, waiting up to
        `timeout` seconds for the first one."""
        tasks = self.core.tasks

        async def done() -> list[str]:
            final = [tasks[t] for t in task_ids if t in tasks and tasks[t].status.is_final]
            await self.committed(final)
            return [t for t in task_ids if (rec := tasks.get(t)) is None or rec.status.is_final]

        finished = await done()
        if finished or timeout <= 0:
            return finished
        await self.wait(self.core.waiters, task_ids, timeout)
        return await done()

    @staticmethod
    async def wait(
        table: dict[str, list[asyncio.Future[None]]],
        task_ids: list[str],
        timeout: float | None,
    ) -> None:
        """Wait until `table` announces a change of any of `task_ids`, at most `timeout` s;
        the waiter is removed either way, so long-polls on slow tasks leave nothing behind."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for t in task_ids:
            table.setdefault(t, []).append(fut)
        try:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(fut), timeout)
        finally:
            for t in task_ids:
                waiting = table.get(t)
                if waiting is not None and fut in waiting:
                    waiting.remove(fut)
                    if not waiting:
                        del table[t]

    async def list(
        self, queue: str | None, status: str | None, limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Records newest first; `cursor` is the id of the last record of the previous page."""
        page: list[TaskRecord] = []
        passed = cursor is None
        more = False
        for rec in reversed(self.core.tasks.values()):
            if not passed:
                passed = rec.id == cursor
                continue
            if queue is not None and rec.queue != queue:
                continue
            if status is not None and rec.status.value != status:
                continue
            if len(page) == limit:
                more = True
                break
            page.append(rec)
        await self.committed(page)
        # a status filter is applied again to what is stored now
        out = [self.info(r) for r in page if status is None or r.status.value == status]
        return out, (page[-1].id if more and page else None)

    def queue_stats(self) -> dict[str, dict[str, Any]]:
        """Per queue: depth, active containers and tasks held by status, from counters (the
        cost follows the queues, not the tasks held)."""
        names = set(self.core.queues) | set(self.core.by_status)
        return {
            name: {
                **self.stats(name),
                "by_status": {
                    s: n for s, n in self.core.by_status.get(name, Counter()).items() if n
                },
            }
            for name in sorted(names)
        }

    def metrics(self) -> dict[str, Any]:
        """Plain data for the HTTP API's `GET /metrics`: `queues` (as `queue_stats()`) and
        what each middleware adds (the latency histograms)."""
        data: dict[str, Any] = {"queues": self.queue_stats()}
        for hook in self.core.hooks:
            data.update(hook.metrics())
        return data
