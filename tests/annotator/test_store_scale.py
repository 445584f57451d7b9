"""A writer appends new clips to one open file; a folder of many small batch files (as older
versions wrote them) is merged into shards at a writer's start: every row stays readable
once, and a kill between writing a shard and removing its sources leaves duplicates that
readers and the next start resolve."""

from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq

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


def test_a_writer_appends_new_clips_to_one_file_until_it_is_full(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "OPEN_FILE_ROWS", 250)
    store = Store(tmp_path)
    for start in range(0, 1000, 10):
        store.commit(batch(start, 10), "r", {})
    assert [pq.ParquetFile(f).metadata.num_rows for f in store.files()] == [250] * 4
    assert len(pq.read_table(tmp_path / "descriptions")) == 1000


def test_small_batch_files_merge_into_shards_and_every_row_stays(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "SHARD_ROWS", 300)
    monkeypatch.setattr(store_module, "OPEN_FILE_ROWS", 10)  # a file per batch, as before
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
    monkeypatch.setattr(store_module, "OPEN_FILE_ROWS", 10)
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


def test_a_plain_glob_reader_sees_one_row_per_clip_even_mid_commit(tmp_path, monkeypatch):
    """A batch recomputing clips held in two files is written file by file; a crash after
    the first rewrite leaves the first file's clips new and the second's old, never both."""
    monkeypatch.setattr(store_module, "OPEN_FILE_ROWS", 10)
    store = Store(tmp_path)
    store.commit(batch(0, 10), "r", {})
    store.commit(batch(10, 10), "r", {})
    assert len(store.files()) == 2
    redo = batch(5, 10)  # c00005..c00014: five rows in each file
    redo = redo.set_column(redo.schema.get_field_index("cache_key"), "cache_key",
                           pa.array(["new"] * 10))
    writes = []
    real = store_module.write_parquet

    def crash_after_one(table, path):
        if writes:
            raise SystemExit("killed")  # a kill -9 between the two rewrites
        writes.append(path)
        real(table, path)

    monkeypatch.setattr(store_module, "write_parquet", crash_after_one)
    try:
        Store(tmp_path).commit(redo, "r2", {})
    except SystemExit:
        pass
    plain = pq.read_table(tmp_path / "descriptions", columns=["clip_id", "cache_key"])
    ids = plain["clip_id"].to_pylist()
    assert sorted(ids) == [f"c{i:05d}" for i in range(20)]  # none lost, none twice
    assert plain["cache_key"].to_pylist().count("new") == 5
    monkeypatch.setattr(store_module, "write_parquet", real)
    Store(tmp_path).commit(redo, "r2", {})  # the re-run
    plain = pq.read_table(tmp_path / "descriptions", columns=["clip_id", "cache_key"])
    assert len(plain) == 20 and plain["cache_key"].to_pylist().count("new") == 10


def test_rows_written_before_a_cue_stream_existed_read_beside_new_ones(tmp_path):
    """A folder annotated with cues of an older version (no `face` member) and re-run with
    the new ones: both read as one table, the old rows' missing member null."""
    old_cues = pa.struct([f for f in ROW_SCHEMA.field("cues").type if f.name != "face"])
    old_schema = ROW_SCHEMA.set(ROW_SCHEMA.get_field_index("cues"),
                                ROW_SCHEMA.field("cues").with_type(old_cues))
    old = batch(0, 3).cast(old_schema)
    old = old.set_column(old.schema.get_field_index("cues"), "cues",
                         pa.array([{"version": "3", "audio": None, "video": None}] * 3, old_cues))
    (tmp_path / "descriptions").mkdir()
    pq.write_table(old, tmp_path / "descriptions" / "old.parquet")
    Store(tmp_path).commit(batch(3, 2), "r", {})
    rows = Store(tmp_path).read(["clip_id", "cues"]).to_pylist()
    assert len(rows) == 5
    assert [r["cues"] for r in rows[:3]] == [{"version": "3", "audio": None, "video": None,
                                              "face": None}] * 3
