"""The registry core without Ray: a real journal on a temp folder, a fake dispatch."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from raybeam import middleware
from raybeam.admission import SPEC_CACHE
from raybeam.core import RegistryCore
from raybeam.dispatch import Dispatcher
from raybeam.errors import IdempotencyConflict, QueueFull, QueueNotFound, TaskNotFinal
from raybeam.host import Host
from raybeam.intake import Intake
from raybeam.middleware.age_limit import SWEEP_AFTER, AgeLimit
from raybeam.middleware.retries import Retries, backoff
from raybeam.reads import Reads
from raybeam.record import TaskRecord, TaskSpec, TaskStatus
from raybeam.recovery import RESTART_ALLOWANCE, resume_decision
from raybeam.wire import Outcome, failed, succeeded
from tests.support.cores import definition, dispatched, item, make_core, run

S = TaskStatus


def ok(value: Any = 1) -> Outcome:
    return succeeded(value, [])


# ---- admission and leases -------------------------------------------------------------


def test_admission_refuses_past_the_cap_and_counts_leases(tmp_path: Path) -> None:
    async def scenario(core: RegistryCore) -> None:
        await Intake(core).register_queue(definition(cap=4), b"blob")
        with pytest.raises(QueueNotFound):
            await Intake(core).submit("nope", [item("x")])
        assert await Intake(core).submit("q", [item("a"), item("b")]) == ["a", "b"]
        assert await Intake(core).submit("q", [item("a")]) == ["a"]  # idempotent by id
        assert core.depth("q") == 2
        assert Intake(core).lease("q", "c1", 8) == 1  # half the free room at most
        with pytest.raises(QueueFull, match="max_pending_tasks is 4"):
            await Intake(core).submit("q", [item("c"), item("d")])  # one slot is leased to c1
        await Intake(core).submit("q", [item("c")])  # the last free slot
        await Intake(core).submit("q", [item("d")], client="c1")  # c1's leased slot
        assert core.depth("q") == 4
        with pytest.raises(QueueFull):
            await Intake(core).submit("q", [item("e")], client="c1")
        assert [t for t, _ in dispatched(core).submitted] == ["a", "b", "c", "d"]

    run(tmp_path, scenario)


# ---- transitions and their side effects -------------------------------------------------


def test_a_task_walks_to_complete_with_counters_timers_and_waiters(tmp_path: Path) -> None:
    async def scenario(core: RegistryCore) -> None:
        await Intake(core).register_queue(definition(timeout=60), b"blob")
        await Intake(core).submit("q", [item("a")])
        assert [task for line in age_limit(core).lines.values() for _, task in line] == ["a"]
        (_, run_id), *_ = dispatched(core).submitted
        core.started("a", run_id, "worker-1")
        assert core.running["q"] == 1 and core.timers.has("a", "timeout")
        assert not core.timers.has("a", "ttl")  # a started task cannot expire
        waiter = asyncio.ensure_future(Reads(core).wait_final("a", 10))
        await asyncio.sleep(0)
        await core.settle("a", run_id, ok({"x": 1}))
        info = await waiter
        assert info is not None and info["status"] == "COMPLETE" and info["result"] == {"x": 1}
        assert core.depth("q") == 0 and core.running["q"] == 0
        assert not core.timers.has("a")
        assert "a" in core.payloads  # kept for a requeue, until retention forgets the task
        assert not core.waiters and not core.watchers
        await core.settle("a", run_id, ok(2))  # a late report changes nothing
        assert core.tasks["a"].result == {"x": 1}

    run(tmp_path, scenario)


def test_an_attempt_that_ends_before_it_reports_its_start_ran_in_one_step(
    tmp_path: Path,
) -> None:
    """A pack member reports only its outcome: the record passes through RUNNING to
    COMPLETE at once, and the hooks see both changes; a failed one goes the long way."""
    seen: list[tuple[str, str, str]] = []

    class Transitions(middleware.Middleware):
        def on_transition(self, rec: TaskRecord, old: TaskStatus, new: TaskStatus) -> None:
            seen.append((rec.id, old.value, new.value))

    def hooks(host: Host) -> list[middleware.Middleware]:
        return [*middleware.default(host), Transitions(host)]

    async def scenario(core: RegistryCore) -> None:
        await Intake(core).register_queue(definition(retries=0), b"blob")
        await Intake(core).submit("q", [item("a"), item("b")])
        runs = dict(dispatched(core).submitted)
        began = time.time() - 5
        await core.settle("a", runs["a"], {**ok(3), "container_id": "w1", "started_at": began})
        await core.settle("b", runs["b"], failed("boom", retryable=False))
        a, b = core.tasks["a"], core.tasks["b"]
        assert [s for s, _ in a.history] == ["PENDING", "RUNNING", "COMPLETE"]
        assert [s for s, _ in b.history] == ["PENDING", "RUNNING", "FAILED"]
        assert seen == [
            ("a", "PENDING", "RUNNING"), ("a", "RUNNING", "COMPLETE"),
            ("b", "PENDING", "RUNNING"), ("b", "RUNNING", "FAILED"),
        ]  # fmt: skip
        assert (a.attempts, a.container_id, a.started_at) == (1, "w1", began)
        assert core.running["q"] == 0 and core.depth("q") == 0
        assert dict(core.by_status["q"]) == {"PENDING": 0, "RUNNING": 0, "COMPLETE": 1, "FAILED": 1}
        assert not core.timers.has("a") and not core.timers.has("b")
        stats = Reads(core).metrics()
        assert [row[3] for row in stats["raybeam_task_start_latency_seconds"]] == [2]
        ran = {tuple(row[0]): row[3] for row in stats["raybeam_task_run_duration_seconds"]}
        assert ran == {("q", "COMPLETE"): 1, ("q", "FAILED"): 1}
        await core.persist()
        reloaded = make_core(tmp_path)
        assert [s for s, _ in reloaded.tasks["a"].history] == ["PENDING", "RUNNING", "COMPLETE"]

    run(tmp_path, scenario, hooks)


def test_records_in_a_row_share_a_route_and_keep_their_order(tmp_path: Path) -> None:
    """The real dispatcher (nothing sent to Ray: its flush is held): records of one spec in
    a row are routed once, a different spec between them gets its own route, every record
    gets its own attempt, and one without its arguments ends alone."""

    class Held(Dispatcher):
        def _flush(self) -> None:
            self.outbox_flush = False

    core = make_core(tmp_path, dispatch=Held)

    async def main() -> None:
        await core.boot()
        intake = Intake(core)
        await intake.register_queue(definition(), b"blob")
        await intake.submit("q", [item("a"), item("b", timeout=5), item("c"), item("d")])
        later = {"id": "e", "payload": "p", "overrides": {}, "options": {"delay": 60}}
        await intake.submit("q", [later])
        assert isinstance(core.dispatch, Held)
        (lane,) = core.dispatch.lanes.values()
        waiting = lane.pop(10)
        assert [rec.id for rec, _, _, _ in waiting] == ["a", "b", "c", "d"]
        assert [attempt.timeout for _, _, attempt, _ in waiting] == [3600, 5, 3600, 3600]
        assert len({attempt.run for _, _, attempt, _ in waiting}) == 4
        assert all(attempt.run == rec.run for rec, _, attempt, _ in waiting)
        del core.payloads["e"]
        core._due("e")  # its delay is over, and its arguments are gone
        assert core.tasks["e"].status is S.CANCELLED  # it never ran: called off
        assert core.tasks["e"].failure_reason == "the task's arguments were not found"
        for task in list(core.background):
            task.cancel()
        await asyncio.gather(*core.background, return_exceptions=True)

    asyncio.run(main())


def test_stale_reports_are_ignored(tmp_path: Path) -> None:
    async def scenario(core: RegistryCore) -> None:
        await Intake(core).register_queue(definition(), b"blob")
        await Intake(core).submit("q", [item("a")])
        core.started("a", "another-run", "w")
        assert core.tasks["a"].status is S.PENDING

    run(tmp_path, scenario)


def test_reads_wait_for_the_change_to_be_stored(tmp_path: Path) -> None:
    async def scenario(core: RegistryCore) -> None:
        reads = Reads(core)
        await Intake(core).register_queue(definition(), b"blob")
        await Intake(core).submit("q", [item("a")])
        (_, run_id), *_ = dispatched(core).submitted
        core.commits.held = True
        settling = asyncio.ensure_future(core.settle("a", run_id, ok()))
        await asyncio.sleep(0.05)
        assert core.tasks["a"].status is S.COMPLETE  # in memory only
        for read in (
            reads.get("a"),
            reads.statuses(["a"]),
            reads.wait_final("a", 0.01),
            reads.watch("a", "PENDING", 0.01),
            reads.list("q", None, 10, None),
            reads.wait_any(["a"], 0.01),
        ):
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(read, 0.2)
        core.commits.held = False
        info = await asyncio.wait_for(reads.get("a"), 5)
        assert info is not None and info["status"] == "COMPLETE"
        await settling

    run(tmp_path, scenario)


# ---- retries ---------------------------------------------------------------------------


def test_retry_decisions() -> None:
    rec = TaskRecord(id="a", queue="q", spec=TaskSpec(function="f", retries=2))
    hook = Retries(host=None)  # type: ignore[arg-type]
    rec.attempts = 1
    assert hook.retry_delay(rec, failed("boom", retryable=True)) == backoff(1)
    assert hook.retry_delay(rec, failed("boom", retryable=False)) is None
    rec.attempts = 3  # the first attempt and both retries
    assert hook.retry_delay(rec, failed("boom", retryable=True)) is None
    assert [backoff(n) for n in (1, 2, 3)] == [0.25, 0.5, 1.0] and backoff(20) == 10.0


def test_a_failed_attempt_retries_after_the_backoff_then_fails(tmp_path: Path) -> None:
    async def scenario(core: RegistryCore) -> None:
        await Intake(core).register_queue(definition(retries=1), b"blob")
        await Intake(core).submit("q", [item("a")])
        sent = dispatched(core).submitted
        await core.settle("a", sent[-1][1], failed("first", retryable=True))
        rec = core.tasks["a"]
        assert rec.status is S.RETRY and rec.attempts == 1 and len(sent) == 1
        await asyncio.sleep(backoff(1) + 0.1)
        assert len(sent) == 2  # resubmitted once the backoff passed
        await core.settle("a", sent[-1][1], failed("second", retryable=True))
        assert rec.status is S.FAILED and rec.failure_reason == "second"
        assert rec.attempts == 2 and core.depth("q") == 0

    run(tmp_path, scenario)


def test_an_outcome_that_cannot_be_applied_fails_its_task_alone(tmp_path: Path) -> None:
    class Broken(middleware.Middleware):
        def retry_delay(self, rec: TaskRecord, outcome: Outcome) -> float | None:
            raise RuntimeError("a hook with a bug")

    async def scenario(core: RegistryCore) -> None:
        await Intake(core).register_queue(definition(retries=2), b"blob")
        await Intake(core).submit("q", [item(t) for t in "abcd"])
        core.hooks.append(Broken(core))  # retry_delay is asked of every hook
        sent = dict(dispatched(core).submitted)
        bad: Any = {"ok": True}  # no outputs, no result: applying it raises
        await core.settle_many(
            [("a", sent["a"], ok(1)), ("b", sent["b"], bad), ("c", sent["c"], ok(3))]
        )
        await core.settle_many([("d", sent["d"], failed("boom", retryable=True))])
        await core.commits.commit()
        status = {t: core.tasks[t].status for t in "abcd"}
        # b never got as far as its start: a task that never ran is called off, not failed
        assert status == {"a": S.COMPLETE, "b": S.CANCELLED, "c": S.COMPLETE, "d": S.RETRY}
        assert "could not apply its outcome" in (core.tasks["b"].failure_reason or "")
        assert core.tasks["c"].result == 3

    run(tmp_path, scenario)


def test_a_hook_that_raises_is_logged_and_its_task_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(middleware.Middleware):
        def on_transition(self, rec: TaskRecord, old: TaskStatus, new: TaskStatus) -> None:
            raise RuntimeError("a hook with a bug")

        def on_final(self, rec: TaskRecord) -> None:
            raise RuntimeError("a hook with a bug")

    async def scenario(core: RegistryCore) -> None:
        await Intake(core).register_queue(definition(), b"blob")
        await Intake(core).submit("q", [item("a")])
        (sent,) = dispatched(core).submitted
        await core.settle("a", sent[1], ok(7))
        assert core.tasks["a"].status is S.COMPLETE and core.tasks["a"].result == 7

    run(tmp_path, scenario, lambda host: [*middleware.default(host), Broken(host)])
    failures = [r.getMessage() for r in caplog.records if "a hook with a bug" in str(r.exc_info)]
    assert "hook Broken.on_transition failed for task a" in failures
    assert "hook Broken.on_final failed for task a" in failures


def test_a_task_waiting_to_retry_can_fail_and_be_cancelled(tmp_path: Path) -> None:
    async def scenario(core: RegistryCore) -> None:
        await Intake(core).register_queue(definition(retries=3), b"blob")
        await Intake(core).submit("q", [item("a"), item("b")])
        for task_id, run_id in list(dispatched(core).submitted):
            await core.settle(task_id, run_id, failed("x", retryable=True))
        core.fail(core.tasks["a"], S.FAILED, "given up")  # RETRY -> FAILED is allowed
        assert await Intake(core).cancel(["b"]) == ["b"]
        assert core.tasks["a"].status is S.FAILED and core.tasks["b"].status is S.CANCELLED
        await asyncio.sleep(backoff(1) + 0.1)
        assert len(dispatched(core).submitted) == 2  # no retry timer outlived them

    run(tmp_path, scenario)


def test_a_pending_task_that_cannot_run_is_cancelled_with_its_reason(tmp_path: Path) -> None:
    async def scenario(core: RegistryCore) -> None:
        await Intake(core).register_queue(definition(), b"blob")
        await Intake(core).submit("q", [item("a")])
        core.fail(core.tasks["a"], S.FAILED, "its function is gone")
        assert core.tasks["a"].status is S.CANCELLED
        assert core.tasks["a"].failure_reason == "its function is gone"

    run(tmp_path, scenario)


# ---- restarts --------------------------------------------------------------------------


def test_resume_decisions() -> None:
    rec = TaskRecord(id="a", queue="q", spec=TaskSpec(function="f", retries=1))
    assert resume_decision(rec, has_payload=True, function_error=None) is None
    assert "arguments" in str(resume_decision(rec, has_payload=False, function_error=None))
    assert resume_decision(rec, True, "the function is gone") == "the function is gone"
    rec.status, rec.attempts = S.RUNNING, 1 + 1 + RESTART_ALLOWANCE
    assert "last allowed" in str(resume_decision(rec, True, None))
    rec.attempts -= 1
    assert resume_decision(rec, True, None) is None


def test_one_task_that_cannot_resume_fails_alone(tmp_path: Path) -> None:
    async def first(core: RegistryCore) -> None:
        await Intake(core).register_queue(definition(), b"blob")
        await Intake(core).register_queue(definition("broken", function="f2"), b"blob2")
        await Intake(core).submit("q", [item("ok"), item("running"), item("no-args")])
        await Intake(core).submit("broken", [item("no-fn")])
        sent = dict(dispatched(core).submitted)
        core.started("running", sent["running"], "w")
        del core.payloads["no-args"]
        core.commits.stage("payload", "no-args", None)
        await core.persist(core.tasks["running"])

    run(tmp_path, first)
    (tmp_path / "storage" / "registry" / "blobs" / "f2.pkl").unlink()

    async def second(core: RegistryCore) -> None:
        assert core.booted
        statuses = {t: r.status for t, r in core.tasks.items()}
        assert statuses == {"ok": S.PENDING, "running": S.RETRY,
                            "no-args": S.CANCELLED, "no-fn": S.CANCELLED}  # fmt: skip
        assert "arguments" in str(core.tasks["no-args"].failure_reason)
        assert "not found" in str(core.tasks["no-fn"].failure_reason)
        assert sorted(t for t, _ in dispatched(core).submitted) == ["ok", "running"]
        assert core.tasks["running"].failure_reason == "the registry restarted during attempt 1"

    run(tmp_path, second)


def test_a_boot_that_raises_is_tried_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import raybeam.core

    calls = 0
    real = raybeam.core.load_functions

    def flaky(*args: Any) -> dict[str, str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("storage away")
        return real(*args)

    monkeypatch.setattr(raybeam.core, "load_functions", flaky)

    async def scenario() -> None:
        core = make_core(tmp_path)
        with pytest.raises(OSError):
            await core.boot()
        assert not core.booted
        await core.boot()
        assert core.booted and calls == 2
        writers = [t for t in core.background if "run" in repr(t.get_coro())]
        assert len(writers) == 1  # one journal writer, whatever the tries
        for task in list(core.background):
            task.cancel()
        await asyncio.gather(*core.background, return_exceptions=True)

    asyncio.run(scenario())


# ---- queue definitions -----------------------------------------------------------------


def test_a_queue_registered_again_gives_new_tasks_its_new_settings(tmp_path: Path) -> None:
    async def scenario(core: RegistryCore) -> None:
        await Intake(core).register_queue(definition(timeout=10, retries=1), b"blob")
        await Intake(core).submit("q", [item("old")])
        await Intake(core).register_queue(definition(timeout=20, retries=5), b"blob")
        await Intake(core).submit("q", [item("new"), item("override", timeout=7)])
        assert (core.tasks["old"].spec.timeout, core.tasks["old"].spec.retries) == (10, 1)
        assert (core.tasks["new"].spec.timeout, core.tasks["new"].spec.retries) == (20, 5)
        assert core.tasks["override"].spec.timeout == 7

    run(tmp_path, scenario)


def test_the_spec_cache_is_bounded(tmp_path: Path) -> None:
    async def scenario(core: RegistryCore) -> None:
        await Intake(core).register_queue(definition(cap=10_000), b"blob")
        for n in range(SPEC_CACHE + 50):
            Intake(core).admit("q", [item(f"t{n}", callback_url=f"https://example.com/{n}")], None)
        assert len(core.specs) == SPEC_CACHE

    run(tmp_path, scenario)


# ---- idempotency, requeue, delays, progress, backoff ----------------------------------


def keyed(task_id: str, key: str, payload: str = "p") -> dict[str, Any]:
    return {"id": task_id, "payload": payload, "overrides": {},
            "options": {"idempotency_key": key}}  # fmt: skip


def test_an_idempotency_key_returns_the_first_task_across_restarts(tmp_path: Path) -> None:
    async def first(core: RegistryCore) -> None:
        intake = Intake(core)
        await intake.register_queue(definition(), b"blob")
        assert await intake.submit("q", [keyed("a", "k1")]) == ["a"]
        assert await intake.submit("q", [keyed("b", "k1")]) == ["a"]  # no new task
        assert "b" not in core.tasks and core.tasks["a"].idempotency_key == "k1"
        with pytest.raises(IdempotencyConflict, match="other arguments"):
            await intake.submit("q", [keyed("c", "k1", payload="other")])
        await intake.register_queue(definition("q2"), b"blob")
        assert await intake.submit("q2", [keyed("d", "k1")]) == ["d"]  # keys are per queue

    run(tmp_path, first)

    async def second(core: RegistryCore) -> None:
        assert await Intake(core).submit("q", [keyed("e", "k1")]) == ["a"]
        core.idempotency.seconds = 0.0  # later keys expire at once
        assert await Intake(core).submit("q", [keyed("f", "k2")]) == ["f"]
        assert await Intake(core).submit("q", [keyed("g", "k2")]) == ["g"]

    run(tmp_path, second)


def test_requeue_links_both_ways_and_keeps_the_final_status(tmp_path: Path) -> None:
    async def scenario(core: RegistryCore) -> None:
        intake = Intake(core)
        await intake.register_queue(definition(retries=0), b"blob")
        await intake.submit("q", [item("a"), item("b")])
        with pytest.raises(TaskNotFinal):
            await intake.requeue(["a"])
        sent = dict(dispatched(core).submitted)
        await core.settle("a", sent["a"], failed("boom", retryable=True))
        ((made),) = await intake.requeue(["a"])
        new = core.tasks[made["task_id"]]
        assert made["retry_of"] == "a" and new.retry_of == "a"
        assert core.tasks["a"].retried_as == new.id and core.tasks["a"].status is S.FAILED
        assert core.payloads[new.id] == "p" and new.spec is core.tasks["a"].spec
        assert new.id in dict(dispatched(core).submitted)
        # by queue and status: only final tasks not requeued already
        await core.settle("b", sent["b"], failed("boom", retryable=True))
        again = await intake.requeue(None, "q", "FAILED", 10)
        assert [m["retry_of"] for m in again] == ["b"]

    run(tmp_path, scenario)


def test_a_delayed_task_waits_and_its_ttl_counts_from_then(tmp_path: Path) -> None:
    async def scenario(core: RegistryCore) -> None:
        intake = Intake(core)
        await intake.register_queue(definition(ttl=1), b"blob")
        delayed = {"id": "a", "payload": "p", "overrides": {}, "options": {"delay": 1.5}}
        await intake.submit("q", [delayed, {**delayed, "id": "b"}])
        rec = core.tasks["a"]
        assert rec.scheduled_for is not None and rec.status is S.PENDING
        assert dispatched(core).submitted == []
        assert await intake.cancel(["b"]) == ["b"]
        await asyncio.sleep(1.7)
        assert [t for t, _ in dispatched(core).submitted] == ["a"]  # b was cancelled
        assert rec.status is S.PENDING  # the ttl of 1 s counts from the scheduled time

    run(tmp_path, scenario)


def age_limit(core: RegistryCore) -> AgeLimit:
    return next(hook for hook in core.hooks if isinstance(hook, AgeLimit))


def test_ttls_expire_waiting_tasks_and_pass_over_started_and_remade_ones(tmp_path: Path) -> None:
    async def scenario(core: RegistryCore) -> None:
        intake = Intake(core)
        await intake.register_queue(definition(ttl=1), b"blob")
        await intake.submit("q", [item("a"), item("b"), item("c", ttl=2), item("d")])
        assert sorted(age_limit(core).lines) == [1, 2]  # a line per ttl
        core.started("b", dict(dispatched(core).submitted)["b"], "w")
        await intake.cancel(["d"])
        core.forget(core.tasks["d"])
        await asyncio.sleep(0.5)
        await intake.submit("q", [item("d")])  # the same id, made again: its own deadline
        await asyncio.sleep(0.7)
        states = {t: core.tasks[t].status for t in "abcd"}
        assert states == {"a": S.EXPIRED, "b": S.RUNNING, "c": S.PENDING, "d": S.PENDING}
        assert "ttl of 1 s" in (core.tasks["a"].failure_reason or "")
        await asyncio.sleep(1.0)
        assert core.tasks["c"].status is S.EXPIRED and core.tasks["d"].status is S.EXPIRED
        assert age_limit(core).lines == {} and age_limit(core).size == 0

    run(tmp_path, scenario)


def test_the_ttl_lines_hold_about_twice_the_waiting_tasks_at_most(tmp_path: Path) -> None:
    async def scenario(core: RegistryCore) -> None:
        intake = Intake(core)
        await intake.register_queue(definition(cap=100_000, ttl=3600), b"blob")
        ages, sizes = age_limit(core), []
        for batch in range(12):
            ids = [f"{batch}-{i}" for i in range(1000)]
            await intake.submit("q", [item(t) for t in ids])
            sent = dict(dispatched(core).submitted)
            for t in ids:
                core.started(t, sent[t], "w")
            sizes.append(ages.size)
        assert ages.kept <= 1000 and max(sizes) <= 2 * 1000 + SWEEP_AFTER
        assert max(sizes) < 12_000  # swept: started tasks did not stay

    run(tmp_path, scenario)


def test_a_delay_survives_a_restart(tmp_path: Path) -> None:
    async def first(core: RegistryCore) -> None:
        await Intake(core).register_queue(definition(), b"blob")
        delayed = {"id": "a", "payload": "p", "overrides": {}, "options": {"delay": 1.0}}
        await Intake(core).submit("q", [delayed])

    run(tmp_path, first)

    async def second(core: RegistryCore) -> None:
        assert dispatched(core).submitted == []
        await asyncio.sleep(1.2)
        assert [t for t, _ in dispatched(core).submitted] == ["a"]

    run(tmp_path, second)


def test_progress_and_next_attempt_at(tmp_path: Path) -> None:
    async def scenario(core: RegistryCore) -> None:
        intake = Intake(core)
        spec = {"retries": 2, "backoff": [5.0, 2.0, 60.0]}
        await intake.register_queue(definition(**spec), b"blob")
        await intake.submit("q", [item("a")])
        (_, run_id), *_ = dispatched(core).submitted
        core.started("a", run_id, "w")
        watcher = asyncio.ensure_future(Reads(core).watch("a", "RUNNING:0", 5))
        core.progress("a", run_id, 0.5)
        info = await watcher
        assert info is not None and info["progress"] == 0.5 and info["version"] == "RUNNING:1"
        core.progress("a", "stale-run", 0.9)
        assert core.tasks["a"].progress == 0.5
        outcome = failed("boom", retryable=True)
        outcome["progress"] = 0.75
        before = time.time()
        await core.settle("a", run_id, outcome)
        rec = core.tasks["a"]
        assert rec.status is S.RETRY and rec.progress == 0.75
        assert rec.next_attempt_at is not None and 4.5 < rec.next_attempt_at - before < 5.5
        info = await Reads(core).get("a")
        assert info is not None and info["next_attempt_at"].endswith("Z")

    run(tmp_path, scenario)
