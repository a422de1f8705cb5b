"""The registry's state and transitions, with no Ray in it.

`RegistryCore` holds the records, queues, depths, leases and waiters; it admits new tasks,
applies every status change in one place (`_set_status`: counters, timers, waiters, hooks),
and answers reads from what is stored: a record with a change not yet in the journal is read
only after that change lands. `registry.py` binds it to Ray; dispatch and middleware see it
as a `Host` (host.py). Unit tests build one with a fake `Dispatch`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from raybeam.admission import SpecCache
from raybeam.archive import DEAD, FILE_ROWS, Archive, id_halves
from raybeam.host import Dispatch, Host, Timers
from raybeam.idempotency import IdempotencyKeys
from raybeam.journal import GroupCommit, Journal
from raybeam.leases import Leases
from raybeam.middleware import Middleware
from raybeam.record import TRANSITIONS, TaskRecord, TaskStatus
from raybeam.recovery import everything, load_functions, load_state, resume_decision, stored
from raybeam.wire import Outcome

if TYPE_CHECKING:
    from raybeam.storage import Storage

log = logging.getLogger("raybeam.registry")

RUNNING, RETRY, PENDING = TaskStatus.RUNNING, TaskStatus.RETRY, TaskStatus.PENDING
CANCELLED, FAILED, COMPLETE = TaskStatus.CANCELLED, TaskStatus.FAILED, TaskStatus.COMPLETE


class Once:
    """A step run once and shared by every caller that awaits it meanwhile; a step that
    raised is run again by the next caller."""

    def __init__(self, step: Callable[[], Awaitable[None]]) -> None:
        self.step = step
        self.done = False
        self._running: asyncio.Future[None] | None = None

    async def __call__(self) -> None:
        if self.done:
            return
        if self._running is None:
            self._running = asyncio.ensure_future(self._run())
        running = self._running
        try:
            await asyncio.shield(running)
        except Exception:
            if self._running is running:
                self._running = None
            raise

    async def _run(self) -> None:
        await self.step()
        self.done = True


class RegistryCore:
    def __init__(
        self,
        journal: Journal,
        storage: Storage,
        *,
        output_url_expires: int,
        retention_seconds: float,
        archive_after: float = 300.0,
        incarnation: str,
        dispatch: Callable[[Host], Dispatch],
        middleware: Callable[[Host], list[Middleware]],
    ) -> None:
        self.journal = journal
        self.storage = storage
        self.storage_url = storage.url
        self.output_url_expires = output_url_expires
        self.retention_seconds = retention_seconds
        #: final records leave memory for the archive this long after they end (SPEC §11)
        self.archive_after = archive_after
        # Submissions are numbered per incarnation, so a report from an attempt that an
        # earlier incarnation started can never pass for the current one.
        self.incarnation = incarnation
        self.submissions = 0
        state = load_state(journal)
        self.queues, self.tasks, self.payloads = state.queues, state.tasks, state.payloads
        self.load_problems = state.problems
        #: read in the background once booted (see `archived`): a restart waits for the
        #: live state only, so its cost follows the live tasks, not the history
        self.archive = Archive(journal.fs, journal.root)
        self._archive_read = Once(self._load_archive)
        self.idempotency = IdempotencyKeys(state.idempotency)
        #: output id -> its storage key, so a download finds its file without a listing
        self.output_keys = {o["id"]: o["key"] for r in self.tasks.values() for o in r.outputs}
        #: the newest creation time given: each new record gets a later one (see `created`)
        self.last_created = max((r.created_at for r in self.tasks.values()), default=0.0)
        #: ids of records held out of creation order (brought back from the archive); the
        #: others are held in the order they were made (and load in that order)
        self.out_of_order: set[str] = set()
        #: archive files merged into others or past the retention: (when, their paths),
        #: deleted a minute later by `merge_archive`
        self.retired: list[tuple[float, list[str]]] = []
        #: ids of final records a call is working on (a requeue): the archive leaves them
        self.pinned: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()
        self.running: Counter[str] = Counter()
        #: tasks held by queue and status: queue_stats and /metrics read these, not the tasks
        self.by_status: defaultdict[str, Counter[str]] = defaultdict(Counter)
        for rec in self.tasks.values():
            self.by_status[rec.queue][rec.status.value] += 1
            self.counts[rec.queue] += not rec.status.is_final
            self.running[rec.queue] += rec.status is RUNNING
        self.leases = Leases()
        self.timers = Timers()
        self.specs = SpecCache()
        self.waiters: dict[str, list[asyncio.Future[None]]] = {}
        self.watchers: dict[str, list[asyncio.Future[None]]] = {}
        self.background: set[asyncio.Task[Any]] = set()
        self.commits = GroupCommit(
            journal, lambda: everything(self), lambda: len(self.tasks), stored
        )
        self._writing = False
        self._booted = Once(self._boot)
        self.dispatch = dispatch(self)
        self.hooks = middleware(self)
        #: per hook name, the middleware that define it (the others' hooks do nothing: the
        #: hot path calls only these)
        self.hooked = {
            name: [getattr(h, name) for h in self.hooks if _defines(h, name)]
            for name in ("on_enqueued", "on_started", "on_transition", "on_final")
        }

    # ---- boot -------------------------------------------------------------------------

    async def boot(self) -> None:
        """Once per incarnation, before any call is answered: start the journal's writer,
        load the functions (in a thread), resume every task that was not final. A task that
        cannot resume fails alone, with its reason; a boot that raises is tried again by the
        next call."""
        if self._booted.done:
            return
        if not self._writing:
            self._writing = True
            self.spawn(self.commits.run())
        await self._booted()

    @property
    def booted(self) -> bool:
        return self._booted.done

    async def _boot(self) -> None:
        self.spawn(self._read_archive_soon())
        live = [rec for rec in self.tasks.values() if not rec.status.is_final]
        digests = {rec.spec.function for rec in live}
        digests |= {q["spec"]["function"] for q in self.queues.values()}
        problems = await asyncio.to_thread(load_functions, self.journal, self.dispatch, digests)
        for rec in live:
            try:
                self._resume(rec, problems.get(rec.spec.function))
            except Exception as exc:
                log.exception("could not resume task %s", rec.id)
                self.fail(rec, FAILED, f"could not resume after a registry restart: {exc}")
        self.spawn(self.dispatch.upkeep())
        self.spawn(self._sweep_keys())
        for hook in self.hooks:
            try:
                hook.on_boot()
            except Exception:
                log.exception("hook %s failed at boot", type(hook).__name__)

    async def _sweep_keys(self) -> None:
        while True:
            for name in self.idempotency.expired():
                self.commits.stage("idem", name, None)
            await asyncio.sleep(60)

    def _resume(self, rec: TaskRecord, function_error: str | None) -> None:
        reason = resume_decision(rec, rec.id in self.payloads, function_error)
        if reason is not None:
            self.fail(rec, FAILED, reason)
            return
        if rec.status is RUNNING:
            rec.failure_reason = f"the registry restarted during attempt {rec.attempts}"
            self._set_status(rec, RETRY)
        if rec.status is PENDING:
            self.hook("on_enqueued", rec)
        self.release(rec)

    def release(self, *records: TaskRecord) -> None:
        """Hand records to dispatch now, or each when its schedule comes (a delay or run_at)."""
        now = time.time()
        ready = []
        for rec in records:
            wait = 0.0 if rec.scheduled_for is None else rec.scheduled_for - now
            if rec.status is PENDING and wait > 0:
                self.timers.later("delay", rec.id, wait, partial(self._due, rec.id))
            else:
                ready.append(rec)
        self.dispatch.submit_all(ready)

    def _due(self, task_id: str) -> None:
        rec = self.tasks.get(task_id)
        if rec is not None and rec.status is PENDING and not rec.run:
            self.dispatch.submit(rec)

    # ---- the Host protocol ------------------------------------------------------------

    def task(self, task_id: str) -> TaskRecord | None:
        return self.tasks.get(task_id)

    def records(self) -> Iterable[TaskRecord]:
        return list(self.tasks.values())

    def definition(self, queue: str) -> dict[str, Any] | None:
        return self.queues.get(queue)

    def payload(self, task_id: str) -> str | None:
        return self.payloads.get(task_id)

    def depth(self, queue: str) -> int:
        return self.counts[queue]

    def waiting(self, queue: str) -> int:
        return self.counts[queue] - self.running[queue]

    def new_run(self) -> str:
        self.submissions += 1
        return f"{self.incarnation}-{self.submissions}"

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task

    def stage(self, rec: TaskRecord) -> None:
        self.commits.stage("task", rec.id, rec)

    async def persist(self, *records: TaskRecord) -> None:
        for rec in records:
            self.stage(rec)
        await self.commits.commit()

    def forget(self, rec: TaskRecord) -> None:
        if self.tasks.get(rec.id) is rec and rec.status.is_final:
            del self.tasks[rec.id]
            self.commits.stage("task", rec.id, None)
            self.by_status[rec.queue][rec.status.value] -= 1
            for output in rec.outputs:
                self.output_keys.pop(output["id"], None)
            if self.payloads.pop(rec.id, None) is not None:
                self.commits.stage("payload", rec.id, None)

    def public_outputs(self, rec: TaskRecord) -> list[dict[str, Any]]:
        return [out for hook in self.hooks for out in hook.public_outputs(rec)]

    # ---- the archive ------------------------------------------------------------------

    async def archived(self) -> Archive:
        """The archive, once its index is read (in a thread: calls that need no archive are
        answered meanwhile). A read that failed is tried again by the next caller."""
        await self._archive_read()
        return self.archive

    @property
    def archive_ready(self) -> bool:
        return self._archive_read.done

    async def _read_archive_soon(self) -> None:
        try:
            await self.archived()
        except Exception:  # the next call that needs the archive tries again
            log.exception("could not read the archive's index")

    async def _load_archive(self) -> None:
        archive = Archive(self.journal.fs, self.journal.root)  # a failed try leaves no rows
        # rows past the retention read as gone, as they did before the restart: their task
        # may have had a newer row in a file retention removed already
        expired = time.time() - self.retention_seconds
        problems = await asyncio.to_thread(archive.load, expired)
        # a final task stored again since it was archived (requeued, or a crash came between
        # its archive file and the journal's deletion): the copy in memory counts
        archive.bury_many(r.id for r in self.tasks.values() if r.status.is_final)
        self.archive = archive
        for problem in problems:
            log.warning("registry archive: %s", problem)
        self.load_problems += problems

    def may_write(self) -> bool:
        return self.commits.allowed() and self.commits.current()

    async def archive_ended(self, older_than: float) -> int:
        """Move final records that ended more than `older_than` seconds ago (and that no
        middleware still needs, such as an undelivered webhook) into an archive file, then
        out of memory and the journal; how many moved.

        The file is written in a thread while calls go on. A record that changed meanwhile
        (requeued, say) stays in memory; its archived copy is marked dead, and a later
        sweep archives it again.
        """
        await self.archived()
        if not self.may_write():
            return 0  # fenced or lapsed: a file now could clash with the lease's holder
        cutoff = time.time() - older_than
        batch = []
        for rec in self._made_before(cutoff):
            if (
                rec.status.is_final
                and (rec.ended_at or rec.updated_at) < cutoff
                and not self.commits.pending("task", rec.id)
                and rec.id not in self.pinned
                and id_halves(rec.id) is not None  # ids are UUIDs; any other stays here
                and not any(hook.keeps(rec) for hook in self.hooks)
            ):
                batch.append(rec)
                if len(batch) == FILE_ROWS:
                    break
        if not batch:
            return 0
        marks = {rec.id: _mark(rec) for rec in batch}
        payloads = {r.id: p for r in batch if (p := self.payloads.get(r.id)) is not None}
        written = await asyncio.to_thread(self.archive.write, batch, payloads)
        self.archive.adopt(written)
        for rec in batch:
            if (
                self.tasks.get(rec.id) is rec
                and _mark(rec) == marks[rec.id]
                and rec.id not in self.pinned
            ):
                self.forget(rec)
            else:
                self.archive.bury(rec.id)
        await self.commits.commit()
        return len(batch)

    def retire(self, paths: list[str]) -> None:
        self.retired.append((time.time(), paths))

    async def merge_archive(self) -> int:
        """Merge small archive files once (see `Archive.mergeable`); how many files went.
        Files merged (or left with no current row) leave the index at once and storage a
        minute later, so reads that found them before finish."""
        await self.archived()
        archive, now = self.archive, time.time()
        if not self.may_write():
            return 0
        due = [path for at, paths in self.retired if at <= now - 60 for path in paths]
        if due:
            self.retired = [(at, paths) for at, paths in self.retired if at > now - 60]
            await asyncio.to_thread(_remove_files, archive.fs, due)
        expired_before = time.time() - self.retention_seconds
        empty, group = archive.mergeable(expired_before)
        if group:
            current = [file.status != DEAD for file in group]
            written, expired = await asyncio.to_thread(
                archive.merge, group, current, expired_before
            )
            if written is not None:
                merged = archive.adopt(written)
                for file, kept in zip(group, current, strict=True):
                    # a row brought back to memory while the merge ran is not current now
                    for row in np.nonzero(kept & (file.status == DEAD))[0]:
                        place = merged.find(int(file.hi[row]), int(file.lo[row]))
                        if place is not None:
                            archive._bury(merged, place)
            if expired and self.may_write():  # rows the merge left out, past the retention
                await asyncio.to_thread(self.storage.remove_folders, expired)
        for file in [*empty, *group]:
            archive.drop(file)  # (a file retention dropped meanwhile is left)
            self.retire(file.paths)
        return len(empty) + len(group)

    def _made_before(self, cutoff: float) -> Iterable[TaskRecord]:
        """The records made before `cutoff` (the others cannot have ended before it), each
        once: those held in creation order up to the first one made later, so a sweep costs
        what is due rather than a walk of every record, then those held out of order."""
        for rec in self.tasks.values():
            if rec.created_at >= cutoff:
                break
            if rec.id not in self.out_of_order:
                yield rec
        for task_id in list(self.out_of_order):
            held = self.tasks.get(task_id)
            if held is None:
                self.out_of_order.discard(task_id)
            elif held.created_at < cutoff:
                yield held

    async def unarchive(self, task_id: str) -> TaskRecord | None:
        """Bring an archived task back into memory (to requeue it); None if unknown."""
        return (await self.unarchive_many([task_id])).get(task_id)

    async def unarchive_many(self, task_ids: Iterable[str]) -> dict[str, TaskRecord]:
        """`unarchive` of many tasks: their rows read in one pass, in a thread. Those found,
        in memory already or brought back, by id."""
        await self.archived()
        wanted = list(dict.fromkeys(task_ids))
        for _ in range(3):  # a file merged or dropped while its rows were read: again
            if not await self._unarchive([t for t in wanted if t not in self.tasks]):
                break
        return {t: held for t in wanted if (held := self.tasks.get(t)) is not None}

    async def _unarchive(self, task_ids: list[str]) -> bool:
        """Bring `task_ids` back from the archive; whether a row read went meanwhile."""
        places = {t: found for t in task_ids if (found := self.archive.locate(t))}
        read = await asyncio.to_thread(self.archive.read_rows, list(places.values()))
        missed = False
        for (rec, payload), task_id in zip(read, places, strict=True):
            file, row = places[task_id]
            if task_id in self.tasks:
                continue  # brought back by another call while the rows were read
            if file.status[row] == DEAD:
                missed = True  # its file merged or dropped: its row is elsewhere, or gone
                continue
            self.archive.bury(task_id)
            self.tasks[rec.id] = rec
            self.out_of_order.add(rec.id)
            self.by_status[rec.queue][rec.status.value] += 1
            for output in rec.outputs:
                self.output_keys[output["id"]] = output["key"]
            if payload is not None:
                self.payloads[rec.id] = payload
                self.commits.stage("payload", rec.id, payload)
            self.stage(rec)
        return missed

    def start(
        self,
        rec: TaskRecord,
        container_id: str | None,
        at: float | None = None,
        then: TaskStatus | None = None,
    ) -> None:
        """An attempt began (and, with `then`, ended so: see `_set_status`)."""
        rec.attempts += 1
        rec.container_id = container_id or rec.container_id
        self._set_status(rec, RUNNING, then)
        if at is not None and rec.attempts == 1:
            rec.started_at = min(at, rec.started_at or at)

    async def settle(self, task_id: str, run: str, outcome: Outcome) -> None:
        await self.settle_many([(task_id, run, outcome)])

    async def settle_many(self, reports: Iterable[tuple[str, str, Outcome]]) -> None:
        """Apply several outcomes, then wait for one commit of them all (a pack's batch of
        reports is stored in one journal write, not one write per task)."""
        done = []
        for task_id, run, outcome in reports:
            try:
                rec = self._settle(task_id, run, outcome)
            except Exception as exc:  # a bug: this task fails alone, its mates go on
                log.exception("could not apply the outcome of task %s", task_id)
                broken = self.tasks.get(task_id)
                if broken is not None:
                    self.fail(broken, FAILED, f"the registry could not apply its outcome: {exc}")
                continue
            if rec is not None:
                done.append(rec)
        if done:
            await self.commits.commit()  # each was staged by its last status change
            for rec in done:
                self._announce(rec)

    def _settle(self, task_id: str, run: str, outcome: Outcome) -> TaskRecord | None:
        """Apply one outcome; the record when it completed (announced once stored)."""
        rec = self.tasks.get(task_id)
        if rec is None or not rec.is_live(run):
            return None
        # the attempt never reported its start (a pack member never does): it ran
        unstarted = rec.status is not RUNNING
        if unstarted and not outcome["ok"]:
            self.start(rec, outcome["container_id"], outcome["started_at"])
        rec.run = ""  # this submission is over: a late report from it must not count
        if outcome["progress"] is not None:
            self._progress(rec, outcome["progress"])
        # the record lists the outputs of the attempt that counts: the latest one
        if rec.outputs or outcome["outputs"]:  # most tasks save none
            for output in rec.outputs:
                self.output_keys.pop(output["id"], None)
            rec.outputs = list(outcome["outputs"])
            for output in rec.outputs:
                self.output_keys[output["id"]] = output["key"]
        if outcome["ok"]:
            busy = outcome.get("busy")
            if isinstance(busy, float) or isinstance(busy := outcome["duration"], float):
                self.dispatch.observe(rec.queue, busy)
            rec.result, rec.result_blob = outcome["result"], outcome["result_blob"]
            rec.result_key = outcome.get("result_key")
            rec.failure_reason = None
            if unstarted:
                self.start(rec, outcome["container_id"], outcome["started_at"], then=COMPLETE)
            else:
                self._set_status(rec, COMPLETE)
            return rec
        reason = outcome["error"] or "the attempt failed"
        asked = (self._ask(hook.retry_delay, rec, outcome) for hook in self.hooks)
        delays = [d for d in asked if d is not None]
        if not delays:
            self.fail(rec, FAILED, reason)
            return None
        rec.failure_reason = reason
        self._set_status(rec, RETRY)
        rec.next_attempt_at = time.time() + min(delays)
        self.timers.later("retry", rec.id, min(delays), lambda: self._retry(task_id))
        return None

    def _retry(self, task_id: str) -> None:
        rec = self.tasks.get(task_id)
        if rec is not None and rec.status is RETRY and not rec.run:
            self.dispatch.submit(rec)

    def fail(self, rec: TaskRecord, status: TaskStatus, reason: str) -> None:
        if rec.status.is_final:
            return
        if status not in TRANSITIONS[rec.status]:
            status = CANCELLED  # a task that never ran cannot fail; it is called off instead
        rec.failure_reason = reason
        self.dispatch.stop(rec)
        self._set_status(rec, status)
        self.spawn(self._after_final(rec))

    # ---- status changes: the one place counters, timers, waiters and hooks follow -------

    def _set_status(self, rec: TaskRecord, new: TaskStatus, then: TaskStatus | None = None) -> None:
        """Move `rec` to `new`; with `then`, on through `new` to `then` in one step (an
        attempt that ran and ended before it reported its start): the hooks see both
        changes, and the journal, timers, waiters and counters only where it ended, once
        (a pack's members did all of that twice)."""
        old = rec.status
        rec.transition(new)
        if then is not None:
            self.hook("on_transition", rec, old, new)
            passed, new = new, then
            rec.transition(new)
        else:
            passed = old
        # staged with every change, so a batch never holds a side effect of a status change
        # (say, the deletion of a final task's arguments) without the status itself
        self.commits.stage("task", rec.id, rec)
        if new.is_final:
            self.timers.cancel_all(rec.id)
        elif old is PENDING:
            self.timers.cancel("ttl", rec.id)  # a started task cannot expire
        elif old is RUNNING:
            self.timers.cancel("timeout", rec.id)  # an ended attempt cannot time out
        if rec.id in self.watchers:
            for fut in self.watchers.pop(rec.id):
                if not fut.done():
                    fut.set_result(None)
        self.hook("on_transition", rec, passed, new)
        if new is RUNNING or old is RUNNING:
            self.running[rec.queue] += (new is RUNNING) - (old is RUNNING)
        held = self.by_status[rec.queue]
        held[old._value_] -= 1  # `.value` takes five times as long, on the hot path
        held[new._value_] += 1
        if new.is_final:
            self.counts[rec.queue] -= 1
            self.dispatch.ended(rec)

    async def _after_final(self, rec: TaskRecord) -> None:
        await self.persist(rec)
        self._announce(rec)

    def _announce(self, rec: TaskRecord) -> None:
        """`rec` is final and stored so: wake its waiters and the hooks."""
        if rec.id in self.waiters:
            for fut in self.waiters.pop(rec.id):
                if not fut.done():
                    fut.set_result(None)
        self.hook("on_final", rec)

    def hook(self, name: str, rec: TaskRecord, *args: Any) -> None:
        """Call hook `name` of every middleware that defines it; one that raises is logged:
        a hook never fails the task."""
        for method in self.hooked[name]:
            try:  # here, not through `_ask`: hooks run several times for every task
                method(rec, *args)
            except Exception:
                _hook_failed(method, rec)

    @staticmethod
    def _ask(method: Callable[..., Any], rec: TaskRecord, *args: Any) -> Any:
        """`method(rec, *args)`, a middleware's hook; one that raises is logged and answers
        None."""
        try:
            return method(rec, *args)
        except Exception:
            _hook_failed(method, rec)
            return None

    def created(self, now: float, count: int = 1) -> list[float]:
        """Creation times for `count` new records: from `now`, or a microsecond after the
        last one given, a microsecond apart, so records sort newest first in the order they
        were admitted (a `map()` of 5,000 calls admits them all at one `now`)."""
        first = max(now, self.last_created + 1e-6)
        times = [first + n * 1e-6 for n in range(count)]
        if times:
            self.last_created = times[-1]
        return times

    def add(self, rec: TaskRecord, payload: str) -> None:
        """A new record and its arguments, staged; started by `stored`."""
        self.tasks[rec.id] = rec
        self.by_status[rec.queue][rec.status._value_] += 1
        self.payloads[rec.id] = payload
        self.commits.stage("payload", rec.id, payload)
        self.commits.stage("task", rec.id, rec)
        self.counts[rec.queue] += 1

    def started(self, task_id: str, run: str, container_id: str) -> None:
        """A worker began an attempt (reports from older submissions are ignored)."""
        rec = self.tasks.get(task_id)
        if rec is None or rec.run != run or rec.status not in (PENDING, RETRY):
            return
        self.start(rec, container_id)
        self.hook("on_started", rec)

    def progress(self, task_id: str, run: str, value: Any) -> None:
        """A running attempt's latest progress (workers coalesce their calls)."""
        rec = self.tasks.get(task_id)
        if rec is not None and rec.is_live(run):
            self._progress(rec, value)

    def _progress(self, rec: TaskRecord, value: Any) -> None:
        if value == rec.progress:
            return
        rec.progress, rec.progress_seq = value, rec.progress_seq + 1
        self.stage(rec)
        for fut in self.watchers.pop(rec.id, []):
            if not fut.done():
                fut.set_result(None)


def _hook_failed(method: Callable[..., Any], rec: TaskRecord) -> None:
    owner = type(getattr(method, "__self__", method)).__name__
    log.exception("hook %s.%s failed for task %s", owner, method.__name__, rec.id)


def _defines(hook: Middleware, name: str) -> bool:
    """`hook` does something in `name` (its class or the instance replaces the default)."""
    method = getattr(hook, name)
    return getattr(method, "__func__", method) is not getattr(Middleware, name)


def _mark(rec: TaskRecord) -> tuple[Any, ...]:
    """What changes when a final record does (a requeue, a webhook attempt)."""
    webhook = rec.webhook or {}
    return (rec.status, rec.updated_at, rec.retried_as, len(webhook.get("attempts", ())))


def _remove_files(fs: Any, paths: list[str]) -> None:
    for path in paths:
        try:
            fs.rm(path)
        except FileNotFoundError:  # an index file may be missing: a crash between the two
            pass
        except Exception:
            log.warning("could not remove archive file %s", path, exc_info=True)
