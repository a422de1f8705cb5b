"""The registry's CPU per task, before and after: this checkout against an older commit, in
one run, on the same machine, in turns.

`python -m benchmarks.registry_cpu_before [COMMIT]` (default: c8dbbb7, main when the
state-that-scales issue was filed) checks COMMIT out into a temporary git worktree, then runs
RAYBEAM_BENCH_PAIRS (2) pairs of measurements, the older checkout first in each pair. A
measurement is a child process, run in one checkout's folder, with its own private local Ray
(2 CPUs, loopback) whose `raybeam` (the driver's, the registry's and the workers': the child
checks the first two) comes from that checkout; it runs RAYBEAM_BENCH_ROUNDS (3) rounds of
RAYBEAM_BENCH_TASKS (8,000) no-op tasks by `map()` and by a `.put()` loop, through the public
API only (so an old commit runs it too), and reads the registry process's CPU time from /proc.
Each pair prints both medians and after / before. Not part of `python -m benchmarks`: it needs
the git history."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TASKS = int(os.environ.get("RAYBEAM_BENCH_TASKS", "8000"))
ROUNDS = int(os.environ.get("RAYBEAM_BENCH_ROUNDS", "3"))
PAIRS = int(os.environ.get("RAYBEAM_BENCH_PAIRS", "2"))
BEFORE = "c8dbbb7"
HERE = Path(__file__).resolve().parent.parent
SHAPES = ("map()", ".put() loop")


def noop(x: int) -> int:
    return x


def registry_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().split(")")[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(checkout: str) -> dict[str, object]:
    """One child's measurement of the raybeam in `checkout`: CPU ms per task by shape."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    guard = importlib.util.spec_from_file_location("offline", HERE / "tests/support/offline.py")
    assert guard is not None and guard.loader is not None
    offline = importlib.util.module_from_spec(guard)
    guard.loader.exec_module(offline)  # this checkout's loopback guard, whatever the old has
    offline.keep_on_loopback()
    sys.path.insert(0, checkout)  # before raybeam is imported
    root = tempfile.mkdtemp(prefix="rbv-", dir="/tmp")
    os.environ["RAYBEAM_STORAGE"] = os.path.join(root, "storage")
    import ray

    import raybeam
    from raybeam.config import REGISTRY_NAME, REGISTRY_NAMESPACE

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level=logging.ERROR,
        _temp_dir=os.path.join(root, "ray"),
    )
    try:
        queue = raybeam.task_queue(noop, name="noop", cpu=1, max_pending_tasks=10 * TASKS)
        with contextlib.redirect_stdout(io.StringIO()):
            raybeam.wait(queue.map(list(range(500))))  # warm: workers, the registry
        handle = ray.get_actor(REGISTRY_NAME, namespace=REGISTRY_NAMESPACE)
        pid, registry_code = ray.get(
            handle.__ray_call__.remote(
                lambda self: (os.getpid(), sys.modules[type(self).__module__].__file__)
            )
        )
        enqueue = {
            "map()": lambda: queue.map(list(range(TASKS))),
            ".put() loop": lambda: [queue.put(i) for i in range(TASKS)],
        }
        cost: dict[str, list[float]] = {shape: [] for shape in SHAPES}
        for _ in range(ROUNDS):
            for shape in SHAPES:
                before = registry_seconds(pid)
                with contextlib.redirect_stdout(io.StringIO()):
                    raybeam.wait(enqueue[shape]())
                cost[shape].append(1000 * (registry_seconds(pid) - before) / TASKS)
        return {
            "driver": raybeam.__file__,
            "registry": registry_code,
            "ms": {shape: statistics.median(c) for shape, c in cost.items()},
        }
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)


def child(checkout: str) -> dict[str, object]:
    """`measure(checkout)` in a fresh interpreter; its last line of output is the answer. It
    runs in `checkout`: Ray puts the driver's working folder first on its workers' paths."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", checkout],
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=900,
        check=True,
    ).stdout
    answer: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    for part in ("driver", "registry"):  # the code measured is the checkout's, not ours
        if not str(answer[part]).startswith(checkout + os.sep):
            raise RuntimeError(f"{part} ran {answer[part]}, not the code in {checkout}")
    return answer


def main(commit: str) -> None:
    worktree = tempfile.mkdtemp(prefix="rbv-before-", dir="/tmp")
    git = ["git", "-C", str(HERE)]
    subprocess.run([*git, "worktree", "add", "--detach", worktree, commit], check=True)
    try:
        print(
            f"{TASKS:,} tasks, medians of {ROUNDS} rounds; before: {commit}, after: this checkout"
        )
        for pair in range(1, PAIRS + 1):
            started = time.monotonic()
            before, after = child(worktree)["ms"], child(str(HERE))["ms"]
            assert isinstance(before, dict) and isinstance(after, dict)
            for shape in SHAPES:
                print(
                    f"pair {pair}, {shape}: before {before[shape]:.3f} ms per task, "
                    f"after {after[shape]:.3f} ({after[shape] / before[shape]:.3f}x)"
                )
            print(f"pair {pair}: {time.monotonic() - started:.0f} s")
    finally:
        subprocess.run([*git, "worktree", "remove", "--force", worktree], check=False)
        shutil.rmtree(worktree, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        print(json.dumps(measure(os.path.abspath(sys.argv[2]))))
    else:
        main(sys.argv[1] if len(sys.argv) > 1 else BEFORE)
