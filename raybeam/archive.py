"""History in Parquet: final records that left the registry's memory (SPEC §11).

Layout under `<storage>/registry/archive/`: `<seq>.parquet`, one file per archiving batch,
written once and never changed. Rows are sorted newest first by (created_at, id), in row
groups of `ROW_GROUP` rows; each row holds the record as JSON, its stored arguments (so an
archived task can be requeued) and, apart, what the reads need without opening the file.

Each file `<seq>.parquet` has its index columns alone beside it in `<seq>.index.parquet` (one
row group), which is what a restart reads: 0.1 s for 200,000 archived tasks here.

Memory holds, per archived task, 40 bytes in numpy arrays and no Python object (about 50
bytes measured with the rest): its id as two 64-bit halves, its creation time, queue and status
codes, whether it stored files, and the position of its id in the file's sorted ids; and 20
bytes per output it stored (the output id as two halves, and its row). So:
- a lookup by id is a binary search per file and reads one row group of one file;
- a listing page walks each file's arrays from the cursor, skipping what the filters reject,
  and reads only the rows it returns;
- counts by queue and status are counters, added when a file is written, removed when
  retention deletes it (a whole file, once its newest task is older than the retention).
A task archived twice (requeued after it was archived, then archived again) is read from the
newest file; the older row is marked dead.

A sweep writes what came due since the last one, so a steady trickle of tasks makes many
small files. Small files are merged, in tiers of size (8 files of about one size become one
about 8 times as large, up to `MERGE_ROWS`), into a new file with their current rows; the
merged ones are deleted a minute later (a read may still be at them). So the files a lookup
or a page visits stay few: 6M tasks over a week at 10 a second are about 240 files of 25k
rows and a few dozen smaller ones, not one file per sweep (60,000). A crash between the new
file and the deletions loses nothing: the newest file's row of a task is the one that counts.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import posixpath
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from raybeam import codec
from raybeam.journal import create_once, replace_durably
from raybeam.record import TaskRecord, TaskStatus

log = logging.getLogger("raybeam.archive")

ROW_GROUP = 1024
#: at most this many records per archive file
FILE_ROWS = 100_000
#: files with fewer current rows than this are merged, `MERGE_FAN_IN` of a size tier at once
MERGE_ROWS = 25_000
MERGE_FAN_IN = 8
STATUSES = [s.value for s in TaskStatus]
#: the status code of a row whose task lives elsewhere now (live again, or a newer file)
DEAD = 255
#: list order: (created_at, id hi, id lo), newest first
Key = tuple[float, int, int]
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("hi", pa.uint64()),
        ("lo", pa.uint64()),
        ("created_at", pa.float64()),
        ("ended_at", pa.float64()),
        ("queue", pa.string()),
        ("status", pa.string()),
        ("outputs", pa.string()),  # stored_files() as JSON, null when none
        ("payload", pa.string()),
        ("record", pa.string()),
    ]
)
#: beside each `<seq>.parquet`: its index columns alone
INDEX_SUFFIX = ".index.parquet"
INDEX_COLUMNS = ["hi", "lo", "created_at", "ended_at", "queue", "status", "outputs"]


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_OUTPUT_ID = re.compile(r"[0-9a-f]{32}")


def id_halves(task_id: str) -> tuple[int, int] | None:
    """A task id (a UUID as raybeam writes it) as two 64-bit integers, in the order of the
    id's text; None for any other string."""
    if not isinstance(task_id, str) or not _UUID.fullmatch(task_id):
        return None
    value = int(task_id.replace("-", ""), 16)
    return value >> 64, value & 0xFFFF_FFFF_FFFF_FFFF


def output_halves(output_id: str) -> tuple[int, int] | None:
    """An output id (32 hex digits, as raybeam makes them) as two 64-bit integers; None for
    any other string."""
    if not isinstance(output_id, str) or not _OUTPUT_ID.fullmatch(output_id):
        return None
    value = int(output_id, 16)
    return value >> 64, value & 0xFFFF_FFFF_FFFF_FFFF


def _codes(column: pa.ChunkedArray, code: Callable[[str], int]) -> np.ndarray:
    """A string column as integer codes, one `code()` call per distinct value."""
    encoded = column.combine_chunks().dictionary_encode()
    mapping = np.array([code(v) for v in encoded.dictionary.to_pylist()], dtype=np.int64)
    return mapping[encoded.indices.to_numpy(zero_copy_only=False)] if len(mapping) else mapping


def stored_files(rec: TaskRecord) -> dict[str, str]:
    """The task's files in storage, by output id: its outputs and, under "result:<task id>"
    (which no output id can be), a large return value. Retention removes their folder."""
    files = {o["id"]: o["key"] for o in rec.outputs}
    if rec.result_key is not None:
        files[f"result:{rec.id}"] = rec.result_key
    return files


def list_key(rec: TaskRecord) -> Key:
    """Where a record sorts in listings: by creation time, then id (newest first)."""
    halves = id_halves(rec.id)
    if halves is None:  # not a UUID (never archived): its digest orders it, as uniquely
        value = int.from_bytes(hashlib.blake2b(rec.id.encode(), digest_size=16).digest(), "big")
        halves = value >> 64, value & 0xFFFF_FFFF_FFFF_FFFF
    return (rec.created_at, *halves)


@dataclass(eq=False)  # one object per file: compared by identity
class ArchiveFile:
    seq: int
    path: str
    newest_end: float
    created: np.ndarray  # float64, rows newest first
    hi: np.ndarray  # uint64
    lo: np.ndarray  # uint64
    queue: np.ndarray  # uint16 codes into Archive.queue_names
    status: np.ndarray  # uint8 codes into STATUSES, DEAD when the row is not current
    by_hi: np.ndarray  # uint32 rows sorted by hi, for lookups
    sorted_hi: np.ndarray  # uint64: hi[by_hi]
    #: rows with files in storage (outputs, a large return value): retention's folders
    stored: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=bool))
    #: output ids (32 hex digits) as halves, sorted, and the row of each: 20 bytes an output
    out_hi: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.uint64))
    out_lo: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.uint64))
    out_row: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.uint32))
    #: rows read as gone at load, past the retention: the file is left to retention
    expired_rows: bool = False
    #: -created, ascending: what a cursor's binary search needs, made once
    descending: np.ndarray = field(default_factory=lambda: np.empty(0))

    def find(self, hi: int, lo: int) -> int | None:
        """The row of this id, or None."""
        sorted_hi = self.sorted_hi
        at = int(np.searchsorted(sorted_hi, np.uint64(hi)))
        while at < len(sorted_hi) and int(sorted_hi[at]) == hi:
            row = int(self.by_hi[at])
            if int(self.lo[row]) == lo:
                return row
            at += 1
        return None

    def before(self, key: Key | None) -> int:
        """The first row that comes after `key` in list order (newest first)."""
        if key is None:
            return 0
        created, hi, lo = key
        # rows are sorted by created descending; the rows created at `created` are a range
        start = int(np.searchsorted(self.descending, -created, side="left"))
        end = int(np.searchsorted(self.descending, -created, side="right"))
        row = start
        while row < end and (int(self.hi[row]), int(self.lo[row])) >= (hi, lo):
            row += 1
        return row

    def output_row(self, output_id: str) -> int | None:
        """The row of the task that stored output `output_id`, or None."""
        halves = output_halves(output_id)
        if halves is None:
            return None
        hi, lo = halves
        at = int(np.searchsorted(self.out_hi, np.uint64(hi)))
        while at < len(self.out_hi) and int(self.out_hi[at]) == hi:
            if int(self.out_lo[at]) == lo:
                return int(self.out_row[at])
            at += 1
        return None

    def __len__(self) -> int:
        """Its rows that are current (not dead)."""
        return int(np.count_nonzero(self.status != DEAD))

    @property
    def paths(self) -> list[str]:
        """Its files: the data, and the index beside it."""
        return [self.path, self.path[: -len(".parquet")] + INDEX_SUFFIX]

    def key(self, row: int) -> Key:
        return (float(self.created[row]), int(self.hi[row]), int(self.lo[row]))


@dataclass
class Written:
    seq: int
    path: str
    index: pa.Table


class Archive:
    def __init__(self, fs: fsspec.AbstractFileSystem, root: str) -> None:
        self.fs = fs
        self.root = posixpath.join(root.rstrip("/"), "archive")
        self.local = isinstance(fs, LocalFileSystem)
        self.files: list[ArchiveFile] = []
        self.queue_names: list[str] = []
        self.queue_codes: dict[str, int] = {}
        #: archived tasks by queue and status, for queue_stats
        self.by_status: dict[str, Counter[str]] = {}
        self.next_seq = 1
        self._open: dict[int, pq.ParquetFile] = {}

    # ---- loading ------------------------------------------------------------------------

    def load(self, expired_before: float = 0.0) -> list[str]:
        """Read every file's index; returns what could not be read (skipped). Rows of tasks
        that ended before `expired_before` are dead (retention removes their files)."""
        problems = []
        try:
            names = {posixpath.basename(str(p)) for p in self.fs.ls(self.root, detail=False)}
        except FileNotFoundError:
            names = set()
        for name in sorted(names):
            seq = name[: -len(".parquet")]
            if not (name.endswith(".parquet") and seq.isdigit()):
                continue
            # a file that cannot be read still holds its number: no new file takes it
            self.next_seq = max(self.next_seq, int(seq) + 1)
            path = posixpath.join(self.root, name)
            index = f"{seq}{INDEX_SUFFIX}"
            try:
                # the index file is the fast way; the data file holds the same columns
                source = posixpath.join(self.root, index) if index in names else path
                with self.fs.open(source, "rb") as f:
                    table = pq.read_table(f, columns=INDEX_COLUMNS)
            except Exception as exc:  # a damaged file loses its rows, not the registry
                problems.append(f"archive file {path} unreadable ({exc}); skipped")
                continue
            self._add(int(seq), path, table, expired_before)
        self._bury_duplicates()
        pa.default_memory_pool().release_unused()
        return problems

    def _bury_duplicates(self) -> None:
        """Of a task in several files, only the newest file's row is current."""
        if len(self.files) < 2:
            return
        # each file's ids are sorted already: a stable sort merges those runs (13 ms for a
        # million, where sorting them afresh took 57)
        ordered = np.sort(np.concatenate([f.sorted_hi for f in self.files]), kind="stable")
        if not np.any(ordered[1:] == ordered[:-1]):
            return  # the usual case: no task was archived twice
        hi = np.concatenate([f.hi for f in self.files])
        lo = np.concatenate([f.lo for f in self.files])
        which = np.concatenate(
            [np.full(len(f.hi), i, dtype=np.int64) for i, f in enumerate(self.files)]
        )
        rows = np.concatenate([np.arange(len(f.hi), dtype=np.int64) for f in self.files])
        order = np.lexsort((-which, lo, hi))  # by id, newest file first
        same = (hi[order][1:] == hi[order][:-1]) & (lo[order][1:] == lo[order][:-1])
        for at in np.nonzero(same)[0] + 1:
            self._bury(self.files[int(which[order[at]])], int(rows[order[at]]))

    def _count(self, queue: np.ndarray, status: np.ndarray, sign: int) -> None:
        """Add (or take away) rows to the counters by queue and status."""
        pairs = np.bincount(queue.astype(np.int64) * 256 + status, minlength=1)
        for code in np.nonzero(pairs)[0]:
            name, value = self.queue_names[int(code) // 256], STATUSES[int(code) % 256]
            self.by_status.setdefault(name, Counter())[value] += sign * int(pairs[code])

    def _code(self, queue: str) -> int:
        code = self.queue_codes.get(queue)
        if code is None:
            code = self.queue_codes[queue] = len(self.queue_names)
            self.queue_names.append(queue)
        return code

    def _add(
        self, seq: int, path: str, table: pa.Table, expired_before: float = 0.0
    ) -> ArchiveFile:
        # column-wise, no Python object per row: a restart reads a million rows in a second
        queue = _codes(table.column("queue"), self._code).astype(np.uint16)
        status = _codes(table.column("status"), STATUSES.index).astype(np.uint8)
        # outputs by id, as numbers (a dict of their keys took 250 bytes an output)
        files = table.column("outputs")
        stored = np.array(pc.is_valid(files), dtype=bool)
        out_hi, out_lo, out_row = [], [], []
        for row in np.nonzero(stored)[0]:
            for output_id in json.loads(files[int(row)].as_py()):
                if (halves := output_halves(output_id)) is not None:
                    out_hi.append(halves[0])
                    out_lo.append(halves[1])
                    out_row.append(int(row))
        outs = np.array(out_hi, dtype=np.uint64), np.array(out_lo, dtype=np.uint64)
        by_output = np.lexsort((outs[1], outs[0]))
        # copies, so Arrow's buffers (and the strings read with them) are freed
        hi = np.array(table.column("hi"), dtype=np.uint64)
        ended = np.array(table.column("ended_at"), dtype=np.float64)
        expired = ended < expired_before
        status[expired] = DEAD
        by_hi = np.argsort(hi, kind="stable").astype(np.uint32)
        created = np.array(table.column("created_at"), dtype=np.float64)
        file = ArchiveFile(
            seq=seq,
            path=path,
            newest_end=float(ended.max()) if len(ended) else 0.0,
            created=created,
            hi=hi,
            lo=np.array(table.column("lo"), dtype=np.uint64),
            queue=queue,
            status=status,
            by_hi=by_hi,
            sorted_hi=hi[by_hi],
            stored=stored,
            out_hi=outs[0][by_output],
            out_lo=outs[1][by_output],
            out_row=np.array(out_row, dtype=np.uint32)[by_output],
            descending=-created,
            expired_rows=bool(expired.any()),
        )
        current = status != DEAD
        self._count(queue[current], status[current], +1)
        self.files.append(file)
        self.next_seq = max(self.next_seq, seq + 1)
        return file

    # ---- writing ------------------------------------------------------------------------

    def write(self, records: list[TaskRecord], payloads: dict[str, str]) -> Written:
        """Store `records` (final) as a new file. Blocking: run in a thread, then `adopt`
        what it returns on the registry's loop, before the records leave memory."""
        rows = sorted(records, key=list_key, reverse=True)
        halves = [id_halves(r.id) or (0, 0) for r in rows]
        table = pa.table(
            {
                "id": [r.id for r in rows],
                "hi": [h for h, _ in halves],
                "lo": [lo for _, lo in halves],
                "created_at": [r.created_at for r in rows],
                "ended_at": [r.ended_at or r.updated_at for r in rows],
                "queue": [r.queue for r in rows],
                "status": [r.status.value for r in rows],
                "outputs": [
                    json.dumps(files) if (files := stored_files(r)) else None for r in rows
                ],
                "payload": [payloads.get(r.id) for r in rows],
                "record": [codec.dumps(r) for r in rows],
            },
            schema=SCHEMA,
        )
        return self._write_table(table)

    def _write_table(self, table: pa.Table) -> Written:
        """A table of SCHEMA, in list order, as a new file and its index."""
        buffer = io.BytesIO()
        pq.write_table(table, buffer, row_group_size=ROW_GROUP, compression="zstd")
        data = buffer.getvalue()
        while True:  # a number taken already (a file this registry could not read) is skipped
            seq = self.next_seq
            self.next_seq += 1
            path = posixpath.join(self.root, f"{seq:016d}.parquet")
            try:
                create_once(self.fs, path, data)  # never replaces a file there
                break
            except FileExistsError:
                log.warning("archive file %s exists already; this batch takes the next", path)
        index = table.select(INDEX_COLUMNS)
        # the same index columns in one row group: what a restart reads, in milliseconds
        buffer = io.BytesIO()
        pq.write_table(index, buffer, compression="zstd")
        self._replace(posixpath.join(self.root, f"{seq:016d}{INDEX_SUFFIX}"), buffer.getvalue())
        return Written(seq, path, index)

    def mergeable(self, expired_before: float) -> tuple[list[ArchiveFile], list[ArchiveFile]]:
        """(files with no current row, which go without a merge; the small files to merge
        now): the `MERGE_FAN_IN` oldest of the smallest size tier that has that many. Files
        past the retention (their newest task ended before `expired_before`) are left to
        retention, which removes their outputs with them."""
        empty: list[ArchiveFile] = []
        tiers: dict[int, list[ArchiveFile]] = {}
        for file in self.files:
            if file.newest_end < expired_before or file.expired_rows:
                continue  # retention's: it removes their outputs with them
            rows = len(file)
            if rows == 0:
                empty.append(file)
            elif rows < MERGE_ROWS:
                tiers.setdefault(int(np.log2(rows) // 3), []).append(file)  # tiers of 8x
        for tier in sorted(tiers):
            if len(tiers[tier]) >= MERGE_FAN_IN:
                group, rows = [], 0
                for file in tiers[tier][:MERGE_FAN_IN]:
                    if rows + len(file) > FILE_ROWS:
                        break
                    group.append(file)
                    rows += len(file)
                if len(group) > 1:
                    return empty, group
        return empty, []

    def merge(
        self, files: list[ArchiveFile], current: list[np.ndarray], expired_before: float
    ) -> tuple[Written | None, set[str]]:
        """One new file of the rows of `files` that `current` (a mask per file, taken on the
        registry's loop) keeps, in list order, none of them past the retention (ended
        before `expired_before`); and the output folders of the rows past it, which the
        caller removes (as retention would have with their file). Blocking: run in a
        thread, then `adopt`."""
        parts, expired = [], set()
        for file, keep in zip(files, current, strict=True):
            with self.fs.open(file.path, "rb") as f:
                table = pq.read_table(f)
            old = np.array(table.column("ended_at"), dtype=np.float64) < expired_before
            for row in np.nonzero(old & np.array(pc.is_valid(table.column("outputs"))))[0]:
                expired.add(
                    f"outputs/{table.column('queue')[int(row)].as_py()}/"
                    f"{table.column('id')[int(row)].as_py()}"
                )
            parts.append(table.filter(pa.array(keep & ~old)))
        table = pa.concat_tables(parts)
        if not len(table):
            return None, expired
        order = pc.sort_indices(
            table, [("created_at", "descending"), ("hi", "descending"), ("lo", "descending")]
        )
        return self._write_table(table.take(order)), expired

    def adopt(self, written: Written) -> ArchiveFile:
        """Index a file that `write` stored. (An older archived copy of one of its tasks is
        dead already: it died when the task came back to memory, or when the registry found
        the task both in memory and in the archive at its start.)"""
        return self._add(written.seq, written.path, written.index)

    def _replace(self, path: str, data: bytes) -> None:
        """Put the file whole (an index, which its data file's number makes this one's)."""
        if not self.local:
            self.fs.pipe_file(path, data)
            return
        path = self.fs._strip_protocol(path)
        os.makedirs(posixpath.dirname(path), exist_ok=True)
        replace_durably(path, data)

    # ---- reads --------------------------------------------------------------------------

    def locate(self, task_id: str) -> tuple[ArchiveFile, int] | None:
        halves = id_halves(task_id)
        if halves is None:
            return None
        for file in reversed(self.files):
            row = file.find(*halves)
            if row is not None and file.status[row] != DEAD:
                return file, row
        return None

    def status(self, task_id: str) -> str | None:
        found = self.locate(task_id)
        return None if found is None else STATUSES[int(found[0].status[found[1]])]

    def key(self, task_id: str) -> Key | None:
        found = self.locate(task_id)
        return None if found is None else found[0].key(found[1])

    def output_place(self, output_id: str) -> tuple[ArchiveFile, int] | None:
        """The file and row of the archived task that stored output `output_id`."""
        for file in reversed(self.files):
            row = file.output_row(output_id)
            if row is not None and file.status[row] != DEAD:
                return file, row
        return None

    def output_key(self, place: tuple[ArchiveFile, int], output_id: str) -> str | None:
        """The storage key of output `output_id` of the task at `place` (`output_place`).
        Blocking: run in a thread."""
        file, row = place
        group = self._parquet(file).read_row_group(row // ROW_GROUP, columns=["outputs"])
        text = group.column("outputs")[row % ROW_GROUP].as_py()
        key: str | None = json.loads(text).get(output_id) if text else None
        return key

    def folders(self, file: ArchiveFile) -> set[str]:
        """`outputs/<queue>/<task id>` of the file's tasks that stored files: what
        retention removes with it."""
        return {
            f"outputs/{self.queue_names[int(file.queue[row])]}/"
            f"{uuid.UUID(int=(int(file.hi[row]) << 64) | int(file.lo[row]))}"
            for row in np.nonzero(file.stored)[0]
        }

    def read(self, task_id: str) -> tuple[TaskRecord, str | None] | None:
        """The archived record and its stored arguments. Blocking: run in a thread."""
        found = self.locate(task_id)
        if found is None:
            return None
        ((rec, payload),) = self.read_rows([found])
        return rec, payload

    def read_rows(self, rows: list[tuple[ArchiveFile, int]]) -> list[tuple[TaskRecord, str | None]]:
        """Records at (file, row) places, in the order given; one row group read per group
        touched. Blocking: run in a thread."""
        groups: dict[tuple[int, int], pa.Table] = {}
        out = []
        for file, row in rows:
            group = row // ROW_GROUP
            table = groups.get((file.seq, group))
            if table is None:
                table = self._parquet(file).read_row_group(group, columns=["record", "payload"])
                groups[(file.seq, group)] = table
            at = row % ROW_GROUP
            record = TaskRecord.from_json(codec.loads(table.column("record")[at].as_py()))
            out.append((record, table.column("payload")[at].as_py()))
        return out

    def _parquet(self, file: ArchiveFile) -> pq.ParquetFile:
        opened = self._open.get(file.seq)
        if opened is None:
            if len(self._open) >= 64:
                self._open.pop(next(iter(self._open))).close()
            opened = self._open[file.seq] = pq.ParquetFile(self.fs.open(file.path, "rb"))
        return opened

    def page(
        self, queue: str | None, status: str | None, after: Key | None, limit: int
    ) -> list[tuple[Key, ArchiveFile, int]]:
        """Up to `limit` rows after `after` in list order, newest first, with the filters.
        Each file is walked from its cursor position in windows, newest file first, until no
        other file can hold a newer row: a page costs about what it returns, plus what the
        filters skip, plus a binary search per file."""
        want_queue = None if queue is None else self.queue_codes.get(queue)
        if queue is not None and want_queue is None:
            return []
        want_status = None if status is None else STATUSES.index(status)
        # files by the newest row they could give, which bounds all they give: once `limit`
        # rows are found, a file whose first row is older than the last of them has none
        heads = []
        for file in self.files:
            row = file.before(after)
            if row < len(file.created):
                heads.append((float(file.created[row]), row, file))
        heads.sort(key=lambda head: head[0], reverse=True)
        found: list[tuple[Key, ArchiveFile, int]] = []
        for newest, row, file in heads:
            if len(found) >= limit and newest < found[limit - 1][0][0]:
                break
            taken = 0
            window = max(64, limit)
            while row < len(file.created) and taken < limit:
                end = min(len(file.created), row + window)
                ok = file.status[row:end] != DEAD
                if want_queue is not None:
                    ok &= file.queue[row:end] == want_queue
                if want_status is not None:
                    ok &= file.status[row:end] == want_status
                for at in (np.nonzero(ok)[0] + row)[: limit - taken]:
                    found.append((file.key(int(at)), file, int(at)))
                    taken += 1
                row = end
                window *= 4
            found.sort(key=lambda item: item[0], reverse=True)
            del found[limit:]
        return found

    # ---- changes ------------------------------------------------------------------------

    def bury_many(self, task_ids: Iterable[str]) -> None:
        """`bury` for many tasks at once (a restart's records found in memory too): one
        vectorised search per file, not one per task."""
        halves = [h for t in task_ids if (h := id_halves(t)) is not None]
        if not halves or not self.files:
            return
        his = np.array([h for h, _ in halves], dtype=np.uint64)
        los = np.array([lo for _, lo in halves], dtype=np.uint64)
        for file in self.files:
            at = np.minimum(np.searchsorted(file.sorted_hi, his), len(file.sorted_hi) - 1)
            for n in np.nonzero(file.sorted_hi[at] == his)[0]:
                row = file.find(int(his[n]), int(los[n]))
                if row is not None:
                    self._bury(file, row)

    def bury(self, task_id: str) -> None:
        """The archived row of `task_id` is no longer its record (the task is live again)."""
        found = self.locate(task_id)
        if found is not None:
            self._bury(*found)

    def _bury(self, file: ArchiveFile, row: int) -> None:
        code = int(file.status[row])
        if code == DEAD:
            return
        self.by_status[self.queue_names[int(file.queue[row])]][STATUSES[code]] -= 1
        file.status[row] = DEAD

    def expired(self, cutoff: float) -> list[ArchiveFile]:
        """Files whose newest task ended before `cutoff`: retention removes them whole."""
        return [f for f in self.files if f.newest_end < cutoff]

    def drop(self, file: ArchiveFile) -> None:
        """Forget a file (retention, a merge); the caller deletes it, and retention its
        tasks' outputs. A file forgotten already (by the other of the two) is left."""
        if file not in self.files:
            return
        current = file.status != DEAD
        self._count(file.queue[current], file.status[current], -1)
        file.status[:] = DEAD
        self.files.remove(file)
        # not closed here: a read in a thread may be at it; it closes once unreferenced
        self._open.pop(file.seq, None)

    def __len__(self) -> int:
        return sum(len(f) for f in self.files)

    def counts(self) -> Iterable[tuple[str, Counter[str]]]:
        return self.by_status.items()
