"""What runs inside a Ray worker for one attempt: context, scratch folder, result, reporting."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import os
import shutil
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import cloudpickle
import ray

from raybeam.config import REGISTRY_NAME, REGISTRY_NAMESPACE
from raybeam.context import TaskContext, attempt_ended, reset_context, set_context
from raybeam.storage import OUTPUTS, storage_from_settings
from raybeam.wire import (
    START_REPORT_DELAY,
    Attempt,
    Outcome,
    decode_payload,
    failed,
    large_result,
    outcome_values,
    succeeded,
)

log = logging.getLogger("raybeam.runner")


@dataclasses.dataclass
class FunctionBundle:
    """What a queue runs: the handler and how to call it. Pickled by value on the client."""

    fn: Callable[..., Any]
    retry_for: tuple[type[BaseException], ...] | None
    wants_context: bool
    on_start: Callable[[], Any] | None = None


_bundles: dict[str, FunctionBundle] = {}


def load_bundle(digest: str, blob: bytes) -> FunctionBundle:
    bundle = _bundles.get(digest)
    if bundle is None:
        bundle = cloudpickle.loads(blob)
        _bundles[digest] = bundle
    return bundle


def _report_starts(ready: list[tuple[tuple[str, str], str]]) -> None:
    """Tell the registry these attempts are running; fire and forget, the result follows
    anyway. The registry is looked up afresh each time: one that restarted is another actor,
    and a cached handle would report to the dead one (and no timeout would be timed)."""
    try:
        registry = ray.get_actor(REGISTRY_NAME, namespace=REGISTRY_NAMESPACE)
    except Exception:  # the result carries the start time and the worker instead
        log.warning("could not find the registry to report %d starts", len(ready), exc_info=True)
        return
    for (task_id, run), container_id in ready:
        try:
            registry.started.remote(task_id, run, container_id)
        except Exception:
            log.warning("could not report the start of task %s", task_id, exc_info=True)


class _StartReporter:
    """One thread per worker process that reports attempts still running after a delay.

    Short attempts need no start report (their result carries the start), which keeps the
    registry off the hot path; the report of a longer one is START_REPORT_DELAY late.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.due: dict[tuple[str, str], tuple[float, str]] = {}
        self.thread: threading.Thread | None = None

    def add(self, task_id: str, run: str, container_id: str) -> None:
        with self.lock:
            self.due[(task_id, run)] = (time.monotonic() + START_REPORT_DELAY, container_id)
            if self.thread is None:
                self.thread = threading.Thread(
                    target=self._loop, name="raybeam-starts", daemon=True
                )
                self.thread.start()

    def discard(self, task_id: str, run: str) -> None:
        with self.lock:
            self.due.pop((task_id, run), None)

    def _loop(self) -> None:
        while True:
            time.sleep(START_REPORT_DELAY / 2)
            now = time.monotonic()
            with self.lock:
                ready = [(k, cid) for k, (at, cid) in self.due.items() if at <= now]
                for key, _ in ready:
                    del self.due[key]
            if ready:
                _report_starts(ready)


_starts = _StartReporter()

#: seconds a pack runs members before it hands back the rest unrun (at least one runs):
#: room beyond the registry's estimate (dispatch.PACK_RUN), which follows recent run times
PACK_BUDGET = 0.05

#: seconds between two progress stores of one attempt, at most
PROGRESS_EVERY = 0.25


class _ProgressReporter:
    """One thread per worker process that sends each attempt's latest progress value at
    most every PROGRESS_EVERY seconds, so a tight loop of `context.progress()` costs a dict
    write per call. The last value also travels with the outcome."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latest: dict[tuple[str, str], Any] = {}
        self.thread: threading.Thread | None = None

    def report(self, task_id: str, run: str, value: Any) -> None:
        with self.lock:
            self.latest[(task_id, run)] = value
            if self.thread is None:
                self.thread = threading.Thread(
                    target=self._loop, name="raybeam-progress", daemon=True
                )
                self.thread.start()

    def discard(self, task_id: str, run: str) -> None:
        with self.lock:
            self.latest.pop((task_id, run), None)

    def _loop(self) -> None:
        while True:
            time.sleep(PROGRESS_EVERY)
            with self.lock:
                ready, self.latest = self.latest, {}
            if not ready:
                continue
            try:
                registry = ray.get_actor(REGISTRY_NAME, namespace=REGISTRY_NAMESPACE)
                for (task_id, run), value in ready.items():
                    registry.progress.remote(task_id, run, value)
            except Exception:  # the outcome carries the last value anyway
                log.warning("could not send the progress of %d tasks", len(ready), exc_info=True)


_progress = _ProgressReporter()


class _ScratchFolders:
    """An empty scratch folder for each attempt. A folder the attempt left empty is kept for
    the next attempt of this worker: a no-op task then costs no mkdir and rmdir, which are
    most of its cost on a busy disk; any folder with something left in it is removed."""

    def __init__(self) -> None:
        self.spare: str | None = None
        self.lock = threading.Lock()  # a warm container runs attempts in several threads
        self.swept = False

    def take(self) -> str:
        with self.lock:
            spare, self.spare = self.spare, None
            sweep, self.swept = not self.swept, True
        if sweep:
            sweep_spares()
        if spare is not None and os.path.isdir(spare):
            return spare
        return tempfile.mkdtemp(prefix=f"raybeam-{os.getpid()}-")

    def give_back(self, folder: str) -> None:
        try:
            with os.scandir(folder) as entries:
                empty = next(entries, None) is None
        except OSError:
            empty = False
        with self.lock:
            keep = empty and self.spare is None
            if keep:
                self.spare = folder
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)


def sweep_spares(root: str | None = None) -> int:
    """Remove the empty spare folders of worker processes that have exited (a worker with
    `max_calls=1` exits after its first attempt and leaves its spare behind); how many.
    Each worker sweeps once, at its first attempt, so spares never outnumber the workers."""
    root = tempfile.gettempdir() if root is None else root
    removed = 0
    try:
        names = os.listdir(root)
    except OSError:
        return 0
    for name in names:
        parts = name.split("-")
        if len(parts) < 3 or parts[0] != "raybeam" or not parts[1].isdigit():
            continue
        try:
            os.kill(int(parts[1]), 0)
            continue  # alive (or another process with that id): leave it
        except ProcessLookupError:
            pass
        except OSError:  # not ours to signal: alive
            continue
        with contextlib.suppress(OSError):  # not empty, or gone meanwhile: left alone
            os.rmdir(os.path.join(root, name))
            removed += 1
    return removed


_scratch = _ScratchFolders()


def call_handler(bundle: FunctionBundle, attempt: Attempt, on_start_value: Any = None) -> Outcome:
    """Run the handler once in a fresh scratch folder and describe how it ended."""
    args, kwargs = decode_payload(attempt.payload)
    ctx = TaskContext(
        task_id=attempt.task_id,
        queue=attempt.queue,
        attempt=attempt.attempt,
        on_start_value=on_start_value,
        callback_url=attempt.callback_url,
        timeout=attempt.timeout,
        storage_url=attempt.storage_url,
        report_progress=lambda value: _progress.report(attempt.task_id, attempt.run, value),
    )
    if bundle.wants_context:
        kwargs["context"] = ctx
    scratch = _scratch.take()
    previous_cwd = os.getcwd()
    token = set_context(ctx)
    os.chdir(scratch)
    try:
        value = bundle.fn(*args, **kwargs)
        if inspect.isawaitable(value):
            value = asyncio.run(_await(value))
        # tasks the handler put are stored before the attempt ends: the worker may exit
        # right after it (max_calls), before a batch of puts went out
        attempt_ended()
        outcome = succeeded(value, ctx.saved_outputs)
        large = large_result(outcome)
        if large is not None:  # stored beside the outputs, so the record stays small
            key = f"{OUTPUTS}/{attempt.queue}/{attempt.task_id}/{large[0]}"
            storage_from_settings(attempt.storage_url or None).put_bytes(key, large[1])
            outcome["result"], outcome["result_blob"], outcome["result_key"] = None, None, key
    except Exception as exc:
        retryable = bundle.retry_for is None or isinstance(exc, bundle.retry_for)
        outcome = failed(traceback.format_exc(), retryable, ctx.saved_outputs)
    finally:
        _progress.discard(attempt.task_id, attempt.run)
        os.chdir(previous_cwd)
        reset_context(token)
        _scratch.give_back(scratch)
    outcome["progress"] = ctx.last_progress
    return outcome


async def _await(value: Any) -> Any:
    return await value


def execute(
    bundle: FunctionBundle, attempt: Attempt, container_id: str, on_start_value: Any = None
) -> Outcome:
    """Run one attempt and describe how it ended, for the registry that awaits it."""
    started_at = time.time()
    queued = _waited_for_cpu()
    _starts.add(attempt.task_id, attempt.run, container_id)
    try:
        outcome = call_handler(bundle, attempt, on_start_value)
    finally:
        _starts.discard(attempt.task_id, attempt.run)
    outcome["container_id"] = container_id
    outcome["started_at"] = started_at
    outcome["duration"] = duration = time.time() - started_at
    # what the handler itself took (running or waiting on I/O), less the time this thread
    # waited for a core: with fractional CPUs many workers share a core, and a no-op that
    # waited 30 ms for one is still a no-op worth packing
    outcome["busy"] = max(0.0, duration - (_waited_for_cpu() - queued))
    return outcome


def _waited_for_cpu() -> float:
    """Seconds this thread has spent runnable but waiting for a CPU (Linux; 0 elsewhere)."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def run_attempt(digest: str, blob: bytes, *fields: Any) -> Outcome:
    """The body of the Ray task the registry submits for each attempt of a plain queue.

    The attempt travels as plain values (`Attempt.fields()`): Ray sends those without pickling.
    """
    worker_id = ray.get_runtime_context().get_worker_id()
    return execute(load_bundle(digest, blob), Attempt(*fields), worker_id)


def run_pack(digest: str, blob: bytes, attempts: list[list[Any]]) -> list[list[Any]]:
    """Several tiny attempts in one Ray task, one after the other, each in its own folder;
    their outcomes (`wire.outcome_values`), in order, returned together.

    The members run until the pack has run PACK_BUDGET seconds; the outcomes returned may
    be fewer than the members, and the registry sends the rest (never started) again. So
    a pack whose tasks turned out slower than the registry thought ends soon, and a worker
    crash loses at most that long of outcomes. One plain return costs the registry a third
    of what a streaming generator's reports did."""
    worker_id = ray.get_runtime_context().get_worker_id()
    bundle = load_bundle(digest, blob)
    outcomes: list[list[Any]] = []
    ends = time.monotonic() + PACK_BUDGET
    for fields in attempts:
        outcomes.append(outcome_values(execute(bundle, Attempt(*fields), worker_id)))
        if time.monotonic() >= ends:
            break
    return outcomes


_remotes: dict[tuple[int | None, bool], Any] = {}


def remote_attempt(max_calls: int | None = None, packed: bool = False) -> Any:
    """The Ray remote function for plain attempts (or packs of them); `max_calls` is fixed per
    remote function. The registry retries (it counts attempts and knows each failure's
    cause), never Ray.
    """
    fn = _remotes.get((max_calls, packed))
    if fn is None:
        options: dict[str, Any] = {"max_retries": 0}
        if max_calls is not None:
            options["max_calls"] = max_calls
        fn = ray.remote(**options)(run_pack if packed else run_attempt)
        _remotes[(max_calls, packed)] = fn
    return fn
