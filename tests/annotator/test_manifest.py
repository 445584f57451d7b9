import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from annotator.core.manifest import ManifestError, load_manifest
from tests.conftest import write_manifest

ROWS = [
    {"path": "a/one.mp4", "label": "happy", "speaker": "s1", "take": "1"},
    {"path": "a/two.mp4", "label": "sad", "speaker": "s2", "take": "2"},
]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet", "datasets"])
def test_formats_resolve_paths_and_keep_extra_columns(tmp_path, fmt):
    if fmt == "csv":
        path = write_manifest(tmp_path / "m.csv", ROWS)
    elif fmt == "jsonl":
        path = tmp_path / "m.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in ROWS))
    elif fmt == "parquet":
        path = tmp_path / "m.parquet"
        pq.write_table(pa.Table.from_pylist(ROWS), path)
    else:
        import datasets

        path = tmp_path / "ds"
        datasets.Dataset.from_list(ROWS).save_to_disk(str(path))
    table = load_manifest(path)
    assert table["clip_id"].to_pylist() == ["a/one", "a/two"]
    assert table["path"].to_pylist()[0] == str((path.parent if fmt != "datasets" else path)
                                               .resolve() / "a/one.mp4")
    assert table["take"].to_pylist() == ["1", "2"]
    assert table["split"].to_pylist() == [None, None]


def test_csv_ids_stay_text(tmp_path):
    path = write_manifest(tmp_path / "m.csv", [{"path": "x.mp4", "clip_id": "007"}])
    assert load_manifest(path)["clip_id"].to_pylist() == ["007"]


def test_duplicate_ids_name_the_rows(tmp_path):
    path = write_manifest(tmp_path / "m.csv", [
        {"path": "x.mp4", "clip_id": "c1"}, {"path": "y.mp4", "clip_id": "c2"},
        {"path": "z.mp4", "clip_id": "c1"}])
    with pytest.raises(ManifestError, match=r"'c1' at rows \[1, 3\]"):
        load_manifest(path)


def test_missing_path_column_lists_what_was_found(tmp_path):
    path = write_manifest(tmp_path / "m.csv", [{"file": "x.mp4", "label": "sad"}])
    with pytest.raises(ManifestError, match="no `path` column.*found: file, label"):
        load_manifest(path)


def test_unreadable_and_unknown_manifests(tmp_path):
    bad = tmp_path / "m.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(ManifestError, match="cannot read manifest"):
        load_manifest(bad)
    with pytest.raises(ManifestError, match="unknown manifest format"):
        load_manifest(tmp_path / "m.xlsx") if (tmp_path / "m.xlsx").write_text("x") else None
    with pytest.raises(ManifestError, match="not found"):
        load_manifest(tmp_path / "nope.csv")


def test_empty_path_is_a_row_error(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"path": None, "label": "x"}))
    with pytest.raises(ManifestError, match="row 1: path"):
        load_manifest(path)
