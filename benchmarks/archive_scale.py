"""History at scale (SPEC §11): 1M archived records + 10k live, against a 1k-record registry.

The million archived records are written straight into archive files (Parquet, as the
registry's archiver writes them, 100,000 per file) before the registry starts: filling them
through Ray would take this 2-core machine half an hour and measure nothing the archive
changes. The 10,000 live records are real tasks, run with `map()` to COMPLETE; they stay in
memory (RAYBEAM_ARCHIVE_AFTER_SECONDS is 300).

Measured, each against the same measure on a registry holding ~1,000 records in this run:
registry RSS; a stored put (p50); `GET` of an archived task (the registry's `get`, p50); a
listing page of 50 at a random archived cursor (p50); restart -> first answer, and restart ->
an archived task's `get` answered (the archive's index is read in the background after the
live state, so only calls that need the archive wait for it).
Goals from the issue: RSS <= 400 MiB, put p50 within +-20% of 1k, GET p50 <= 20 ms, restart
<= 2 s.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from pathlib import Path
from typing import Any

import raybeam
from benchmarks.common import (
    Context,
    Row,
    median,
    quiet,
    registry_pid,
    rss_mib,
    say,
)
from benchmarks.scale import SETTLE, probe
from benchmarks.throughput import noop
from raybeam import connection, task_queue
from raybeam.archive import FILE_ROWS, Archive
from raybeam.record import TaskRecord, TaskSpec, TaskStatus
from raybeam.storage import Storage
from tests.support.registry import kill_registry

QUEUE = "bench_archive"


def synthesize(storage: Path, count: int, spec: TaskSpec) -> list[str]:
    """Write `count` COMPLETE records of QUEUE into archive files; returns their ids."""
    archive = Archive(Storage(str(storage)).fs, str(storage / "registry"))
    ids: list[str] = []
    now = time.time() - 3600
    rng = random.Random(7)
    for start in range(0, count, FILE_ROWS):
        records = []
        for n in range(start, min(count, start + FILE_ROWS)):
            created = now + n * 0.001
            rec = TaskRecord(
                id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                queue=QUEUE, spec=spec, created_at=created, updated_at=created + 0.01,
            )  # fmt: skip
            rec.history += [("RUNNING", created + 0.005), ("COMPLETE", created + 0.01)]
            rec.status, rec.attempts, rec.result = TaskStatus.COMPLETE, 1, {"n": n}
            rec.started_at, rec.ended_at = created + 0.005, created + 0.01
            records.append(rec)
            ids.append(rec.id)
        archive.adopt(archive.write(records, {r.id: "payload" for r in records}))
    return ids


def restart_seconds(archived_id: str | None = None) -> tuple[float, float]:
    """Kill the registry; seconds until its next incarnation answers, and until it answers
    a `get` of `archived_id` (which waits for the archive's index, read in the background)."""
    kill_registry()
    start = time.perf_counter()
    connection.call("ping")
    answered = time.perf_counter() - start
    if archived_id is not None:
        assert connection.call("get", archived_id) is not None
    return answered, time.perf_counter() - start


def measure(queue: Any, archived: list[str], samples: int) -> dict[str, float]:
    time.sleep(SETTLE)  # with the records held, not while the fill still settles
    figures: dict[str, float] = {"rss_mib": rss_mib(registry_pid())}
    figures["put_p50_ms"] = median(probe(queue, samples)["put_ms"])
    picks = random.Random(1).sample(archived, min(samples, len(archived)))
    gets, pages = [], []
    for task_id in picks:
        start = time.perf_counter()
        assert connection.call("get", task_id) is not None
        gets.append(time.perf_counter() - start)
        start = time.perf_counter()
        page, _ = connection.call("list", None, None, 50, task_id)
        pages.append(time.perf_counter() - start)
        assert len(page) == 50 or task_id in archived[:50]
    figures["get_p50_ms"] = median(gets) * 1000
    figures["page_p50_ms"] = median(pages) * 1000
    figures["restart_s"], figures["restart_get_s"] = restart_seconds(picks[0])
    return figures


def registry_on(ctx: Context, prepare: Any) -> Path:
    """A fresh registry on a new storage folder, which `prepare(folder)` fills first."""
    kill_registry()
    ctx.storages += 1
    folder = ctx.root / f"storage-{ctx.storages}"
    prepare(folder)
    os.environ["RAYBEAM_STORAGE"] = str(folder)
    connection.forget_registry()
    return folder


def run(ctx: Context) -> None:
    archived_count = ctx.args.archive_records
    live_count = ctx.args.archive_live
    samples = ctx.args.archive_samples
    say(
        f"\n== archive scale: {archived_count:,} archived + {live_count:,} live records, "
        f"against ~1,000 records =="
    )

    @task_queue(name=QUEUE, cpu=0.25, retries=0, max_pending_tasks=max(live_count, 1000) * 2)
    def work(x: int) -> int:
        return noop(x)

    spec = TaskSpec(**work.definition()[0]["spec"])
    # the baseline: ~1,000 records, all live
    registry_on(ctx, lambda folder: None)
    with quiet():
        raybeam.wait(work.map(list(range(1000))), timeout=600)
    some = [t.id for t in raybeam.list_tasks(queue=QUEUE, limit=500)]
    base = measure(work, some, samples)
    # the scale: the archive written first, then the live tasks run
    started = time.perf_counter()
    archived: list[str] = []
    registry_on(ctx, lambda folder: archived.extend(synthesize(folder, archived_count, spec)))
    wrote = time.perf_counter() - started
    # the files' pages reach the disk now, not during the measures: on ext4 a journal fsync
    # would otherwise wait for the writeback of the hundred megabytes just written
    os.sync()
    first, _ = restart_seconds()
    connection.call("register_queue", *work.definition())  # on this storage too
    with quiet():
        for start in range(0, live_count, 5000):
            raybeam.wait(work.map(list(range(min(5000, live_count - start)))), timeout=1200)
    held = connection.call("ping")["tasks"]
    scale = measure(work, archived, samples)
    say(
        f"  wrote {archived_count:,} archived records in {wrote:.0f} s; first start on them "
        f"{first:.2f} s; {held:,} records in memory"
    )
    goals = {
        "rss_mib": ("registry RSS", "MiB", "<= 400 MiB", scale["rss_mib"] <= 400),
        "put_p50_ms": (
            "stored put p50", "ms", "within +-20%",
            0.8 <= scale["put_p50_ms"] / base["put_p50_ms"] <= 1.2,
        ),
        "get_p50_ms": ("get of an archived task p50", "ms", "<= 20 ms", scale["get_p50_ms"] <= 20),
        "page_p50_ms": ("listing page of 50 at a cursor p50", "ms", "", None),
        "restart_s": ("restart -> first answer", "s", "<= 2 s", scale["restart_s"] <= 2),
        "restart_get_s": ("restart -> an archived task's get answered", "s", "", None),
    }  # fmt: skip
    for key, (metric, unit, target, met) in goals.items():
        ctx.add(
            Row(
                benchmark="archive scale",
                metric=f"{metric}, {archived_count:,} archived + {held:,} live",
                unit=unit,
                value=scale[key],
                baseline_name=f"{metric}, ~1,000 records",
                baseline=base[key],
                better="lower",
                target=target,
                met=met,
            )
        )
