"""Reads of the registry's state, answered from what is stored.

A record whose latest change is still on its way to the journal is read once that change
lands, so a client never sees a status, result or webhook attempt that a registry crash
could take back (and then run the task again).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
from collections import Counter
from collections.abc import Iterable
from typing import Any

from raybeam.archive import Key, list_key
from raybeam.core import RegistryCore
from raybeam.record import TaskRecord
from raybeam.wire import read_large_result


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
        """The record as stored: in memory, or read from the archive."""
        rec = self.core.tasks.get(task_id)
        if rec is not None:
            await self.committed([rec])
            return rec
        return await self._archived(task_id)

    async def _archived(self, task_id: str) -> TaskRecord | None:
        if self.core.archive.locate(task_id) is None:
            return None
        found = await asyncio.to_thread(self.core.archive.read, task_id)
        # it may have come back to memory meanwhile (requeued): that copy is the newer one
        live = self.core.tasks.get(task_id)
        if live is not None:
            await self.committed([live])
            return live
        return None if found is None else found[0]

    async def full_info(self, rec: TaskRecord) -> dict[str, Any]:
        """The record with its return value, read back from storage when it was large
        (`result_blob` too: the pickled value of a return value that is not JSON)."""
        info = self.info(rec)
        info["result_blob"] = rec.result_blob
        if rec.result_key is not None:
            data = await asyncio.to_thread(self.core.storage.read_bytes, rec.result_key)
            if data is not None:  # None: removed by retention meanwhile
                info["result"], info["result_blob"] = read_large_result(rec.result_key, data)
        return info

    async def get(self, task_id: str) -> dict[str, Any] | None:
        rec = await self._stored(task_id)
        if rec is None:
            return None
        info = await self.full_info(rec)
        del info["result_blob"]
        return info

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

    async def output_key(self, output_id: str) -> str | None:
        """The storage key of an output by its id (the local download route's lookup)."""
        key: str | None = self.core.output_keys.get(output_id)
        if key is not None:
            return key
        place = self.core.archive.output_place(output_id)
        if place is None:
            return None
        return await asyncio.to_thread(self.core.archive.output_key, place, output_id)

    async def exists(self, task_ids: list[str]) -> list[bool]:
        return [s is not None for s in (await self.statuses(task_ids)).values()]

    async def statuses(self, task_ids: list[str]) -> dict[str, str | None]:
        tasks, archive = self.core.tasks, self.core.archive
        await self.committed(tasks[t] for t in task_ids if t in tasks)
        return {
            t: archive.status(t) if (rec := tasks.get(t)) is None else rec.status.value
            for t in task_ids
        }

    async def wait_final(self, task_id: str, timeout: float | None) -> dict[str, Any] | None:
        """The record once final, or as it is when `timeout` seconds pass first."""
        rec = self.core.tasks.get(task_id) or await self._archived(task_id)
        if rec is None:
            return None
        if not rec.status.is_final:
            await self.wait(self.core.waiters, [task_id], timeout)
        await self.committed([rec])
        return await self.full_info(rec)

    async def watch(self, task_id: str, seen: str | None, timeout: float) -> dict[str, Any] | None:
        """The record once its stored state differs from `seen` (or after `timeout` s):
        `seen` is a status, or a record's `version` (its status and progress count), so
        progress wakes a watcher that passes versions."""
        rec = self.core.tasks.get(task_id) or await self._archived(task_id)
        if rec is None:
            return None
        if seen in (rec.status.value, version(rec)) and not rec.status.is_final:
            await self.wait(self.core.watchers, [task_id], timeout)
        await self.committed([rec])
        info = await self.full_info(rec)
        del info["result_blob"]
        info["version"] = version(rec)
        return info

    async def wait_any(self, task_ids: list[str], timeout: float) -> list[str]:
        """The ids among `task_ids` that are final (and stored so) or unknown, waiting up to
        `timeout` seconds for the first one."""
        tasks = self.core.tasks

        async def done() -> list[str]:
            # an archived task is final, and an unknown one will not change: both are done
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
        """Records newest first, live and archived alike; `cursor` is the id of the last
        record of the previous page. A page reads the live tasks' records and, from the
        archive, only the rows it returns."""
        core = self.core
        after: Key | None = None
        if cursor is not None:
            known = core.tasks.get(cursor)
            after = list_key(known) if known is not None else core.archive.key(cursor)
            if after is None:
                return [], None  # the cursor's task is gone (retention): the listing ended
        # the newest limit + 1 live matches, in a heap whose first item is the oldest kept.
        # Records are kept in the order they were admitted, so the walk stops at the first
        # of those a second older than that. A task brought back from the archive is held
        # out of that order (it comes later, with its old creation time): it sorts into
        # place here, and never stops the walk
        live: list[tuple[Key, TaskRecord | None, Any]] = []
        newest = float("inf") if after is None else after[0]
        floor = float("-inf")
        out_of_order = core.out_of_order
        for rec in reversed(core.tasks.values()):
            created = rec.created_at
            if created > newest:
                continue  # before the cursor
            if created < floor:
                if rec.id in out_of_order:
                    continue
                break
            if (queue is not None and rec.queue != queue) or (
                status is not None and rec.status.value != status
            ):
                continue
            key = list_key(rec)
            if after is not None and key >= after:
                continue
            if len(live) <= limit:
                heapq.heappush(live, (key, rec, None))
            elif key > live[0][0]:
                heapq.heapreplace(live, (key, rec, None))
            if len(live) > limit:
                floor = live[0][0][0] - 1.0
        archived: list[tuple[Key, TaskRecord | None, Any]] = [
            (k, None, (f, row)) for k, f, row in core.archive.page(queue, status, after, limit + 1)
        ]
        merged = sorted(live + archived, key=lambda item: item[0], reverse=True)[: limit + 1]
        more = len(merged) > limit
        merged = merged[:limit]
        places = [place for _, rec, place in merged if rec is None]
        read = iter(await asyncio.to_thread(core.archive.read_rows, places) if places else [])
        page = [rec if rec is not None else next(read)[0] for _, rec, _ in merged]
        await self.committed(r for r in page if r.id in core.tasks)
        # a status filter is applied again to what is stored now
        out = [self.info(r) for r in page if status is None or r.status.value == status]
        return out, (page[-1].id if more and page else None)

    def queue_stats(self) -> dict[str, dict[str, Any]]:
        """Per queue: depth, active containers and tasks held by status, from counters (the
        cost follows the queues, not the tasks held)."""
        archived = dict(self.core.archive.counts())
        names = set(self.core.queues) | set(self.core.by_status) | set(archived)
        empty: Counter[str] = Counter()
        out = {}
        for name in sorted(names):
            held = self.core.by_status.get(name, empty) + archived.get(name, empty)
            out[name] = {**self.stats(name), "by_status": {s: n for s, n in held.items() if n}}
        return out

    def metrics(self) -> dict[str, Any]:
        """Plain data for the HTTP API's `GET /metrics`: `queues` (as `queue_stats()`) and
        what each middleware adds (the latency histograms)."""
        data: dict[str, Any] = {"queues": self.queue_stats()}
        for hook in self.core.hooks:
            data.update(hook.metrics())
        return data
