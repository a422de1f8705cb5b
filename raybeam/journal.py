"""The registry's durable state through fsspec: batched, atomic, replayable.

Layout under `<storage>/registry/`:
  journal/<seq>.jsonl   journal segments, replayed in order; each line one batch
  snapshot/<seq>.json   every live entry as of segment <seq>; segments up to it are removed

An entry is [kind, key, data]; a later entry for the same (kind, key) replaces an earlier
one and `data = null` deletes it. A segment's line is one batch, the JSON array of its entries
(earlier raybeams wrote a line per entry, as {"t": kind, "k": key, "d": data}, which loads as
well); a snapshot is the array of the live entries. A task record's data is the list of its
values (`TaskRecord.stored`); the object form of `TaskRecord.to_json` loads as well.

On a local disk a segment is an append-only file that takes many batches (one write each);
a crash can leave at most a torn last line, a batch whose `append` had not returned, which
loading skips, and the next registry starts a new segment. Each batch is fsync'ed before
`append` returns (one fsync per batch, however many changes it holds), unless
`RAYBEAM_FSYNC=0`, so an acknowledged change survives a power loss. Object stores cannot
append, so there every batch is a segment of its own, created at its final key in one
request that fails when the key exists (S3: a PUT with `If-None-Match: *`); an object store
publishes an object whole, so a crash leaves all of it or none. Snapshots there are created the same way. A segment is never overwritten, locally
(created with O_EXCL) or elsewhere: a second registry writing to the same storage gets
`SegmentExists` and stops, instead of replacing the first one's batches. A local snapshot is
written under a temporary name and renamed into place; it and its folder are fsync'ed
(always) before the segments it replaces are removed.

blobs/<digest>.pkl    the queues' pickled functions, checked against their digest (the first
                      32 hex digits of their SHA-256) when stored and when loaded
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import posixpath
import uuid
from collections.abc import Callable, Iterable
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from raybeam import codec, config
from raybeam.errors import CorruptBlob, SegmentExists, StorageInUse
from raybeam.keys import fsync_folder

log = logging.getLogger("raybeam.journal")

Entry = dict[str, Any]
#: batches in one local journal segment before the next segment begins
SEGMENT_BATCHES = 10_000
State = dict[tuple[str, str], Any]
#: a snapshot is made once the journal since the last one holds this many entries per
#: entry of the state (a final record waits in it for the archive: each snapshot until then
#: writes it again)
SNAPSHOT_AFTER = 4
#: on an object store, where each batch is an object a restart fetches, a snapshot is also
#: made once this many batches (or one per 100 live entries, if more) were written since the
#: last one, whatever they held (light traffic beside many live tasks made small batches, up
#: to 4 x live of them)
SNAPSHOT_OBJECTS = 1_000
#: live entries serialised for a snapshot between two turns of the registry's event loop
SNAPSHOT_CHUNK = 500


class Journal:
    def __init__(
        self, fs: fsspec.AbstractFileSystem, root: str, *, fsync: bool | None = None
    ) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.seq = 0
        # plain files can be appended to; anything else gets a file per batch
        self.local = isinstance(fs, LocalFileSystem)
        #: local batches reach the disk before `append` returns (default: RAYBEAM_FSYNC)
        self.fsync = config.settings().fsync if fsync is None else fsync
        self.segment: IO[bytes] | None = None
        self.segment_batches = 0
        for sub in ("journal", "snapshot"):
            self.fs.makedirs(self._p(sub), exist_ok=True)

    def _p(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def _write_atomic(self, path: str, data: str | bytes) -> None:
        """Write under a temporary name, then rename. Locally the file is fsync'ed before the
        rename and its folder after it, so the new name survives a power loss with its whole
        content (whatever RAYBEAM_FSYNC says: these files are few and replace others)."""
        raw = data.encode() if isinstance(data, str) else data
        if not self.local:
            tmp = f"{path}.{uuid.uuid4().hex}.tmp"
            with self.fs.open(tmp, "wb") as f:
                f.write(raw)
            self.fs.mv(tmp, path)
            return
        replace_durably(self.fs._strip_protocol(path), raw)

    def _create(self, path: str, raw: bytes) -> None:
        """Create an object that must not exist yet (`create_once`), `SegmentExists` when it
        does. On S3 this is one conditional PUT, where a temporary key, its copy and its
        removal took five requests more."""
        try:
            create_once(self.fs, path, raw)
            return
        except FileExistsError:
            pass
        raise SegmentExists(
            f"{path} exists already: another registry writes to this storage (journal objects "
            "are never overwritten); this registry stops writing. Stop the other one, or point "
            "RAYBEAM_STORAGE elsewhere, then restart this one so it loads what the other wrote"
        )

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
                with self.fs.open(path, "rb") as f:
                    changes = _changes(codec.loads(f.read()))
                state = {key: data for key, data in changes if data is not None}
                base = seq
                break
            except (OSError, ValueError, KeyError, TypeError) as exc:
                problems.append(f"snapshot {posixpath.basename(path)} unreadable ({exc}); skipped")
                state = {}
        for seq, path in self._seq_files("journal", ".jsonl"):
            if seq <= base:
                continue
            try:
                with self.fs.open(path, "rb") as f:  # UTF-8 JSON, whatever the locale
                    lines = f.read().splitlines()
            except OSError as exc:
                problems.append(f"journal {posixpath.basename(path)} unreadable ({exc}); skipped")
                continue
            for n, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    changes = _changes(codec.loads(line))
                except (ValueError, KeyError, TypeError):
                    problems.append(
                        f"journal {posixpath.basename(path)} line {n} unreadable; skipped"
                    )
                    continue
                for key, data in changes:
                    if data is None:
                        state.pop(key, None)
                    else:
                        state[key] = data
            self.seq = max(self.seq, seq)
        self.seq = max(self.seq, base)
        for problem in problems:
            log.warning("registry state: %s", problem)
        return state, problems

    def append(self, entries: Iterable[Entry]) -> int:
        """Commit one batch; returns the sequence number of the segment that holds it."""
        return self.append_lines(codec.batch_line([(e["t"], e["k"], e["d"]) for e in entries]))

    def append_lines(self, text: bytes) -> int:
        """`append` of a batch encoded already: its journal line (`codec.batch_line`)."""
        if self.local:
            if self.segment is None or self.segment_batches >= SEGMENT_BATCHES:
                self._rotate()
            assert self.segment is not None
            self.segment.write(text)
            self.segment.flush()  # in the OS's hands: a crashed process loses nothing
            if self.fsync:
                os.fsync(self.segment.fileno())  # on the disk: nor does a power loss
            self.segment_batches += 1
            return self.seq
        seq = self.seq + 1
        self._create(self._p("journal", f"{seq:016d}.jsonl"), text)
        self.seq = seq
        return seq

    def _rotate(self) -> None:
        self.close()
        seq = self.seq + 1
        path = self.fs._strip_protocol(self._p("journal", f"{seq:016d}.jsonl"))
        # O_EXCL rather than link() of a finished temporary file: a local segment takes its
        # batches after it is created, so what is made exclusive is its name
        try:
            self.segment = open(path, "xb")  # noqa: SIM115
        except FileExistsError:
            raise SegmentExists(
                f"the journal segment {path} exists already: another registry writes to this "
                "storage; this registry stops writing. Stop the other one, then restart this one"
            ) from None
        self.seq = seq
        if self.fsync:  # the new file's name, so its fsync'ed batches can be found again
            fsync_folder(posixpath.dirname(path))
        self.segment_batches = 0

    def close(self) -> None:
        if self.segment is not None:
            self.segment.close()
            self.segment = None

    def seal(self) -> int:
        """End the current local segment, so later batches go after it; returns its seq."""
        self.close()
        return self.seq

    def write_snapshot(self, parts: list[bytes] | list[str], seq: int) -> None:
        """Store the state as of segment `seq`, then drop the segments and snapshots it
        replaces. `parts` are comma-separated JSON entries; together they are the state.
        Batches written meanwhile must go to segments after `seq` (see `seal`).
        """
        raw = [part.encode() if isinstance(part, str) else part for part in parts]
        text = b"[" + b",".join(part for part in raw if part) + b"]"
        path = self._p("snapshot", f"{seq:016d}.json")
        if self.local:  # durable even with RAYBEAM_FSYNC=0: the segments it replaces go next
            self._write_atomic(path, text)
        else:  # each snapshot's seq is written once (compaction follows new batches)
            self._create(path, text)
        old = [p for s, p in self._seq_files("journal", ".jsonl") if s <= seq]
        old += [p for s, p in self._seq_files("snapshot", ".json") if s < seq]
        if old:  # one request per 1,000 objects on S3, not one each
            self.fs.rm(old)

    def store_blob(self, name: str, data: bytes) -> None:
        """Store a function blob as `<digest>.pkl`, once; a damaged stored copy is replaced."""
        digest = _blob_digest(name)
        if digest is not None and blob_digest(data) != digest:
            raise CorruptBlob(
                digest,
                f"the function sent for digest {digest} has digest {blob_digest(data)}: it was "
                "changed after it was pickled; register the queue again",
            )
        path = self._p("blobs", name)
        try:
            if self.load_blob(name) is not None:
                return
        except CorruptBlob:
            log.warning("stored function %s is damaged; storing it again", name)
        self.fs.makedirs(self._p("blobs"), exist_ok=True)
        self._write_atomic(path, data)

    def load_blob(self, name: str) -> bytes | None:
        """The blob stored as `<digest>.pkl`, None when there is none; `CorruptBlob` when its
        content does not match the digest, so a damaged or altered file is never unpickled."""
        digest = _blob_digest(name)
        path = self._p("blobs", name)
        try:
            with self.fs.open(path, "rb") as f:
                data: bytes = f.read()
        except FileNotFoundError:
            return None
        found = blob_digest(data)
        if digest is not None and found != digest:
            raise CorruptBlob(
                digest,
                f"the stored function {digest} is damaged or was changed (its content has digest "
                f"{found}, {len(data)} bytes at {path}); it was not loaded. Register the queue "
                "again (import its app and call .put(), or run `raybeam serve`) to store it afresh",
            )
        return data


def _changes(value: Any) -> list[tuple[tuple[str, str], Any]]:
    """The ((kind, key), data) changes of a journal line or a snapshot: an array of entries
    [kind, key, data], or one entry {"t": kind, "k": key, "d": data} (either form inside an
    array); TypeError or KeyError for anything else."""
    out = []
    for entry in value if isinstance(value, list) else [value]:
        if isinstance(entry, dict):
            kind, key, data = entry["t"], entry["k"], entry.get("d")
        elif isinstance(entry, list) and len(entry) == 3:
            kind, key, data = entry
        else:
            raise TypeError(f"a journal entry is [kind, key, data], not {entry!r:.80}")
        if not isinstance(kind, str) or not isinstance(key, str):
            raise TypeError(f"a journal entry's kind and key are strings, not {entry!r:.80}")
        out.append(((kind, key), data))
    return out


def create_once(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Create `path` whole with `data`, FileExistsError if it holds other bytes already: a
    link of a finished, fsync'ed temporary file locally (`create_durably`), one conditional
    PUT on an object store. A retried create (s3fs, botocore and `GroupCommit` retry a PUT
    whose answer was lost) finds its own bytes there, which is no conflict."""
    try:
        if not isinstance(fs, LocalFileSystem):
            fs.pipe_file(path, data, mode="create")
            return
        local = fs._strip_protocol(path)
        os.makedirs(posixpath.dirname(local), exist_ok=True)
        create_durably(local, data)
    except FileExistsError:
        try:
            if bytes(fs.cat_file(path)) == data:
                return
        except FileNotFoundError:  # removed since (by the other writer's compaction)
            pass
        raise


def create_durably(path: str, data: bytes) -> None:
    """`replace_durably` of a `path` that must not exist yet: FileExistsError if it does
    (the name is linked to the finished temporary file, which a link never replaces)."""
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_folder(posixpath.dirname(path))


def replace_durably(path: str, data: bytes) -> None:
    """Put `data` at the local `path` whole or not at all, and durably: written under a
    temporary name and fsync'ed, renamed into place, then the folder fsync'ed."""
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_folder(posixpath.dirname(path))


def blob_digest(data: bytes) -> str:
    """The digest a function blob is stored under (as `TaskQueue.definition()` computes it)."""
    return hashlib.sha256(data).hexdigest()[:32]


def _blob_digest(name: str) -> str | None:
    """The digest in a blob's name `<digest>.pkl`; None for a name of another form, which
    only tests' fake functions have, and which is not checked."""
    digest = name.removesuffix(".pkl")
    if name.endswith(".pkl") and len(digest) == 32 and _HEX.issuperset(digest):
        return digest
    return None


_HEX = frozenset("0123456789abcdef")


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
        everything: Callable[[], list[tuple[str, str, Any]]],
        live: Callable[[], int],
        encode: Callable[[str, Any], Any] = lambda kind, value: value,
    ) -> None:
        self.journal = journal
        self.everything = everything
        self.live = live
        #: the stored form of a staged value, given its kind (staged values are the live
        #: objects, encoded when their batch is written)
        self.encode = encode
        self.entries_since_snapshot = 0
        self.batches_since_snapshot = 0
        # never compact before this many entries were written since the last snapshot (fewer
        # on object stores, where each batch is an object that loading must fetch)
        self.snapshot_min = 20_000 if journal.local else 2_000
        self.staged: dict[tuple[str, str], Any] = {}
        #: the batch being written: staged, not yet stored
        self.writing: dict[tuple[str, str], Any] = {}
        #: a test hook: while True, batches wait before they are written
        self.held = False
        #: False once this registry may not write (its storage lease was taken)
        self.allowed: Callable[[], bool] = lambda: True
        #: whether a write is safe now (the lease is current; see fencing): while allowed but
        #: not current, batches wait, staged, for the lease to be renewed
        self.current: Callable[[], bool] = lambda: True
        #: called once a write found another registry's object at its key (SegmentExists)
        self.fenced: Callable[[], None] = lambda: None
        #: what a caller is told once this registry may not write
        self.lost: Callable[[], str] = lambda: "this registry lost the storage's lease"
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
            if not self.allowed():  # fenced: another registry holds the storage now
                batch, waiters = self.staged, self.waiters
                self.staged, self.waiters = {}, []
                for fut in waiters:
                    if not fut.done():
                        fut.set_exception(StorageInUse(self.lost()))
                continue
            batch, waiters = self.staged, self.waiters
            self.staged, self.waiters, self.writing = {}, [], batch
            try:
                await self._write(batch)
            except Exception as exc:  # say so to every waiter
                if isinstance(exc, StorageInUse):  # another registry writes here: stop for good
                    log.error("%s", exc)
                    self.allowed = lambda: False
                    self.fenced()
                else:  # a bug, not storage trouble
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
            # compact once the journal outgrows the state it describes SNAPSHOT_AFTER times,
            # so the cost of a snapshot (which writes every entry held) stays proportional
            # to the changes, and a restart reads at most that many entries per one held
            due = self.entries_since_snapshot >= max(
                self.snapshot_min, SNAPSHOT_AFTER * self.live()
            ) or (
                not self.journal.local
                and self.batches_since_snapshot >= max(SNAPSHOT_OBJECTS, self.live() // 100)
            )
            if due and self.compacting is None:
                self.entries_since_snapshot = self.batches_since_snapshot = 0
                self.compacting = asyncio.get_running_loop().create_task(self._compact())

    async def _write(self, batch: dict[tuple[str, str], Any]) -> None:
        # encoded here, on the loop: the batch is written in a thread while records go on
        # changing (orjson walks a record in a few microseconds)
        encode = self.encode
        text = codec.batch_line([(t, k, encode(t, v)) for (t, k), v in batch.items()])
        delay = 0.1
        while batch:  # a commit with nothing staged writes nothing
            while self.allowed() and not self.current():  # lapsed while retrying: wait
                await asyncio.sleep(0.05)
            if not self.allowed():
                raise StorageInUse(self.lost())
            try:
                # one small write to an open file needs no thread hop; an fsync (a millisecond
                # or more) or an object store would hold the registry's loop
                if self.journal.local and not self.journal.fsync:
                    self.journal.append_lines(text)
                else:
                    await asyncio.to_thread(self.journal.append_lines, text)
                break
            except StorageInUse:  # no retry can help
                raise
            except Exception:  # storage away: keep trying, callers wait
                log.exception("could not store registry state; retrying in %.1f s", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)
        self.entries_since_snapshot += len(batch)
        self.batches_since_snapshot += 1

    async def _compact(self) -> None:
        try:
            seq = self.journal.seal()
            items = self.everything()
            parts: list[bytes] = []
            for start in range(0, len(items), SNAPSHOT_CHUNK):
                chunk = items[start : start + SNAPSHOT_CHUNK]
                # records are read as they are now: nothing changes them within one chunk
                entries = [(t, k, self.encode(t, v)) for t, k, v in chunk]
                parts.append(codec.dumps_each(entries))
                await asyncio.sleep(0)  # calls and batches go on between chunks
            if not (self.allowed() and self.current()):  # lapsed or fenced meanwhile
                log.warning("registry snapshot skipped: the storage's lease is not current")
                return
            await asyncio.to_thread(self.journal.write_snapshot, parts, seq)
        except Exception:
            log.exception("could not write a registry snapshot; the journal stays as it is")
        finally:
            self.compacting = None
