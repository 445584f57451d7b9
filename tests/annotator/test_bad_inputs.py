"""Hostile input, one table: each kind of bad clip becomes a typed failed row (or works),
each kind of bad manifest is one clear configuration error naming the row and the fix, and no
good row is ever lost beside them. The fake engine stands in for the model."""

import math
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from annotator.cli import app
from annotator.demo import write_clip
from annotator.core.store import Store
from tests.conftest import pattern_frames, tone

pytestmark = pytest.mark.slow
runner = CliRunner()
OK, MEDIA = {"ok"}, {"media"}

# clip id -> (how it is made, the statuses/error kinds it may end in)
CLIPS = {
    "good_real": ("a real face with real speech", OK),
    "good_tone": ("a synthetic clip", OK),
    "missing": ("a path to nothing", MEDIA),
    "empty": ("a zero-byte .mp4", MEDIA),
    "truncated": ("the first third of a valid clip", OK | MEDIA),
    "not_a_video": ("text in a .mp4", MEDIA),
    "corrupt": ("an mp4 header over random bytes", MEDIA),
    "audio_only": ("an .m4a without video", OK),
    "video_only": ("an .mp4 without audio", OK),
    "uhd_4k": ("3840x2160 frames", OK),
    "three_minutes": ("180 s long (decoded up to --max-duration-s)", OK),
    "tenth_of_a_second": ("0.1 s long", OK),
    "variable_frame_rate": ("irregular frame times", OK),
    "mkv": ("Matroska, H.264/AAC", OK),
    "webm": ("WebM, VP8/Opus", OK),
    "avi": ("AVI, MPEG-4/MP3", OK),
    "unicode_name": ("a path with ünïcödé and emoji", OK),
    "space_and_quotes": ("a path with spaces and quotes", OK),
    "dot_dot": ("a ../ path out of the manifest's folder", OK),
    "directory": ("a folder as the clip", MEDIA),
    "symlink_loop": ("a symlink that points at itself", MEDIA),
    "dev_zero": ("/dev/zero", MEDIA),
    "fifo": ("a named pipe (must not hang)", MEDIA),
    "missing_audio_path": ("a separate audio_path that does not exist", MEDIA),
    "nan_label": ("an empty label", OK),
    "label_outside_set": ("a label the run's set lacks", OK),
}


def then(path, _done):
    """`path`, after the action that made it (evaluated as the argument)."""
    return path


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, clips):
    root = tmp_path_factory.mktemp("hostile")
    data = root / "data"
    data.mkdir()
    wave, frames = tone(220, 1.0), pattern_frames(25)
    make = {
        "good_real": lambda p: then(p, shutil.copy(clips["real_astronaut"], p)),
        "good_tone": lambda p: write_clip(p, frames, wave),
        "missing": lambda p: p,
        "empty": lambda p: then(p, p.write_bytes(b"")),
        "truncated": lambda p: then(p, p.write_bytes(
            clips["real_grace_hopper"].read_bytes()[: clips["real_grace_hopper"].stat().st_size
                                                    // 3])),
        "not_a_video": lambda p: then(p, p.write_text("hello, I am not a video")),
        "corrupt": lambda p: then(p, p.write_bytes(b"\x00\x00\x00\x18ftypmp42"
                                                   + os.urandom(4096))),
        "audio_only": lambda p: write_clip(p.with_suffix(".m4a"), None, wave),
        "video_only": lambda p: write_clip(p, frames, None),
        "uhd_4k": lambda p: write_clip(p, np.full((6, 2160, 3840, 3), 90, np.uint8), wave,
                                       fps=6),
        "three_minutes": lambda p: write_clip(
            p, np.full((360, 32, 32, 3), 80, np.uint8), tone(150, 180.0), fps=2),
        "tenth_of_a_second": lambda p: write_clip(p, frames[:3], tone(220, 0.1)),
        "variable_frame_rate": lambda p: write_clip(
            p, frames[:10], wave, frame_times=[0, .05, .3, .35, .5, .9, 1, 1.3, 1.35, 1.9]),
        "mkv": lambda p: write_clip(p.with_suffix(".mkv"), frames, wave),
        "webm": lambda p: write_clip(p.with_suffix(".webm"), frames, wave,
                                     video_codec="libvpx", audio_codec="libopus",
                                     audio_rate=48000),
        "avi": lambda p: write_clip(p.with_suffix(".avi"), frames, wave, video_codec="mpeg4",
                                    audio_codec="mp3", audio_rate=44100),
        "unicode_name": lambda p: write_clip(p.with_name("ünïcödé 🎬.mp4"), frames, wave),
        "space_and_quotes": lambda p: write_clip(p.with_name("it's a \"clip\" .mp4"), frames,
                                                 wave),
        "dot_dot": lambda p: write_clip(root / "elsewhere" / "x.mp4", frames, wave),
        "directory": lambda p: then(p, p.mkdir()),
        "symlink_loop": lambda p: then(p, p.symlink_to(p)),
        "dev_zero": lambda p: then(p, p.symlink_to("/dev/zero")),
        "fifo": lambda p: then(p, os.mkfifo(p)),
        "missing_audio_path": lambda p: write_clip(p, frames, None),
        "nan_label": lambda p: write_clip(p, frames, wave),
        "label_outside_set": lambda p: write_clip(p, frames, wave),
    }
    rows = []
    for clip_id in CLIPS:
        path = make[clip_id](data / f"{clip_id}.mp4")
        row = {"clip_id": clip_id, "path": os.path.relpath(path, data), "label": "neutral",
               "audio_path": ""}
        if clip_id == "missing_audio_path":
            row["audio_path"] = "no-such-audio.wav"
        if clip_id == "nan_label":
            row["label"] = ""
        if clip_id == "label_outside_set":
            row["label"] = "ennui"
        rows.append(row)
    import csv

    with open(data / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return data / "manifest.csv"


def test_every_bad_clip_is_a_typed_row_and_good_rows_survive(hostile, tiny_omni, tmp_path):
    out = tmp_path / "out"
    dry = runner.invoke(app, ["run", "--manifest", str(hostile), "--out", str(out), "--model",
                              str(tiny_omni), "--engine", "fake", "--dry-run"])
    assert dry.exit_code == 0, dry.output  # planning survives every row too
    result = runner.invoke(app, ["run", "--manifest", str(hostile), "--out", str(out),
                                 "--model", str(tiny_omni), "--engine", "fake", "--labels",
                                 "anger,happy,neutral,sad", "--generation", "one-pass"])
    assert result.exit_code == 0, result.output
    rows = {r["clip_id"]: r for r in Store(out).read().to_pylist()}
    assert sorted(rows) == sorted(CLIPS), "one row per clip, none lost"
    for clip_id, (what, allowed) in CLIPS.items():
        row = rows[clip_id]
        got = row["status"] if row["status"] == "ok" else row["error_kind"]
        assert got in allowed, f"{clip_id} ({what}): {got} {row['error']}"
        if got == "media":
            assert row["error"] and clip_id not in ("",)
    assert "not a regular file" in rows["directory"]["error"]
    assert "not a regular file" in rows["fifo"]["error"]
    assert rows["nan_label"]["label"] is None and rows["label_outside_set"]["label"] == "ennui"
    assert rows["three_minutes"]["cues"]["audio"]["duration_s"] == pytest.approx(30, abs=0.1)
    assert rows["audio_only"]["has_video"] is False


def _run(manifest, tmp_path):
    return runner.invoke(app, ["run", "--manifest", str(manifest), "--out",
                               str(tmp_path / "o"), "--engine", "fake", "--dry-run"])


@pytest.mark.parametrize("name,content,said", [
    ("dupes.csv", "path,clip_id\na.mp4,x\nb.mp4,x\n", "duplicate clip_id(s): 'x' at rows [1, 2]"),
    ("header_only.csv", "path,clip_id,label\n", "has no rows"),
    ("empty.csv", "", "cannot read manifest"),
    ("latin1.csv", "path,label\ncaf\xe9.mp4,col\xe8re\n".encode("latin-1"), "UTF-8"),
    ("bad.jsonl", '{"path": "a.mp4"}\n{"path": "b.mp4"}\n{"path": \n', "line 3"),
    ("no_path.csv", "file,label\na.mp4,sad\n", "no `path` column"),
    ("blank_path.csv", "path,label\na.mp4,sad\n,sad\n", "row 2: path"),
    ("internal.csv", "path,stratum,status\na.mp4,x,y\n",
     "the column(s) status, stratum are names vaemo gives its own columns; rename them"),
])
def test_every_bad_manifest_is_one_clear_error(tmp_path, name, content, said):
    manifest = tmp_path / name
    if isinstance(content, bytes):
        manifest.write_bytes(content)
    else:
        manifest.write_text(content)
    result = _run(manifest, tmp_path)
    assert result.exit_code == 1, result.output
    assert said in " ".join(result.output.split()), result.output
    assert len([x for x in result.output.splitlines() if x.startswith("error")]) == 1


def test_bom_csv_and_odd_parquet_types_still_read(tmp_path, clips):
    shutil.copy(clips["tone_220"], tmp_path / "a.mp4")
    (tmp_path / "bom.csv").write_text("\ufeffpath,label\na.mp4,sad\n", encoding="utf-8")
    from annotator.core.manifest import load_manifest

    assert load_manifest(tmp_path / "bom.csv")["clip_id"].to_pylist() == ["a"]
    # numbers and NaN where text is expected: coerced, NaN means "no label"
    pq.write_table(pa.table({"path": ["a.mp4", "a.mp4"], "clip_id": [1, 2],
                             "label": [math.nan, 3.0]}), tmp_path / "odd.parquet")
    table = load_manifest(tmp_path / "odd.parquet")
    assert table["clip_id"].to_pylist() == ["1", "2"]
    assert table["label"].to_pylist() == [None, "3.0"]
    pq.write_table(pa.table({"path": [["a.mp4"]]}), tmp_path / "wrong.parquet")
    result = _run(tmp_path / "wrong.parquet", tmp_path)
    assert result.exit_code == 1 and "row 1: path" in result.output


def test_hostile_text_from_outside_is_inert_in_the_dataset_card(tmp_path, clips, tiny_omni):
    """A model's config names it (`_name_or_path`), the manifest names its path: neither
    may put HTML, links, code spans or emphasis into OUT/README.md."""
    import json

    model = tmp_path / "model"
    shutil.copytree(tiny_omni, model)
    config = json.loads((model / "config.json").read_text())
    hostile = "<img src=x onerror=alert(1)>`x`[link](javascript:alert(1))**bold**"
    (model / "config.json").write_text(json.dumps({**config, "_name_or_path": hostile}))
    folder = tmp_path / "<b>corpus"
    folder.mkdir()
    shutil.copy(clips["tone_220"], folder / "a.mp4")
    (folder / "m.csv").write_text("path,label\na.mp4,sad\n")
    result = runner.invoke(app, ["run", "--manifest", str(folder / "m.csv"), "--out",
                                 str(tmp_path / "out"), "--model", str(model), "--engine",
                                 "fake", "--labels", "sad,happy"])
    assert result.exit_code == 0, result.output
    card = (tmp_path / "out" / "README.md").read_text()
    head = card.split("## Files")[0]
    for raw in ("<img", "<b>", "`x`", "[link](", "**bold**"):
        assert raw not in head, raw
    assert "&lt;img src=x onerror=alert(1)&gt;" in head
