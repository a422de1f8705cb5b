"""The registry: one detached Ray actor, the single writer of task state.

`dispatch.py` turns its attempts into Ray work; `journal.py` stores its changes;
`middleware/` holds what hooks into the lifecycle (output links, webhooks, metrics,
retention).

It owns the Ray tasks it submits (so a client that exits loses nothing), counts attempts,
enforces retries, timeouts, ttl, cancel and queue caps, and stores every change through the
journal before it acknowledges it. On a restart it reloads the journal and resubmits every
task that is not final.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
import uuid
from collections import Counter
from typing import Any

import ray

from raybeam import middleware
from raybeam.dispatch import Dispatcher
from raybeam.errors import QueueFull, QueueNotFound, RaybeamError
from raybeam.journal import GroupCommit, Journal
from raybeam.leases import Leases
from raybeam.middleware.retention import Retention
from raybeam.record import TaskRecord, TaskSpec, TaskStatus
from raybeam.runner import START_REPORT_DELAY
from raybeam.storage import Storage

log = logging.getLogger("raybeam.registry")

#: attempts cut short by a registry restart beyond `retries` before a task is given up
RESTART_ALLOWANCE = 3
#: seconds before the first retry; doubled for each one after
RETRY_BACKOFF = 0.25
RUNNING, RETRY, PENDING = TaskStatus.RUNNING, TaskStatus.RETRY, TaskStatus.PENDING


# Not restartable by Ray on purpose: Ray's memory monitor kills "retriable" workers (actors
# with restarts left) first, and every running task dies with its owner, the registry. As a
# non-retriable worker, the oldest one on its node, it is the last one the monitor picks. The
# next API call (Python, HTTP, CLI) starts it again; it reloads its journal and resubmits.
@ray.remote(  # type: ignore[call-overload]
    num_cpus=0,
    # on the head node, which lives as long as the cluster does
    resources={"node:__internal_head__": 0.001},
    max_restarts=0,
    max_concurrency=10_000,
)
class Registry:
    def __init__(
        self,
        storage_url: str,
        signing_key: str,
        public_url: str,
        output_url_expires: int,
        retention_seconds: int = 7 * 86400,
    ) -> None:
        logging.getLogger("raybeam").setLevel(logging.INFO)
        self.retention_seconds = retention_seconds
        # Submissions are numbered per incarnation, so a report from an attempt that an
        # earlier incarnation started can never pass for the current one.
        self.incarnation = uuid.uuid4().hex[:8]
        self.submissions = 0
        self.storage_url = storage_url
        self.signing_key = signing_key
        self.public_url = public_url
        self.output_url_expires = output_url_expires
        self.storage = Storage(storage_url, signing_key=signing_key or None, public_url=public_url)
        self.journal = Journal(self.storage.fs, self.storage.path("registry"))
        state, self.load_problems = self.journal.load()
        self.queues: dict[str, dict[str, Any]] = {}
        self.tasks: dict[str, TaskRecord] = {}
        self.payloads: dict[str, str] = {}
        records = []
        for (kind, key), data in state.items():
            if kind == "queue":
                self.queues[key] = data
            elif kind == "payload":
                self.payloads[key] = data
            elif kind == "task":
                try:
                    records.append(TaskRecord.from_json(data))
                except (TypeError, ValueError, KeyError) as exc:
                    self.load_problems.append(f"task {key} unreadable ({exc}); skipped")
        for rec in sorted(records, key=lambda r: r.created_at):
            self.tasks[rec.id] = rec
        self.depth: Counter[str] = Counter()
        self.running: Counter[str] = Counter()
        for rec in self.tasks.values():
            if not rec.status.is_final:
                self.depth[rec.queue] += 1
            if rec.status is RUNNING:
                self.running[rec.queue] += 1
        self.dispatch = Dispatcher(self)
        self.leases = Leases()
        self.ttl_timers: dict[str, asyncio.TimerHandle] = {}
        self.attempt_timers: dict[str, asyncio.TimerHandle] = {}
        #: records of one queue with the same overrides share one (immutable) spec
        self.specs: dict[tuple[str, str, str], TaskSpec] = {}
        self.waiters: dict[str, list[asyncio.Future[None]]] = {}
        self.watchers: dict[str, list[asyncio.Future[None]]] = {}
        self.background: set[asyncio.Task[Any]] = set()
        self.booted = False
        self.hooks = middleware.load(self)
        self.retention = next(h for h in self.hooks if isinstance(h, Retention))
        # Resume unfinished work even if no client calls in after a restart.
        ray.get_runtime_context().current_actor.ping.remote()

    # ---- lifecycle of the actor -------------------------------------------------------

    def _boot(self) -> None:
        if self.booted:
            return
        self.booted = True
        self.commits = GroupCommit(
            self.journal, _serialise, self._everything, lambda: len(self.tasks)
        )
        self._spawn(self.commits.run())
        now = time.time()
        for rec in list(self.tasks.values()):
            if rec.status.is_final:
                continue
            if rec.id not in self.payloads:
                rec.failure_reason = "its arguments were not found in storage"
                self._finish(
                    rec, TaskStatus.FAILED if rec.status is not PENDING else TaskStatus.CANCELLED
                )
                continue
            if rec.status is RUNNING:
                rec.failure_reason = f"the registry restarted during attempt {rec.attempts}"
                if rec.attempts > rec.spec.retries + RESTART_ALLOWANCE:
                    # a task whose attempts keep taking the registry down (say, by memory)
                    self._finish(rec, TaskStatus.FAILED)
                    continue
                self._set_status(rec, RETRY)
                self._dirty(rec)
            if rec.status is PENDING:
                self._schedule_ttl(rec, now)
            self.dispatch.submit(rec)
        self._spawn(self.dispatch.upkeep())
        for hook in self.hooks:
            hook.on_boot()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task

    async def ping(self) -> dict[str, Any]:
        self._boot()
        return {"tasks": len(self.tasks), "load_problems": self.load_problems}

    async def purge(self, older_than_seconds: float) -> int:
        """Forget final tasks that ended over `older_than_seconds` ago, outputs included."""
        self._boot()
        purged: int = await self.retention.purge(older_than_seconds)
        return purged

    # ---- persistence ----------------------------------------------------------------

    def _dirty(self, rec: TaskRecord) -> None:
        self.commits.stage("task", rec.id, rec)

    async def _persist(self, *records: TaskRecord) -> None:
        """Return once every change so far (these records' included) is stored."""
        for rec in records:
            self._dirty(rec)
        await self.commits.commit()

    def _everything(self) -> list[tuple[str, str, Any]]:
        """Every live (kind, key, value), for a snapshot; values are serialised later."""
        entries: list[tuple[str, str, Any]] = [("queue", k, v) for k, v in self.queues.items()]
        entries += [("payload", k, v) for k, v in self.payloads.items()]
        entries += [("task", r.id, r) for r in self.tasks.values()]
        return entries

    # ---- status changes: the one place counters, refs and hooks follow ------------------

    def _set_status(self, rec: TaskRecord, new: TaskStatus) -> None:
        old = rec.status
        rec.transition(new)
        # staged with every change, so a batch never holds a side effect of a status change
        # (say, the deletion of a final task's arguments) without the status itself
        self._dirty(rec)
        # a started or final task cannot expire, and an attempt that ended cannot time out:
        # drop their timers now (an hour's worth of timers would otherwise pile up)
        timers = self.ttl_timers if old is PENDING else self.attempt_timers
        if old in (PENDING, RUNNING) and (timer := timers.pop(rec.id, None)) is not None:
            timer.cancel()
        for fut in self.watchers.pop(rec.id, []):
            if not fut.done():
                fut.set_result(None)
        for hook in self.hooks:
            try:
                hook.on_transition(rec, old, new)
            except Exception:
                log.exception("hook %s failed for task %s", type(hook).__name__, rec.id)
        if old is RUNNING:
            self.running[rec.queue] -= 1
        if new is RUNNING:
            self.running[rec.queue] += 1
        if new.is_final:
            self.depth[rec.queue] -= 1
            self.dispatch.refs.pop(rec.id, None)
            if self.payloads.pop(rec.id, None) is not None:
                self.commits.stage("payload", rec.id, None)

    def _finish(self, rec: TaskRecord, status: TaskStatus) -> None:
        """Make `rec` final; waiters and hooks run once the change is stored."""
        self._set_status(rec, status)
        self._spawn(self._after_final(rec))

    async def _after_final(self, rec: TaskRecord) -> None:
        await self._persist(rec)
        for fut in self.waiters.pop(rec.id, []):
            if not fut.done():
                fut.set_result(None)
        for hook in self.hooks:
            try:
                hook.on_final(rec)
            except Exception:
                log.exception("hook %s failed for task %s", type(hook).__name__, rec.id)

    def _start(self, rec: TaskRecord, container_id: str | None, at: float | None = None) -> None:
        rec.attempts += 1
        rec.container_id = container_id or rec.container_id
        self._set_status(rec, RUNNING)
        if at is not None and rec.attempts == 1:
            rec.started_at = min(at, rec.started_at or at)

    # ---- submitting attempts ----------------------------------------------------------

    async def _settle(self, task_id: str, run: str, outcome: dict[str, Any]) -> None:
        """Apply how an attempt ended: COMPLETE, a retry, or FAILED."""
        rec = self.tasks.get(task_id)
        if rec is None or not rec.is_live(run):
            return
        if rec.status is not RUNNING:  # the attempt never started (e.g. its worker died first)
            self._start(rec, outcome.get("container_id"), outcome.get("started_at"))
        rec.run = ""  # this submission is over: a late report from it must not count
        # the record lists the outputs of the attempt that counts: the latest one
        rec.outputs = list(outcome.get("outputs") or [])
        if outcome["ok"]:
            duration = outcome.get("duration")
            if isinstance(duration, float):
                self.dispatch.observe(rec.queue, duration)
            rec.result = outcome["result"]
            rec.result_blob = outcome["result_blob"]
            rec.failure_reason = None
            self._set_status(rec, TaskStatus.COMPLETE)
            await self._after_final(rec)
            return
        rec.failure_reason = outcome["error"]
        if outcome["retryable"] and rec.attempts <= rec.spec.retries:
            self._set_status(rec, RETRY)
            await self._persist(rec)
            # Back off a little, so a cluster-wide outage does not burn every retry at once.
            await asyncio.sleep(min(RETRY_BACKOFF * 2 ** (rec.attempts - 1), 10.0))
            if rec.status is RETRY and not rec.run:  # not cancelled or resubmitted meanwhile
                self.dispatch.submit(rec)
        else:
            self._finish(rec, TaskStatus.FAILED)

    def _on_timeout(self, task_id: str, run: str) -> None:
        rec = self.tasks.get(task_id)
        if rec is None or rec.run != run or rec.status is not RUNNING:
            return
        rec.failure_reason = f"attempt {rec.attempts} ran past the timeout of {rec.spec.timeout} s"
        self.dispatch.stop(rec)
        self._finish(rec, TaskStatus.TIMEOUT)

    def _schedule_ttl(self, rec: TaskRecord, now: float) -> None:
        delay = max(0.0, rec.created_at + rec.spec.ttl - now)
        loop = asyncio.get_running_loop()
        self.ttl_timers[rec.id] = loop.call_later(delay, self._on_ttl, rec.id)

    def _on_ttl(self, task_id: str) -> None:
        self.ttl_timers.pop(task_id, None)
        rec = self.tasks.get(task_id)
        if rec is None or rec.status is not PENDING:
            return
        rec.failure_reason = f"not started within its ttl of {rec.spec.ttl} s"
        self.dispatch.stop(rec)
        self._finish(rec, TaskStatus.EXPIRED)

    # ---- the API that Python, HTTP and the CLI call -----------------------------------

    async def register_queue(self, definition: dict[str, Any], blob: bytes) -> None:
        self._boot()
        digest = definition["spec"]["function"]
        await asyncio.to_thread(self.journal.store_blob, f"{digest}.pkl", blob)
        self.dispatch.add_function(digest, blob)
        self.queues[definition["name"]] = definition
        self.commits.stage("queue", definition["name"], definition)
        await self.commits.commit()

    async def queue_info(self, name: str) -> dict[str, Any] | None:
        self._boot()
        return self.queues.get(name)

    async def submit(
        self, queue: str, items: list[dict[str, Any]], client: str | None = None
    ) -> list[str]:
        """Store new tasks, then start them. Items: {"id", "payload", "overrides"}.

        A `client` holding a lease on the queue (see `lease`) fills its leased slots first.
        """
        self._boot()
        records = self._admit(queue, items, client)
        await self._stored(records)
        return [it["id"] for it in items]

    async def submit_each(
        self, calls: list[tuple[str, list[dict[str, Any]]]]
    ) -> list[list[str] | RaybeamError]:
        """`submit` for several callers at once (the HTTP API's concurrent requests): each
        call is admitted or refused on its own, and all are stored in one write."""
        self._boot()
        answers: list[list[str] | RaybeamError] = []
        records: list[TaskRecord] = []
        for queue, items in calls:
            try:
                records += self._admit(queue, items, None)
            except RaybeamError as exc:
                answers.append(exc)
            else:
                answers.append([it["id"] for it in items])
        await self._stored(records)
        return answers

    def _admit(
        self, queue: str, items: list[dict[str, Any]], client: str | None
    ) -> list[TaskRecord]:
        """New records for the items not stored yet, if the queue has room for them."""
        definition = self._definition(queue)
        new = [it for it in items if it["id"] not in self.tasks]
        covered = min(self.leases.own(queue, client), len(new))
        if len(new) - covered > self._free(queue):
            cap = definition["max_pending_tasks"]
            raise QueueFull(
                f"queue {queue!r} holds {self.depth[queue]} unfinished tasks; its "
                f"max_pending_tasks is {cap}, so {len(new)} more do not fit. Wait for tasks "
                "to finish or raise max_pending_tasks."
            )
        if covered and client is not None:
            self.leases.use(queue, client, covered)
        now = time.time()
        records = []
        for item in new:
            spec = self._spec(queue, definition, item.get("overrides") or {})
            rec = TaskRecord(id=item["id"], queue=queue, spec=spec, created_at=now, updated_at=now)
            self.tasks[rec.id] = rec
            self.payloads[rec.id] = item["payload"]
            self.commits.stage("payload", rec.id, item["payload"])
            self.depth[queue] += 1
            records.append(rec)
        return records

    async def _stored(self, records: list[TaskRecord]) -> None:
        """Wait until new records are stored, then start them."""
        await self._persist(*records)
        for rec in records:
            if rec.status is PENDING:
                self._schedule_ttl(rec, rec.created_at)
                self.dispatch.submit(rec)

    async def lease(self, queue: str, client: str, want: int) -> int:
        """Set aside up to `want` more slots for `client`'s next puts; returns its slots now."""
        self._boot()
        self._definition(queue)
        return self.leases.grant(queue, client, want, self._free(queue))

    def _definition(self, queue: str) -> dict[str, Any]:
        definition = self.queues.get(queue)
        if definition is None:
            raise QueueNotFound(f"no queue named {queue!r} is registered")
        return definition

    def _free(self, queue: str) -> int:
        """Slots of `queue` that neither unfinished tasks nor leases hold."""
        cap: int = self.queues[queue]["max_pending_tasks"]
        return cap - self.depth[queue] - self.leases.total(queue)

    def _spec(self, queue: str, definition: dict[str, Any], overrides: dict[str, Any]) -> TaskSpec:
        key = (queue, definition["spec"]["function"], json.dumps(overrides, sort_keys=True))
        spec = self.specs.get(key)
        if spec is None:
            spec = self.specs[key] = TaskSpec(**{**definition["spec"], **overrides})
        return spec

    async def started(self, task_id: str, run: str, container_id: str) -> None:
        """A worker began an attempt (reports from older submissions are ignored)."""
        self._boot()
        rec = self.tasks.get(task_id)
        if rec is None or rec.run != run or rec.status not in (PENDING, RETRY):
            return
        self._start(rec, container_id)
        if rec.spec.timeout > 0:  # only a running attempt times out: timed from its report
            # the worker reports a start START_REPORT_DELAY after it happened
            delay = max(0.0, rec.spec.timeout - START_REPORT_DELAY)
            loop = asyncio.get_running_loop()
            self.attempt_timers[rec.id] = loop.call_later(delay, self._on_timeout, rec.id, run)
        # Stored with the next batch; nobody waits on this, and a registry that dies before
        # storing it finds the task unstarted and runs it again.
        self._dirty(rec)

    async def cancel(self, task_ids: list[str]) -> list[str]:
        self._boot()
        cancelled = []
        for task_id in task_ids:
            rec = self.tasks.get(task_id)
            if rec is None or rec.status.is_final:
                continue
            rec.failure_reason = "cancelled"
            self.dispatch.stop(rec)
            self._finish(rec, TaskStatus.CANCELLED)
            cancelled.append(task_id)
        if cancelled:
            await self._persist()
        return cancelled

    def _stats(self, queue: str) -> dict[str, int]:
        pool = self.dispatch.pools.get(queue)
        active = pool.size if pool is not None else self.running[queue]
        return {"active_containers": active, "queue_depth": self.depth[queue]}

    def _info(self, rec: TaskRecord) -> dict[str, Any]:
        outputs = [hook_out for hook in self.hooks for hook_out in hook.public_outputs(rec)]
        return rec.info(outputs, self._stats(rec.queue))

    async def get(self, task_id: str) -> dict[str, Any] | None:
        self._boot()
        rec = self.tasks.get(task_id)
        return None if rec is None else self._info(rec)

    async def history(self, task_id: str) -> list[tuple[str, float]] | None:
        """Every status the task has had, with the time it began."""
        self._boot()
        rec = self.tasks.get(task_id)
        return None if rec is None else list(rec.history)

    async def output_location(self, task_id: str, name: str | None) -> dict[str, Any] | None:
        """Where a task's output is stored: the storage URL and its key (first one by default)."""
        self._boot()
        rec = self.tasks.get(task_id)
        if rec is None:
            return None
        for output in rec.outputs:
            if name is None or output["name"] == name:
                return {"storage": self.storage_url, "key": output["key"], "name": output["name"]}
        return {"storage": self.storage_url, "key": None, "names": [o["name"] for o in rec.outputs]}

    async def exists(self, task_ids: list[str]) -> list[bool]:
        self._boot()
        return [t in self.tasks for t in task_ids]

    async def statuses(self, task_ids: list[str]) -> dict[str, str | None]:
        """Each task's status name, None for an unknown id (one round trip for many)."""
        self._boot()
        return {
            t: None if (rec := self.tasks.get(t)) is None else rec.status.value for t in task_ids
        }

    async def wait_final(self, task_id: str, timeout: float | None) -> dict[str, Any] | None:
        """The record once final, or as it is when `timeout` seconds pass first."""
        self._boot()
        rec = self.tasks.get(task_id)
        if rec is None:
            return None
        if not rec.status.is_final:
            await self._wait(self.waiters, [task_id], timeout)
        info = self._info(rec)
        info["result_blob"] = rec.result_blob
        return info

    async def watch(self, task_id: str, seen: str | None, timeout: float) -> dict[str, Any] | None:
        """The record once its status differs from `seen` (or after `timeout` seconds)."""
        self._boot()
        rec = self.tasks.get(task_id)
        if rec is None:
            return None
        if rec.status.value == seen and not rec.status.is_final:
            await self._wait(self.watchers, [task_id], timeout)
        return self._info(rec)

    async def wait_any(self, task_ids: list[str], timeout: float) -> list[str]:
        """The ids among `task_ids` that are final or unknown, waiting up to `timeout` seconds
        for the first one."""
        self._boot()

        def done() -> list[str]:
            return [
                t for t in task_ids
                if (rec := self.tasks.get(t)) is None or rec.status.is_final
            ]  # fmt: skip

        finished = done()
        if finished or timeout <= 0:
            return finished
        await self._wait(self.waiters, task_ids, timeout)
        return done()

    async def _wait(
        self,
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
        self._boot()
        out: list[dict[str, Any]] = []
        passed = cursor is None
        for rec in reversed(self.tasks.values()):
            if not passed:
                passed = rec.id == cursor
                continue
            if queue is not None and rec.queue != queue:
                continue
            if status is not None and rec.status.value != status:
                continue
            if len(out) == limit:
                return out, out[-1]["id"]
            out.append(self._info(rec))
        return out, None

    async def queue_stats(self) -> dict[str, dict[str, Any]]:
        self._boot()
        counts: dict[str, Counter[str]] = {name: Counter() for name in self.queues}
        for rec in self.tasks.values():
            counts.setdefault(rec.queue, Counter())[rec.status.value] += 1
        return {name: {**self._stats(name), "by_status": dict(c)} for name, c in counts.items()}

    async def metrics(self) -> dict[str, Any]:
        """Plain data for the HTTP API's `GET /metrics`: `queues` (as `queue_stats()`) and
        the latency histograms of `raybeam.middleware.metrics`."""
        from raybeam.middleware.metrics import LatencyMetrics

        data: dict[str, Any] = {"queues": await self.queue_stats()}
        for hook in self.hooks:
            if isinstance(hook, LatencyMetrics):
                data.update(hook.snapshot())
        return data


def _serialise(value: Any) -> Any:
    if isinstance(value, TaskRecord):
        return value.to_json()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value
