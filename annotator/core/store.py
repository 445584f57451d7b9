"""The run's rows on disk: `OUT/descriptions/*.parquet` (names in annotator/core/layout.py).

Rows are committed a batch at a time. Every file is written under a hidden temporary name and
renamed into place, so a kill -9 at any moment leaves only whole files, and a commit changes
each file in one step: a recomputed clip's new row replaces its old one inside the file that
held it, and new clips are appended to the writer's open file. So any reader, a plain glob
such as DuckDB's `read_parquet('OUT/descriptions/*.parquet')` included, sees exactly one row
per clip at every moment. The one exception is the merge of many small files that older
versions left (`merge_small`, at a writer's start): a kill between writing a shard and
removing its sources leaves those rows twice on disk; the store's own readers keep the newer
(by `created_at`) and the next writer compacts them. One writer at a time holds OUT/.lock
(`Store.lock`, released by the OS even on kill -9). Files that cannot be read, or were not
written by vaemo, are moved to OUT/quarantine/ with the reason beside them; their clips become
pending again.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import uuid
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from annotator.core.files import write_parquet
from annotator.core.errors import ConfigError, VaemoError
from annotator.core.layout import RunFolder
from annotator.core.rows import ROW_SCHEMA



SHARD_ROWS = 50_000
"""A writer merges small batch files into shards of up to this many rows at its start."""
MERGE_AT = 64
"""... once at least this many files are smaller than a shard (folders written before
OPEN_FILE_ROWS: a 1M-row run in 16-row batch files was 62,500 files to open at every start)."""
OPEN_FILE_ROWS = 1_000
"""A writer appends new clips to one file (rewriting it whole, about 500 rows a commit on
average) until it holds this many rows: a run leaves about one file per 1,000 clips."""


class Store:
    """The rows of one run folder: read (one row per clip), index by clip, commit a batch
    (superseding older rows of its clips), repair, and the writer's lock."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.folder = RunFolder(self.out)
        self.dir = self.folder.descriptions
        self.unreadable: dict[str, str] = {}
        """Files the last read skipped: name -> why (readers never move files)."""
        self._holders: dict[str, set[str]] = {}  # clip_id -> files holding a row of it
        self._index: dict[str, dict] | None = None
        self._open: str | None = None  # the file this writer appends new clips to

    def files(self) -> list[Path]:
        return sorted(self.dir.glob("*.parquet")) if self.dir.is_dir() else []

    def read(self, columns: list[str] | None = None) -> pa.Table:
        """The stored rows, one per clip (the newest where a crash left two)."""
        columns = list(columns or ROW_SCHEMA.names)
        table = self._read_all(columns)
        return table.drop_columns(["_file"]).select(columns)

    def _read_all(self, columns: list[str]) -> pa.Table:
        return _newest_per_clip(self.read_raw(columns)).select([*columns, "_file"])

    def read_raw(self, columns: list[str]) -> pa.Table:
        """Every stored row (duplicates included) with the file it is in (`_file`)."""
        wanted = list(dict.fromkeys([*columns, "clip_id", "created_at"]))
        tables, self.unreadable = [], {}
        for f in self.files():
            try:
                table = _read_file(f, wanted)
            except ShardError as err:
                self.unreadable[f.name] = str(err)
                continue
            tables.append(table.append_column("_file", pa.array([f.name] * len(table),
                                                                 pa.string())))
        if not tables:
            schema = pa.schema([ROW_SCHEMA.field(c) for c in wanted] + [("_file", pa.string())])
            return schema.empty_table()
        return pa.concat_tables(tables)

    def index(self) -> dict[str, dict]:
        """clip_id -> {cache_key, status, error_kind, attempts} for every stored row; read
        once (repair and the cache check at a run's start share it) until files change."""
        if self._index is None:
            columns = ["clip_id", "cache_key", "status", "error_kind", "attempts"]
            raw = self.read_raw(columns)
            self._holders = {}
            for clip, name in zip(raw["clip_id"].to_pylist(), raw["_file"].to_pylist()):
                self._holders.setdefault(clip, set()).add(name)
            self._index = {row["clip_id"]: row
                           for row in _newest_per_clip(raw).select(columns).to_pylist()}
        return self._index

    @contextmanager
    def lock(self):
        """Hold OUT/.lock for a writer's life; a second writer fails at once, naming us."""
        self.out.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder.lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ConfigError(f"{self.out} is being written by {holder}; wait for that run to "
                              "end or pass another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"vaemo pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        try:
            yield self
        finally:
            os.close(fd)  # the OS releases the lock (on kill -9 too)

    def repair(self) -> dict[str, str]:
        """Writer only (under the lock): remove temp files of killed commits, move unreadable
        or foreign files to OUT/quarantine/ (reason beside each), and compact clips that a
        crash left with two rows. Returns {quarantined file: reason}."""
        if not self.dir.is_dir():
            return {}
        self._index = None
        for tmp in self.dir.glob(".*.tmp"):
            tmp.unlink()
        quarantined = {f.name: "not a Parquet file" for f in self.dir.iterdir()
                       if not f.name.startswith(".") and (f.suffix != ".parquet"
                                                          or not f.is_file())}
        self.index()  # the one read of every shard; it also finds the unreadable ones
        quarantined.update(self.unreadable)
        for name in sorted(quarantined):
            self._quarantine(self.dir / name, quarantined[name])
        if self.unreadable:
            self._index = None
            self.index()
        doubled = {c for c, files in self._holders.items() if len(files) > 1}
        if doubled:
            self._supersede(doubled)
            self._index = None
        if self.merge_small():
            self._index = None
        return quarantined

    def merge_small(self) -> int:
        """Writer only: merge batch files smaller than SHARD_ROWS into shards of up to that
        many rows, once MERGE_AT of them exist; returns the files merged. Each shard is
        written whole before its sources go, so a kill in between leaves the same rows
        twice, which readers and the next repair resolve."""
        sizes = {f: pq.ParquetFile(f).metadata.num_rows for f in self.files()}
        small = [f for f, rows in sizes.items() if rows < SHARD_ROWS]
        if len(small) < MERGE_AT:
            return 0
        groups, group, rows = [], [], 0
        for f in small:
            if group and rows + sizes[f] > SHARD_ROWS:
                groups.append(group)
                group, rows = [], 0
            group.append(f)
            rows += sizes[f]
        groups.append(group)
        merged = 0
        for group in (g for g in groups if len(g) > 1):
            table = pa.concat_tables([_read_file(f, ROW_SCHEMA.names) for f in group])
            table = table.cast(ROW_SCHEMA).replace_schema_metadata(
                {"vaemo": json.dumps({"merged_files": len(group)})})
            write_parquet(table, self.dir / f"part-merged-{uuid.uuid4().hex}.parquet")
            for f in group:
                f.unlink()
            merged += len(group)
        return merged

    def quarantined(self) -> list[str]:
        """Files an earlier run moved to OUT/quarantine/ (each has its reason beside it)."""
        folder = self.folder.quarantine
        return sorted(p.name for p in folder.iterdir()
                      if not p.name.endswith(".reason.txt")) if folder.is_dir() else []

    def _quarantine(self, f: Path, reason: str) -> None:
        self.folder.quarantine.mkdir(parents=True, exist_ok=True)
        target = self.folder.quarantine / f.name
        if target.exists():
            target = target.with_name(f"{uuid.uuid4().hex[:6]}-{f.name}")
        os.replace(f, target)
        target.with_name(target.name + ".reason.txt").write_text(reason + "\n")

    def commit(self, rows: pa.Table, run_id: str, metadata: dict) -> Path:
        """Store one batch so that any reader, a plain glob of the folder included, sees
        exactly one row per clip at every moment, kill -9 included: a clip's new row replaces
        its old one inside the file that held it (one atomic rewrite per file), and new clips
        are appended to this writer's open file (an atomic rewrite too) until it holds
        OPEN_FILE_ROWS, then a new file is started. Returns the last file written."""
        self.dir.mkdir(parents=True, exist_ok=True)
        table = rows.cast(ROW_SCHEMA)
        meta = {"vaemo": json.dumps(metadata, sort_keys=True)}  # the last commit to the file
        if self._index is None and not self._holders:
            self.index()  # which file holds each clip's row (read once per writer)
        ids = table["clip_id"].to_pylist()
        doubled = {c for c in ids if len(self._holders.get(c, ())) > 1}
        try:
            if doubled:  # left by an older version's crash: one copy first
                self._supersede(doubled)
            into: dict[str, list[int]] = {}  # file -> the batch's rows that go into it
            fresh = [i for i, c in enumerate(ids) if not self._holders.get(c)]
            for i, clip in enumerate(ids):
                if self._holders.get(clip):
                    into.setdefault(next(iter(self._holders[clip])), []).append(i)
            if fresh:
                into.setdefault(self._open_file(run_id, len(fresh)), []).extend(fresh)
            for name, picks in into.items():
                self._replace_rows(self.dir / name, table.take(picks), meta)
        except OSError as err:  # disk full, quota, read-only: one line, rows intact
            raise StoreError(self._unwritable(err, table.nbytes)) from err
        self._index = None
        for name, picks in into.items():
            for i in picks:
                self._holders[ids[i]] = {name}
        return self.dir / name

    def _open_file(self, run_id: str, adding: int) -> str:
        """The file new clips are appended to: this writer's, while it has room."""
        path = self.dir / self._open if self._open else None
        if path is None or not path.exists() or (
                pq.ParquetFile(path).metadata.num_rows + adding > OPEN_FILE_ROWS):
            self._open = f"part-{run_id}-{uuid.uuid4().hex[:8]}.parquet"
        return self._open

    def _replace_rows(self, path: Path, rows: pa.Table, meta: dict) -> None:
        """`path` rewritten atomically with `rows` in place of its rows of the same clips."""
        if path.exists():
            old = _read_file(path, ROW_SCHEMA.names).cast(ROW_SCHEMA)
            old = old.filter(pc.invert(pc.is_in(old["clip_id"], value_set=rows["clip_id"])))
            rows = pa.concat_tables([old, rows])
        write_parquet(rows.replace_schema_metadata(meta), path)

    def _unwritable(self, err: OSError, size: int) -> str:
        try:
            free = f"{shutil.disk_usage(self.dir).free / 2**20:.0f} MiB free"
        except OSError:
            free = "free space unknown"
        return (f"cannot write to {self.dir} ({err.strerror or err}; {free}, a batch needs "
                f"about {max(size / 2**20, 0.1):.1f} MiB): free some space or pass another "
                "--out; every row committed so far is intact, and a re-run finishes the rest")

    def _supersede(self, clip_ids: set[str], keep: str | None = None) -> None:
        """Rewrite the files holding older rows of `clip_ids` without them (the newest row of
        each clip stays, or the one in `keep`)."""
        stale: dict[str, set[str]] = {}
        if keep is None:  # compaction: keep the row readers would pick
            newest = self._read_all(["clip_id"])
            winner = dict(zip(newest["clip_id"].to_pylist(), newest["_file"].to_pylist()))
        for clip in clip_ids:
            for name in self._holders.get(clip, ()):
                if name != (keep or winner.get(clip)):
                    stale.setdefault(name, set()).add(clip)
        for name, clips in stale.items():
            path = self.dir / name
            table = pq.read_table(path)
            keep_mask = pc.invert(pc.is_in(table["clip_id"], value_set=pa.array(sorted(clips))))
            kept = table.filter(keep_mask)
            if len(kept):
                write_parquet(kept.replace_schema_metadata(table.schema.metadata), path)
            else:
                path.unlink()


class StoreError(VaemoError):
    """The store cannot be written (disk full, a quota, a read-only folder)."""


class ShardError(Exception):
    """A file in descriptions/ that is not a readable vaemo shard."""


def _newest_per_clip(table: pa.Table) -> pa.Table:
    """One row per clip_id: the latest `created_at` (a crash mid-commit can leave two)."""
    if pc.count_distinct(table["clip_id"]).as_py() == len(table):
        return table
    order = pc.sort_indices(table, [("clip_id", "ascending"), ("created_at", "descending")])
    table = table.take(order)
    ids = table["clip_id"]
    first = pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1))
    keep = pa.concat_arrays([pa.array([True]), first.combine_chunks()])
    return table.filter(keep)


MARKERS = ("clip_id", "status", "cache_key", "created_at")
"""Columns every shard has, with ROW_SCHEMA's types: how the store knows its own files."""


def _read_file(path: Path, columns: list[str]) -> pa.Table:
    """One file's `columns`; a column the file predates (e.g. `samples`) is read as nulls,
    and so is a struct member it predates (e.g. `cues.face`). Raises ShardError for a file
    that is not a readable vaemo shard."""
    try:
        schema = pq.read_schema(path)
        if not set(MARKERS) <= set(schema.names):
            raise ShardError("not a vaemo shard (it lacks clip_id, status, cache_key or "
                             "created_at)")
        for name in MARKERS:  # a file that only borrows the names is not one of ours
            if schema.field(name).type != ROW_SCHEMA.field(name).type:
                raise ShardError(f"not a vaemo shard (its {name} is "
                                 f"{schema.field(name).type}, vaemo writes "
                                 f"{ROW_SCHEMA.field(name).type})")
        present = set(schema.names)
        table = pq.read_table(path, columns=[c for c in columns if c in present])
        table = table.cast(pa.schema([ROW_SCHEMA.field(c) for c in table.schema.names]))
    except (OSError, pa.ArrowException) as err:
        raise ShardError(f"unreadable Parquet ({type(err).__name__}: {err})") from err
    for name in columns:
        if name not in present:
            field = ROW_SCHEMA.field(name)
            table = table.append_column(field, pa.nulls(len(table), field.type))
    return table.select(columns)


