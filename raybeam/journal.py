"""The registry's durable state through fsspec: batched, atomic, replayable.

Layout under `<storage>/registry/`:
  journal/<seq>.jsonl   journal segments, replayed in order; each line one entry
  snapshot/<seq>.json   every live entry as of segment <seq>; segments up to it are removed

An entry is {"t": kind, "k": key, "d": data}; a later entry for the same (kind, key) replaces
an earlier one and `d = null` deletes it.

On a local disk a segment is an append-only file that takes many batches (one write each);
a crash can leave at most a torn last line, which loading skips, and the next registry
starts a new segment. Object stores cannot append, so there every batch is a segment of its
own. Snapshots and those segments are written under a temporary name and renamed into place,
so a crash leaves either the whole file or none of it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import posixpath
import uuid
from collections.abc import Callable, Iterable
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

log = logging.getLogger("raybeam.journal")

Entry = dict[str, Any]
#: batches in one local journal segment before the next segment begins
SEGMENT_BATCHES = 10_000
State = dict[tuple[str, str], Any]
#: live entries serialised for a snapshot between two turns of the registry's event loop
SNAPSHOT_CHUNK = 500


class Journal:
    def __init__(self, fs: fsspec.AbstractFileSystem, root: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.seq = 0
        # plain files can be appended to; anything else gets a file per batch
        self.local = isinstance(fs, LocalFileSystem)
        self.segment: IO[str] | None = None
        self.segment_batches = 0
        for sub in ("journal", "snapshot"):
            self.fs.makedirs(self._p(sub), exist_ok=True)

    def _p(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def _write_atomic(self, path: str, text: str) -> None:
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with self.fs.open(tmp, "w") as f:
            f.write(text)
        self.fs.mv(tmp, path)

    def _seq_files(self, sub: str, suffix: str) -> list[tuple[int, str]]:
        out = []
        try:
            paths = self.fs.ls(self._p(sub), detail=False)
        except FileNotFoundError:  # object stores have no empty folders
            return []
        for path in paths:
            name = posixpath.basename(str(path))
            if name.endswith(suffix) and name[: -len(suffix)].isdigit():
                out.append((int(name[: -len(suffix)]), str(path)))
        return sorted(out)

    def load(self) -> tuple[State, list[str]]:
        """Everything stored, and a list of what was skipped as unreadable."""
        state: State = {}
        problems: list[str] = []
        base = 0
        for seq, path in reversed(self._seq_files("snapshot", ".json")):
            try:
                with self.fs.open(path, "r") as f:
                    entries = json.load(f)
                for e in entries:
                    state[(e["t"], e["k"])] = e["d"]
                base = seq
                break
            except (OSError, ValueError, KeyError, TypeError) as exc:
                problems.append(f"snapshot {posixpath.basename(path)} unreadable ({exc}); skipped")
                state = {}
        for seq, path in self._seq_files("journal", ".jsonl"):
            if seq <= base:
                continue
            try:
                with self.fs.open(path, "r") as f:
                    lines = f.read().splitlines()
            except OSError as exc:
                problems.append(f"journal {posixpath.basename(path)} unreadable ({exc}); skipped")
                continue
            for n, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    e = json.loads(line)
                    key = (e["t"], e["k"])
                except (ValueError, KeyError, TypeError):
                    problems.append(
                        f"journal {posixpath.basename(path)} line {n} unreadable; skipped"
                    )
                    continue
                if e.get("d") is None:
                    state.pop(key, None)
                else:
                    state[key] = e["d"]
            self.seq = max(self.seq, seq)
        self.seq = max(self.seq, base)
        for problem in problems:
            log.warning("registry state: %s", problem)
        return state, problems

    def append(self, entries: Iterable[Entry]) -> int:
        """Commit one batch; returns the sequence number of the segment that holds it."""
        text = "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in entries)
        if self.local:
            if self.segment is None or self.segment_batches >= SEGMENT_BATCHES:
                self._rotate()
            assert self.segment is not None
            self.segment.write(text)
            self.segment.flush()  # in the OS's hands: a crashed process loses nothing
            self.segment_batches += 1
            return self.seq
        seq = self.seq + 1
        self._write_atomic(self._p("journal", f"{seq:016d}.jsonl"), text)
        self.seq = seq
        return seq

    def _rotate(self) -> None:
        self.close()
        self.seq += 1
        self.segment = open(self._p("journal", f"{self.seq:016d}.jsonl"), "a")  # noqa: SIM115
        self.segment_batches = 0

    def close(self) -> None:
        if self.segment is not None:
            self.segment.close()
            self.segment = None

    def seal(self) -> int:
        """End the current local segment, so later batches go after it; returns its seq."""
        self.close()
        return self.seq

    def write_snapshot(self, parts: list[str], seq: int) -> None:
        """Store the state as of segment `seq`, then drop the segments and snapshots it
        replaces. `parts` are comma-separated JSON entries; together they are the state.
        Batches written meanwhile must go to segments after `seq` (see `seal`).
        """
        text = "[" + ",".join(part for part in parts if part) + "]"
        self._write_atomic(self._p("snapshot", f"{seq:016d}.json"), text)
        for old, path in self._seq_files("journal", ".jsonl"):
            if old <= seq:
                self.fs.rm(path)
        for old, path in self._seq_files("snapshot", ".json"):
            if old < seq:
                self.fs.rm(path)

    def store_blob(self, name: str, data: bytes) -> None:
        path = self._p("blobs", name)
        if self.fs.exists(path):
            return
        self.fs.makedirs(self._p("blobs"), exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with self.fs.open(tmp, "wb") as f:
            f.write(data)
        self.fs.mv(tmp, path)

    def load_blob(self, name: str) -> bytes | None:
        path = self._p("blobs", name)
        try:
            with self.fs.open(path, "rb") as f:
                data: bytes = f.read()
                return data
        except FileNotFoundError:
            return None


class GroupCommit:
    """Batches changes into journal writes; a caller waits until its change is stored.

    Changes staged while a write is under way go into the next one, so under load the
    number of writes stays far below the number of changes. A value is serialised when its
    batch is written, so a record changed twice in one batch is written once, as it is then.

    Compaction runs beside the batches, never in their way: the current segment is sealed,
    the live state is serialised a chunk at a time between other work, and the snapshot is
    written in a thread. A record changed meanwhile may go into the snapshot in its newer
    state; the segments after the sealed one hold the same change and replay on top of it,
    so loading always ends with the latest state.
    """

    def __init__(
        self,
        journal: Journal,
        serialise: Callable[[Any], Any],
        everything: Callable[[], list[tuple[str, str, Any]]],
        live: Callable[[], int],
    ) -> None:
        self.journal = journal
        self.serialise = serialise
        self.everything = everything
        self.live = live
        self.entries_since_snapshot = 0
        # never compact before this many entries were written since the last snapshot (fewer
        # on object stores, where each batch is an object that loading must fetch)
        self.snapshot_min = 20_000 if journal.local else 2_000
        self.staged: dict[tuple[str, str], Any] = {}
        #: the batch being written: staged, not yet stored
        self.writing: dict[tuple[str, str], Any] = {}
        #: a test hook: while True, batches wait before they are written
        self.held = False
        self.waiters: list[asyncio.Future[None]] = []
        self.wake = asyncio.Event()
        self.compacting: asyncio.Task[None] | None = None

    def stage(self, kind: str, key: str, value: Any) -> None:
        """Note a change (None deletes) for the next batch, without waiting for it."""
        self.staged[(kind, key)] = value
        self.wake.set()

    def pending(self, kind: str, key: str) -> bool:
        """A change of (kind, key) is staged or being written, not yet stored."""
        return (kind, key) in self.staged or (kind, key) in self.writing

    async def commit(self) -> None:
        """Return once every change staged so far is stored."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        self.wake.set()
        await fut

    async def run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            if not self.staged and not self.waiters:
                continue
            while self.held:
                await asyncio.sleep(0.02)
            batch, waiters = self.staged, self.waiters
            self.staged, self.waiters, self.writing = {}, [], batch
            try:
                await self._write(batch)
            except Exception as exc:  # a bug, not storage trouble: say so to every waiter
                log.exception("could not write a batch of registry state")
                for fut in waiters:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            finally:
                self.writing = {}
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)
            # compact once the journal outgrows the state it describes, so the cost of a
            # snapshot (which writes every live entry) stays proportional to the changes
            due = self.entries_since_snapshot >= max(self.snapshot_min, 2 * self.live())
            if due and self.compacting is None:
                self.entries_since_snapshot = 0
                self.compacting = asyncio.get_running_loop().create_task(self._compact())

    async def _write(self, batch: dict[tuple[str, str], Any]) -> None:
        entries = [{"t": k[0], "k": k[1], "d": self.serialise(v)} for k, v in batch.items()]
        delay = 0.1
        while entries:
            try:
                if self.journal.local:  # one small write to an open file: no thread hop
                    self.journal.append(entries)
                else:
                    await asyncio.to_thread(self.journal.append, entries)
                break
            except Exception:  # storage away: keep trying, callers wait
                log.exception("could not store registry state; retrying in %.1f s", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)
        self.entries_since_snapshot += len(entries)

    async def _compact(self) -> None:
        try:
            seq = self.journal.seal()
            items = self.everything()
            parts = []
            for start in range(0, len(items), SNAPSHOT_CHUNK):
                chunk = items[start : start + SNAPSHOT_CHUNK]
                entries = [{"t": t, "k": k, "d": self.serialise(v)} for t, k, v in chunk]
                parts.append(json.dumps(entries, separators=(",", ":"))[1:-1])
                await asyncio.sleep(0)  # calls and batches go on between chunks
            await asyncio.to_thread(self.journal.write_snapshot, parts, seq)
        except Exception:
            log.exception("could not write a registry snapshot; the journal stays as it is")
        finally:
            self.compacting = None
