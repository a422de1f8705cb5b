"""The raw `Journal.append` rate on local disk with fsync on and off (SPEC §10).

    .venv/bin/python -m benchmarks.fsync [--dir FOLDER] [--seconds 2]

A batch is what the registry's group commit writes at once: one entry per change staged
since the last write (one for a lone put, tens under load), and one fsync per batch. Each
entry is about the size of a task record. No Ray; the folder defaults to a fresh one under
the system's temp folder, which must sit on a real disk for the figures to mean anything
(tmpfs makes fsync free).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from fsspec.implementations.local import LocalFileSystem

from raybeam.journal import Journal

BATCH_SIZES = (1, 64)


def record(i: int) -> dict[str, Any]:
    """An entry about the size of a stored task record (~600 bytes of JSON)."""
    return {
        "t": "task",
        "k": f"{i:032x}",
        "d": {
            "id": f"{i:032x}",
            "queue": "handler",
            "status": "PENDING",
            "created_at": 1_780_000_000.0 + i,
            "attempts": 0,
            "spec": {"function": "ab" * 16, "retries": 3, "timeout": 3600, "ttl": 7200},
            "history": [["PENDING", 1_780_000_000.0 + i]],
            "payload": "x" * 300,
        },
    }


def rate(folder: Path, batch: int, fsync: bool, seconds: float) -> tuple[float, int]:
    """Batches per second appended for `seconds`, and how many were appended."""
    root = folder / f"b{batch}-{'on' if fsync else 'off'}"
    journal = Journal(LocalFileSystem(auto_mkdir=True), str(root), fsync=fsync)
    entries = [record(i) for i in range(batch)]
    journal.append(entries)  # the segment's creation is not part of the rate
    done = 0
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        journal.append(entries)
        done += 1
    elapsed = time.perf_counter() - started
    journal.close()
    shutil.rmtree(root)
    return done / elapsed, done


def filesystem(folder: Path) -> str:
    try:
        out = subprocess.run(
            ["df", "-T", str(folder)], capture_output=True, text=True, check=True
        ).stdout
        device, kind = out.splitlines()[1].split()[:2]
        return f"{kind} ({device})"
    except (OSError, subprocess.CalledProcessError, IndexError, ValueError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fsync", description=__doc__)
    parser.add_argument("--dir", help="a folder on the disk to measure [a fresh temp folder]")
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement [2]")
    args = parser.parse_args(argv)
    base = Path(args.dir) if args.dir else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="raybeam-fsync-", dir=base))
    try:
        print(f"Journal.append on {folder} [{filesystem(folder)}], {os.cpu_count()} CPUs")
        print(f"{'entries/batch':>13}  {'fsync':>5}  {'batches/s':>10}  {'entries/s':>10}")
        for batch in BATCH_SIZES:
            rates = {}
            for fsync in (False, True):
                per_second, _ = rate(folder, batch, fsync, args.seconds)
                rates[fsync] = per_second
                print(
                    f"{batch:>13}  {'on' if fsync else 'off':>5}  {per_second:>10,.0f}  "
                    f"{per_second * batch:>10,.0f}"
                )
            print(
                f"{'':>13}  ratio on/off: {rates[True] / rates[False]:.3f} "
                f"({rates[False] / rates[True]:.1f}x slower with fsync)"
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
