"""A run written in many small batch files is merged into shards at a writer's start: every
row stays readable once, and a kill between writing a shard and removing its sources leaves
duplicates that readers and the next start resolve."""

from datetime import UTC, datetime

import pyarrow as pa

from annotator.core import store as store_module
from annotator.core.store import Store
from annotator.core.rows import ROW_SCHEMA


def batch(start: int, n: int) -> pa.Table:
    columns = {f.name: pa.nulls(n, f.type) for f in ROW_SCHEMA}
    columns["clip_id"] = pa.array([f"c{i:05d}" for i in range(start, start + n)])
    columns["status"] = pa.array(["ok"] * n)
    columns["cache_key"] = pa.array([f"k{i}" for i in range(start, start + n)])
    columns["created_at"] = pa.array([datetime.now(UTC)] * n,
                                     ROW_SCHEMA.field("created_at").type)
    return pa.table(columns, schema=ROW_SCHEMA)


def test_small_batch_files_merge_into_shards_and_every_row_stays(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "SHARD_ROWS", 300)
    store = Store(tmp_path)
    for start in range(0, 1000, 10):  # 100 files of 10 rows
        store.commit(batch(start, 10), "r", {})
    assert len(store.files()) == 100
    Store(tmp_path).repair()
    files = Store(tmp_path).files()
    assert len(files) == 4  # 300 + 300 + 300 + 100 rows
    index = Store(tmp_path).index()
    assert sorted(index) == [f"c{i:05d}" for i in range(1000)]
    assert index["c00123"]["cache_key"] == "k123"
    assert len(Store(tmp_path).read_raw(["clip_id"])) == 1000  # no row twice


def test_a_kill_between_shard_and_cleanup_leaves_one_row_per_clip(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "MERGE_AT", 2)
    store = Store(tmp_path)
    for start in (0, 10, 20):
        store.commit(batch(start, 10), "r", {})
    sources = store.files()
    unlink = type(sources[0]).unlink
    monkeypatch.setattr(type(sources[0]), "unlink", lambda self: None)  # killed before cleanup
    Store(tmp_path).repair()
    monkeypatch.setattr(type(sources[0]), "unlink", unlink)
    assert len(Store(tmp_path).read_raw(["clip_id"])) == 60  # each row twice on disk
    assert len(Store(tmp_path).read()) == 30  # readers see each clip once
    Store(tmp_path).repair()  # the next writer's start
    assert len(Store(tmp_path).read_raw(["clip_id"])) == 30
