"""Writes that Python, HTTP and the CLI call: queues registered, tasks admitted and stored,
leases, cancels and requeues. Every caller goes through here, so there is one enqueue path.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable
from typing import Any

from raybeam.admission import check_room
from raybeam.core import RegistryCore
from raybeam.errors import QueueNotFound, RaybeamError, TaskNotFinal, TaskNotFound
from raybeam.idempotency import fingerprint
from raybeam.record import TaskRecord, TaskStatus

PENDING, CANCELLED = TaskStatus.PENDING, TaskStatus.CANCELLED


class Intake:
    def __init__(self, core: RegistryCore) -> None:
        self.core = core

    async def register_queue(self, definition: dict[str, Any], blob: bytes) -> None:
        digest = definition["spec"]["function"]
        await asyncio.to_thread(self.core.journal.store_blob, f"{digest}.pkl", blob)
        self.core.dispatch.add_function(digest, blob)
        self.core.queues[definition["name"]] = definition
        self.core.commits.stage("queue", definition["name"], definition)
        await self.core.commits.commit()

    def admit(
        self, queue: str, items: list[dict[str, Any]], client: str | None
    ) -> tuple[list[TaskRecord], list[str]]:
        """New records for the items not stored yet, if the queue has room for them; and
        the task id that answers each item (the first task, for a known idempotency key)."""
        definition = self._definition(queue)
        now = time.time()
        core, tasks = self.core, self.core.tasks
        ids, new = [], []
        for it in items:
            options = it.get("options")
            key = None if not options else options.get("idempotency_key")
            first = (
                None if key is None else core.idempotency.first(queue, key, fingerprint(it), now)
            )
            ids.append(first or it["id"])
            if first is None and it["id"] not in tasks:
                new.append(it)
        covered = min(core.leases.own(queue, client), len(new))
        check_room(queue, definition, core.counts[queue], len(new), covered, self.free(queue))
        if covered and client is not None:
            core.leases.use(queue, client, covered)
        records = []
        plain = core.specs.get(queue, definition, {})  # the spec of items with no overrides
        priority = definition.get("priority", 0)
        for item, created in zip(new, core.created(now, len(new)), strict=True):
            overrides = item.get("overrides")
            spec = core.specs.get(queue, definition, overrides) if overrides else plain
            rec = TaskRecord(
                id=item["id"], queue=queue, spec=spec, created_at=created, updated_at=created
            )
            options = item.get("options") or {}
            rec.priority = options.get("priority", priority)
            if "delay" in options or "run_at" in options:
                # a time already past means now (and the ttl counts from now)
                rec.scheduled_for = max(now, options.get("run_at", now + options.get("delay", 0)))
            if "idempotency_key" in options:
                rec.idempotency_key = options["idempotency_key"]
                staged = core.idempotency.add(
                    queue, rec.idempotency_key, fingerprint(item), rec.id, now
                )
                core.commits.stage("idem", *staged)
            core.add(rec, item["payload"])
            records.append(rec)
        return records, ids

    async def submit(
        self, queue: str, items: list[dict[str, Any]], client: str | None = None
    ) -> list[str]:
        records, ids = self.admit(queue, items, client)
        await self.stored(records)
        return ids

    async def submit_each(
        self, calls: list[tuple[str, list[dict[str, Any]]]]
    ) -> list[list[str] | RaybeamError]:
        answers: list[list[str] | RaybeamError] = []
        records: list[TaskRecord] = []
        for queue, items in calls:
            try:
                admitted, ids = self.admit(queue, items, None)
            except RaybeamError as exc:
                answers.append(exc)
            else:
                records += admitted
                answers.append(ids)
        await self.stored(records)
        return answers

    async def stored(self, records: list[TaskRecord]) -> None:
        """Wait until new records are stored, then start them."""
        await self.core.commits.commit()
        waiting = [rec for rec in records if rec.status is PENDING]
        for rec in waiting:
            self.core.hook("on_enqueued", rec)
        self.core.release(*waiting)

    def lease(self, queue: str, client: str, want: int) -> int:
        self._definition(queue)
        return self.core.leases.grant(queue, client, want, self.free(queue))

    def _definition(self, queue: str) -> dict[str, Any]:
        definition = self.core.queues.get(queue)
        if definition is None:
            raise QueueNotFound(f"no queue named {queue!r} is registered")
        return definition

    def free(self, queue: str) -> int:
        """Slots of `queue` that neither unfinished tasks nor leases hold."""
        cap: int = self.core.queues[queue]["max_pending_tasks"]
        return cap - self.core.counts[queue] - self.core.leases.total(queue)

    async def cancel(self, task_ids: list[str]) -> list[str]:
        cancelled = []
        for task_id in task_ids:
            rec = self.core.tasks.get(task_id)
            if rec is not None and not rec.status.is_final:
                self.core.fail(rec, CANCELLED, "cancelled")
                cancelled.append(task_id)
        if cancelled:
            await self.core.commits.commit()
        return cancelled

    async def requeue(
        self,
        task_ids: list[str] | None,
        queue: str | None = None,
        status: str | None = "FAILED",
        limit: int = 100,
    ) -> list[dict[str, str]]:
        """New tasks running the same arguments and options as final ones, linked both
        ways: by ids (each must be final: TaskNotFinal names the first that is not), or the
        newest `limit` of `queue` with `status` that were not requeued already."""
        core = self.core
        pinned: list[str] = []  # the archive leaves these in memory until this call ends
        try:
            olds = await self._requeued(task_ids, queue, status, limit, pinned)
            return await self._requeue(olds)
        finally:
            core.pinned.subtract(pinned)
            for task_id in pinned:
                if core.pinned[task_id] <= 0:
                    del core.pinned[task_id]

    async def _requeued(
        self,
        task_ids: list[str] | None,
        queue: str | None,
        status: str | None,
        limit: int,
        pinned: list[str],
    ) -> list[TaskRecord]:
        """The final records a requeue takes, in memory and pinned there (into `pinned`)."""
        core = self.core

        def pin(ids: Iterable[str]) -> None:
            for task_id in ids:
                core.pinned[task_id] += 1
                pinned.append(task_id)

        if task_ids is not None:
            pin(task_ids)
            found = await core.unarchive_many(task_ids)
            olds = []
            for task_id in task_ids:
                rec = found.get(task_id)
                if rec is None:
                    raise TaskNotFound(f"no task with id {task_id!r}")
                if not rec.status.is_final:
                    raise TaskNotFinal(
                        f"task {task_id} is {rec.status.value}; only a final task can be "
                        "requeued (cancel it first, or wait for it)"
                    )
                olds.append(rec)
            return olds
        olds = [
            r for r in reversed(core.tasks.values())
            if r.status.is_final and r.retried_as is None
            and (queue is None or r.queue == queue)
            and (status is None or r.status.value == status)
        ][:limit]  # fmt: skip
        pin(r.id for r in olds)
        # then the newest archived ones (an archived task was requeued in memory first)
        if len(olds) < limit:
            places = [(f, row) for _, f, row in core.archive.page(queue, status, None, limit)]
            archived = await asyncio.to_thread(core.archive.read_rows, places)
            ids = [old.id for old, _ in archived if old.retried_as is None]
            pin(ids)
            found = await core.unarchive_many(ids)
            held = {r.id for r in olds}
            for task_id in ids:
                rec = found.get(task_id)
                if (
                    len(olds) < limit and rec is not None and rec.id not in held
                    and rec.retried_as is None and rec.status.is_final
                ):  # fmt: skip
                    olds.append(rec)
                    held.add(rec.id)
        return olds

    async def _requeue(self, olds: list[TaskRecord]) -> list[dict[str, str]]:
        """New tasks for the final records `olds` (pinned in memory)."""
        core = self.core
        by_queue: dict[str, list[TaskRecord]] = {}
        for rec in olds:
            by_queue.setdefault(rec.queue, []).append(rec)
        for name, recs in by_queue.items():
            definition = self._definition(name)
            room = self.free(name)
            check_room(name, definition, core.counts[name], len(recs), 0, room)
        for old in olds:  # all checked before any is made: a refusal makes none
            if old.id not in core.payloads:
                raise TaskNotFound(f"the arguments of task {old.id} are no longer stored")
        now = time.time()
        made: list[TaskRecord] = []
        answer = []
        for old in olds:
            payload = core.payloads[old.id]
            [created] = core.created(now)
            new = TaskRecord(
                id=str(uuid.uuid4()), queue=old.queue, spec=old.spec, created_at=created,
                updated_at=created, priority=old.priority, retry_of=old.id,
            )  # fmt: skip
            old.retried_as = new.id
            core.stage(old)
            core.add(new, payload)
            made.append(new)
            answer.append({"task_id": new.id, "retry_of": old.id})
        await self.stored(made)
        return answer
