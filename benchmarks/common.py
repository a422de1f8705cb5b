"""What every benchmark shares: the private local Ray, fresh registries, timing and results."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import logging
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import ray

from raybeam import connection
from raybeam.config import REGISTRY_NAME, REGISTRY_NAMESPACE
from tests.support.registry import kill_registry

log = logging.getLogger("benchmarks")


@dataclasses.dataclass
class Row:
    """One line of the results table: raybeam's figure against a baseline from the same run."""

    benchmark: str
    metric: str
    unit: str
    value: float
    baseline_name: str
    baseline: float
    #: "higher" or "lower": which way is better for this metric
    better: str
    target: str = ""
    #: None when the row has no target
    met: bool | None = None

    @property
    def ratio(self) -> float:
        """raybeam / baseline (so > 1 is better for "higher" metrics, worse for "lower")."""
        return self.value / self.baseline if self.baseline else math.nan


@dataclasses.dataclass
class Context:
    args: argparse.Namespace
    #: private temporary folder: Ray's temp dir, storage folders, logs
    root: Path
    #: where latest.md, profile.txt and the plots go
    out: Path
    rows: list[Row] = dataclasses.field(default_factory=list)
    #: detail data for the plots and the extra tables, by benchmark
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    facts: dict[str, str] = dataclasses.field(default_factory=dict)
    storages: int = 0
    #: seconds each benchmark took
    timings: dict[str, float] = dataclasses.field(default_factory=dict)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        ratio = f"{row.ratio:.2f}x" if not math.isnan(row.ratio) else "n/a"
        verdict = "" if row.met is None else (" [target met]" if row.met else " [target NOT met]")
        target = f" (target {row.target})" if row.target else ""
        say(
            f"  {row.metric}: raybeam {fmt(row.value)} {row.unit} vs {row.baseline_name} "
            f"{fmt(row.baseline)} {row.unit} -> ratio {ratio}{target}{verdict}"
        )
        return row

    def note(self, text: str) -> None:
        self.notes.append(text)
        say(f"  note: {text}")


def say(text: str) -> None:
    print(text, flush=True)


def fmt(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def percentile(samples: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def median(samples: Sequence[float]) -> float:
    return statistics.median(samples) if samples else math.nan


def ms(seconds: Sequence[float]) -> list[float]:
    return [s * 1000 for s in seconds]


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Swallow stdout (`.put()` prints one line per task) for the timed part."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# ---- machine facts ----------------------------------------------------------------------


def machine_facts() -> dict[str, str]:
    import psutil

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    mem = psutil.virtual_memory()
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "log", "-1", "--format=%h %s"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "raybeam", "serve_app"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        commit = head + (" (raybeam/ or serve_app/ modified)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return {
        "cores (logical)": str(psutil.cpu_count(logical=True)),
        "cores (physical)": str(psutil.cpu_count(logical=False)),
        "cores usable": str(len(os.sched_getaffinity(0))),
        "memory": f"{mem.total / 2**30:.1f} GiB ({mem.available / 2**30:.1f} GiB available)",
        "cpu": platform.processor() or platform.machine(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "ray": version("ray"),
        "raybeam": version("raybeam"),
        "raybeam commit": commit,
        "celery": version("celery"),
        "rq": version("rq"),
        "redis (client)": version("redis"),
        "load average at start (1, 5, 15 min)": load,
    }


# ---- the private local Ray --------------------------------------------------------------


def start_ray(root: Path) -> None:
    """A local Ray of our own: 2 CPUs, loopback only, temp dir under `root`."""
    import benchmarks
    from tests.support.offline import keep_on_loopback

    keep_on_loopback()  # Ray's cloud-metadata probes stay on this machine
    os.environ["RAYBEAM_STORAGE"] = str(root / "storage-0")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level=logging.ERROR,
        log_to_driver=False,
        object_store_memory=512 * 2**20,
        _temp_dir=str(root / "ray"),
    )
    # Serve deployments and remote functions defined here travel by value: the workers
    # run in other folders, where `benchmarks` is not importable.
    ray.cloudpickle.register_pickle_by_value(benchmarks)


def registry_handle() -> Any:
    return ray.get_actor(REGISTRY_NAME, namespace=REGISTRY_NAMESPACE)


def fresh_registry(ctx: Context) -> None:
    """Stop the registry (its containers stop with it) and start one on empty storage."""
    kill_registry()
    ctx.storages += 1
    os.environ["RAYBEAM_STORAGE"] = str(ctx.root / f"storage-{ctx.storages}")
    connection.forget_registry()
    connection.call("ping")


def raylet_pid() -> int:
    node = ray._private.worker._global_node
    pid: int = node.all_processes["raylet"][0].process.pid
    return pid


def registry_pid() -> int:
    """The PID of this run's registry actor: a `ray::Registry` worker of our raylet."""
    import psutil

    raylet = psutil.Process(raylet_pid())
    for _ in range(100):
        for proc in raylet.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if " ".join(proc.cmdline()).startswith("ray::Registry"):
                    return proc.pid
        time.sleep(0.1)
    raise RuntimeError("no ray::Registry process under this run's raylet")


def rss_mib(pid: int) -> float:
    import psutil

    return float(psutil.Process(pid).memory_info().rss) / 2**20


def missing_modules(*names: str) -> list[str]:
    """The names among `names` that cannot be imported."""
    import importlib.util

    return [n for n in names if importlib.util.find_spec(n) is None]


# ---- where the CPU goes -----------------------------------------------------------------


#: the kinds of process `role` tells apart, in the order the CPU tables show them
ROLES = ["client (driver)", "registry actor", "task workers", "raylet", "gcs"]
ROLES.append("other Ray processes")


def role(proc: Any) -> str:
    """What a process of this run's Ray is, by its title."""
    title = " ".join(proc.cmdline())
    if title.startswith("ray::Registry"):
        return "registry actor"
    if title.startswith(("ray::IDLE", "ray::run_attempt", "ray::raybeam:", "ray::raw_noop")):
        return "task workers"
    if "raylet" in title:
        return "raylet"
    if "gcs_server" in title:
        return "gcs"
    return "other Ray processes"


def our_processes() -> list[Any]:
    """This process, our raylet and everything under it, and our GCS."""
    import psutil

    raylet = psutil.Process(raylet_pid())
    procs = [raylet, *raylet.children(recursive=True), psutil.Process()]
    node: Any = ray._private.worker._global_node
    for info in node.all_processes.get("gcs_server", []):
        procs.append(psutil.Process(info.process.pid))
    return procs


def cpu_by_process() -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) so far of this run's processes, by PID, with their role."""
    import psutil

    out: dict[int, tuple[str, float]] = {}
    me = psutil.Process().pid
    for proc in our_processes():
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            name = "client (driver)" if proc.pid == me else role(proc)
            out[proc.pid] = (name, float(t.user + t.system))
    return out


def cpu_between(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds by role between two `cpu_by_process` readings. A process that exited in
    between takes its seconds with it (Ray ends idle workers), so that is a lower bound."""
    roles = dict.fromkeys(ROLES, 0.0)
    for pid, (name, seconds) in after.items():
        roles[name] += seconds - before.get(pid, (name, 0.0))[1]
    return roles


def task_workers() -> set[int]:
    """PIDs of the task worker processes of this run's Ray."""
    import psutil

    pids = set()
    for proc in our_processes():
        with contextlib.suppress(psutil.Error):
            if role(proc) == "task workers":
                pids.add(proc.pid)
    return pids


@dataclasses.dataclass
class Measured:
    seconds: float
    #: CPU seconds by role during the run (see cpu_between)
    cpu: dict[str, float]
    #: task worker processes at most, sampled every half second
    peak_workers: int
    #: task worker processes started during the run (those seen by the samples)
    new_workers: int
    #: what the measured function returned
    result: Any = None

    def cpu_line(self, n: int) -> str:
        """CPU per task by role, in ms, and the busy cores over the wall time."""
        parts = [f"{name} {1000 * s / n:.3f}" for name, s in self.cpu.items()]
        busy = sum(self.cpu.values()) / self.seconds
        return f"CPU ms/task: {', '.join(parts)}; {busy:.2f} cores busy; " + (
            f"{self.peak_workers} task workers at most, {self.new_workers} started"
        )


def measure(fn: Callable[[], Any]) -> Measured:
    """Time `fn` and split the CPU it cost among this run's processes."""
    import threading

    first = task_workers()
    seen, peak = set(first), [len(first)]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            with contextlib.suppress(Exception):
                now = task_workers()
                seen.update(now)
                peak[0] = max(peak[0], len(now))

    sampler = threading.Thread(target=sample, daemon=True)
    before = cpu_by_process()
    sampler.start()
    start = time.perf_counter()
    try:
        result = fn()
    finally:
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
    seen.update(task_workers())
    cpu = cpu_between(before, cpu_by_process())
    return Measured(seconds, cpu, peak[0], len(seen - first), result)
