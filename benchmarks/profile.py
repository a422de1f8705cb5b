"""The hot path, profiled once: CPU per process, py-spy on the registry and the task workers,
cProfile on the client.

Runs outside the timed benchmarks (profilers slow what they watch) and writes to
`profile.txt`: first the CPU seconds per task that each kind of process spends (psutil, no
profiler attached), then the top Python frames by self time (where the CPU is) and by total
time (what it is for). py-spy runs with `--gil`: it samples only the thread holding the GIL,
since Ray's native threads, blocked in epoll or on locks, would otherwise pass for busy ones;
time in Ray's C++ core without the GIL shows in the CPU table but not in these frames.
"""

from __future__ import annotations

import contextlib
import cProfile
import io
import pstats
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.common import (
    ROLES,
    Context,
    cpu_between,
    cpu_by_process,
    fresh_registry,
    registry_pid,
    say,
    task_workers,
)
from benchmarks.throughput import check_complete, make_queue, run_map, run_puts, run_raw

TOP = 25
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def short(path: str) -> str:
    for marker in ("site-packages/", "lib/python3", "/work/main/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def frame_key(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if m is None:
        return frame.strip()
    return f"{m['func']} ({short(m['file'])})"


def summarise_raw(text: str) -> tuple[int, Counter[str], Counter[str]]:
    """py-spy raw (collapsed) stacks -> (samples, self counts, inclusive counts) by function."""
    total = 0
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame_key(f) for f in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for key in set(frames):
            inclusive[key] += count
    return total, own, inclusive


def table_text(title: str, total: int, counts: Counter[str]) -> str:
    lines = [f"-- {title} (of {total} samples) --"]
    for key, count in counts.most_common(TOP):
        lines.append(f"{100 * count / max(1, total):6.1f}%  {key}")
    return "\n".join(lines)


@contextmanager
def py_spy(pid: int, out: Path) -> Iterator[None]:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    proc = subprocess.Popen(
        [exe, "record", "-p", str(pid), "-f", "raw", "-o", str(out), "-r", "250", "--gil"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    time.sleep(1.0)  # attached
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def client_profile(fn: Callable[[], Any]) -> str:
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.sort_stats("tottime").print_stats(TOP)
    stats.sort_stats("cumulative").print_stats(TOP)
    return re.sub(r"/[^ ]*/(site-packages|lib/python3\.\d+)/", "", buf.getvalue())


def cpu_accounting(queue: Any, n: int, puts: int) -> tuple[str, dict[str, dict[str, float]]]:
    """CPU seconds each kind of process spends per task, for raw Ray and for raybeam."""
    table: dict[str, dict[str, float]] = {}
    per_task: dict[str, int] = {}
    for label, count, work in (
        (f"raw Ray x{n}", n, lambda: run_raw(n)),
        (f"raybeam map({n})", n, lambda: run_map(queue, n)),
        (f"raybeam {puts} x put()", puts, lambda: run_puts(queue, puts)),
    ):
        before = cpu_by_process()
        start = time.perf_counter()
        work()
        wall = time.perf_counter() - start
        row = cpu_between(before, cpu_by_process())
        row["wall"] = wall
        table[label] = row
        per_task[label] = count
    roles = ROLES
    lines = [
        "CPU time per task (ms), by process, measured with psutil (no profiler attached):",
        "",
        f"{'run':<24}{'wall':>8}" + "".join(f"{r[:14]:>16}" for r in roles),
    ]
    for label, row in table.items():
        count = per_task[label]
        lines.append(
            f"{label:<24}{1000 * row['wall'] / count:>8.2f}"
            + "".join(f"{1000 * row.get(r, 0.0) / count:>16.2f}" for r in roles)
        )
    return "\n".join(lines), table


def task_worker_pids() -> list[int]:
    return sorted(task_workers())


def run(ctx: Context) -> None:
    n = ctx.args.tasks
    puts = max(50, n // 4)
    say("\n== profile: CPU per process, py-spy on the registry and workers, cProfile client ==")
    fresh_registry(ctx)
    queue = make_queue("bench_profile", n)
    queue.register()
    check_complete(run_map(queue, 20))
    run_raw(20)
    accounting, table = cpu_accounting(queue, n, puts)
    say("  " + accounting.replace("\n", "\n  "))
    ctx.data["cpu"] = table
    sections = [accounting]
    if shutil.which("py-spy") is None and not (Path(sys.executable).parent / "py-spy").exists():
        ctx.note("profile: py-spy is not installed; CPU accounting only")
    else:
        pid = registry_pid()
        for label, work in (
            (f"map({n}) + wait", lambda: run_map(queue, n)),
            (f"{puts} x put() + wait", lambda: run_puts(queue, puts)),
        ):
            sections.append(profile_phase(ctx, label, work, pid, len(sections)))
    path = ctx.out / "profile.txt"
    path.write_text("\n\n".join(sections) + "\n")
    say(f"  wrote {path}")


def profile_phase(ctx: Context, label: str, work: Callable[[], Any], pid: int, i: int) -> str:
    """py-spy on the registry and on the task workers, cProfile on the client, during `work`."""
    targets = {"registry actor": [pid], "task workers": task_worker_pids()}
    raws = {name: [ctx.root / f"spy-{i}-{p}.txt" for p in pids] for name, pids in targets.items()}
    client: list[str] = []
    with contextlib.ExitStack() as stack:
        for name, pids in targets.items():
            for p, raw in zip(pids, raws[name], strict=True):
                stack.enter_context(py_spy(p, raw))
        client.append(client_profile(work))
    parts = [f"==== {label} ===="]
    for name, files in raws.items():
        text = "\n".join(f.read_text() for f in files if f.exists())
        total, own, inclusive = summarise_raw(text)
        parts.append(
            f"{name} ({len(files)} process(es); py-spy --gil, 250 Hz):\n\n"
            f"{table_text('self time', total, own)}\n\n"
            f"{table_text('total time', total, inclusive)}"
        )
        top = ", ".join(
            f"{k.split(' (')[0]} {100 * c / max(1, total):.0f}%" for k, c in own.most_common(4)
        )
        say(f"  {label}, {name}: {total} samples; top self: {top}")
    parts.append(f"client (cProfile):\n{client[0]}")
    return "\n\n".join(parts)
