"""Archived tasks on a real local Ray with the HTTP API (RAYBEAM_ARCHIVE_AFTER_SECONDS=1):
every read answers as it did before the task left memory, across a registry restart too."""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
import urllib.request
from pathlib import Path

from _cluster import start_local_ray

import raybeam
from raybeam import Output, cli, connection, task_queue
from serve_app.deployment import deploy
from tests.support.registry import kill_registry

assert os.environ["RAYBEAM_ARCHIVE_AFTER_SECONDS"] == "1"
start_local_ray(num_cpus=2)
BIG = "y" * 100_000


@task_queue(name="arch", cpu=0.5, retries=0)
def work(n: int) -> object:
    if n == 2:
        raise ValueError("two")
    if n == 3:
        Output.from_bytes("o.txt", b"an output").save()
    if n == 4:
        return BIG
    return {"n": n}


def wait_until(predicate: object, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def http(path: str) -> bytes:
    with urllib.request.urlopen(f"{base}{path}", timeout=30) as response:
        return bytes(response.read())


def snapshot_of(task: raybeam.Task) -> dict[str, object]:
    """What the reads say of a task, links aside (they are signed afresh each time)."""
    info = task.info()
    info.pop("outputs")
    info.pop("stats")
    return {
        "info": info,
        "status": task.status().value,
        "result": task.result(timeout=5) if task.status().value == "COMPLETE" else None,
        "outputs": [o.name for o in task.outputs()],
    }


port = int(os.environ["RAYBEAM_HTTP_PORT"])
base = deploy("127.0.0.1", port)
tasks = work.map([{"n": i} for i in range(6)])
raybeam.wait(tasks, timeout=120)
before = {t.id: snapshot_of(t) for t in tasks}
listed = [t.id for t in raybeam.list_tasks(queue="arch", limit=100)]
assert sorted(listed) == sorted(before), listed
storage = Path(os.environ["RAYBEAM_STORAGE"])
wait_until(lambda: connection.call("ping")["tasks"] == 0, "the tasks never left memory")
files = list((storage / "registry" / "archive").glob("*.parquet"))
print(f"archived into {len(files)} file(s)")


def every_read_is_the_same(when: str) -> None:
    for task in tasks:
        assert snapshot_of(task) == before[task.id], (when, task.id)
    assert [t.id for t in raybeam.list_tasks(queue="arch", limit=100)] == listed, when
    # page by page, across the boundary
    paged: list[str] = []
    cursor = None
    while True:
        query = "/v2/task/?queue=arch&limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = json.loads(http(query))
        paged += [t["id"] for t in page["tasks"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert paged == listed, (when, paged)
    failed = json.loads(http("/v2/task/?queue=arch&status=FAILED"))["tasks"]
    assert [t["id"] for t in failed] == [t.id for t in tasks if before[t.id]["status"] == "FAILED"]
    record = json.loads(http(f"/v2/task/{tasks[4].id}/"))
    assert record["status"] == "COMPLETE" and record["result"] == BIG, when
    events = http(f"/v2/task/{tasks[0].id}/subscribe").decode()
    assert events.count("event: status") == 1 and '"COMPLETE"' in events, events
    (output,) = tasks[3].outputs()
    with urllib.request.urlopen(output.url, timeout=30) as response:
        assert response.read() == b"an output", when
    out = io.StringIO()  # `raybeam task get`, in this process (on its Ray connection)
    with contextlib.redirect_stdout(out):
        code = cli.main(["task", "get", tasks[2].id])
    assert code == 0 and json.loads(out.getvalue())["status"] == "FAILED", out.getvalue()
    held = connection.call("queue_stats")["arch"]["by_status"]
    assert held == {"COMPLETE": 5, "FAILED": 1}, (when, held)
    print(f"{when}: every read the same ({held})")


every_read_is_the_same("archived")
# a restart reads the live state (none) and the archive's index, not the history
kill_registry()  # gone, so the ping below starts the next one
t0 = time.monotonic()
assert connection.call("ping")["tasks"] == 0
print(f"restart: first answer after {time.monotonic() - t0:.2f} s")
every_read_is_the_same("after a restart")
# a requeue of an archived task: linked both ways
(again,) = raybeam.retry_tasks([tasks[2].id])
assert raybeam.get_task(tasks[2].id).info()["retried_as"] == again.id
assert again.info()["retry_of"] == tasks[2].id
print("requeued an archived task")
