"""kill -9 at random moments and right after commits, then check that nothing was lost,
doubled or left behind, for the store's reader and for a plain DuckDB glob of the folder.

A run folder first holds a finished run. Then runs with a changed setting each (another
--max-tokens: every row is stale, so every run has all clips to redo) are started and killed
-9 at random moments (planning, engine start, mid-batch, mid-commit) `kills` times; after each
kill, every file must be readable and every clip must still have exactly one row (an older one
or a new one). Finally the last setting runs to completion, and its rows must equal those of
an uninterrupted run, clip by clip, with no temp file and no superseded row left on disk.
Used by benchmarks/chaos.py and the slow tests.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from annotator.core.store import Store

COMPARED = ("status", "error_kind", "description", "reasoning", "raw_output", "cache_key",
            "samples")


def corpus(root: Path, clips: int) -> Path:
    """`clips` rows over a few synthetic tone clips (fast to decode and measure)."""
    import numpy as np

    from annotator.demo import write_clip
    from annotator.core.media import SAMPLE_RATE

    root.mkdir(parents=True, exist_ok=True)
    files = []
    for i, freq in enumerate((180.0, 220.0, 330.0)):
        t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
        wave = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
        frames = np.full((25, 64, 64, 3), 40 + 60 * i, np.uint8)
        frames[:, 20:44, 20:44] = 220
        files.append(write_clip(root / f"tone{i}.mp4", frames, wave))
    lines = ["path,clip_id,label"] + [f"{files[i % 3]},c{i:03d},neutral" for i in range(clips)]
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def command(manifest: Path, out: Path, model: Path, max_tokens: int, latency: float) -> list:
    return [sys.executable, "-m", "annotator.cli", "run", "--manifest", str(manifest),
            "--out", str(out), "--model", str(model), "--engine", "fake", "--faults",
            f"latency={latency}", "--batch-size", "2", "--generation", "one-pass",
            "--labels", "anger,neutral", "--max-tokens", str(max_tokens)]


def _run(cmd: list, inline: bool = False, timeout: float = 900) -> float:
    """An uninterrupted run: its own process, or `inline` in this one (faster where Ray is
    already up, as in the tests)."""
    started = time.perf_counter()
    if inline:
        from typer.testing import CliRunner

        from annotator.cli import app

        result = CliRunner().invoke(app, cmd[3:])
        if result.exit_code:
            raise RuntimeError(f"run failed: {result.output[-2000:]}")
    else:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if done.returncode:
            raise RuntimeError(f"run failed: {done.stderr[-2000:]}")
    return time.perf_counter() - started


def check(out: Path, clips: int) -> dict:
    """Every file readable; exactly one visible row per clip, through the store's reader and
    through a plain DuckDB glob of the folder (`plain_*`); rows per max_tokens setting."""
    import duckdb

    for f in Store(out).files():
        pq.read_table(f)  # raises on a torn file
    rows = Store(out).read(["clip_id", "sampling"]).to_pylist()
    ids = [r["clip_id"] for r in rows]
    plain = [r[0] for r in duckdb.sql(
        f"select clip_id from read_parquet('{out}/descriptions/*.parquet')").fetchall()]
    budgets = sorted({json.loads(r["sampling"])["max_tokens"] for r in rows})
    return {"lost": clips - len(set(ids)), "doubled": len(ids) - len(set(ids)),
            "plain_lost": clips - len(set(plain)), "plain_doubled": len(plain) - len(set(plain)),
            "rows": len(rows), "budgets_seen": budgets}


def _files(out: Path) -> set:
    folder = out / "descriptions"
    return {(p.name, p.stat().st_mtime_ns) for p in folder.glob("*.parquet")}


def _wait_for_a_commit(out: Path, proc, longest: float) -> None:
    """Until a file of the folder appears or is replaced (a commit just landed)."""
    before, deadline = _files(out), time.monotonic() + longest
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if _files(out) != before:
                return
        except FileNotFoundError:  # a file replaced while listed
            return
        time.sleep(0.001)


def run_chaos(work: Path, model: Path, kills: int, clips: int = 24, latency: float = 0.05,
              seed: int = 0, log=print, inline: bool = False) -> dict:
    """The whole experiment; returns its figures (raises AssertionError on a violation).
    `inline`: the uninterrupted runs in this process (the killed ones never are)."""
    rng = random.Random(seed)
    manifest = corpus(work / "corpus", clips)
    reference, out = work / "reference", work / "chaos"
    shutil.rmtree(reference, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    uninterrupted = _run(command(manifest, reference, model, 2048, latency), inline)
    # settings A, finished; how long a whole run takes in its own process is the kill window
    window = _run(command(manifest, out, model, 1024, latency))
    assert check(out, clips)["lost"] == 0
    landed = []
    for k in range(kills):
        # every killed run has all clips to redo: its own budget makes every row stale; every
        # other kill lands right after a commit replaced or added a file, the rest at random
        delay = rng.uniform(0.2, window)
        proc = subprocess.Popen(command(manifest, out, model, 1025 + k, latency),
                                start_new_session=True, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        started = time.monotonic()
        if k % 2:
            _wait_for_a_commit(out, proc, 2 * window)
        else:
            time.sleep(delay)
        delay = time.monotonic() - started
        alive = proc.poll() is None
        if alive:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        state = check(out, clips)
        landed.append({"after_s": round(delay, 2), "killed": alive, **state})
        log(f"kill {k + 1}/{kills} after {delay:.1f} s: {state}")
        assert not (state["lost"] or state["doubled"] or state["plain_lost"]
                    or state["plain_doubled"]), state
    finished = _run(command(manifest, out, model, 2048, latency), inline)
    final, expected = _rows(out), _rows(reference)
    assert sorted(final) == sorted(expected), "the same clips"
    differ = [c for c in expected if any(final[c][k] != expected[c][k] for k in COMPARED)]
    temps = [p.name for p in (out / "descriptions").glob(".*")]
    on_disk = len(pq.read_table(out / "descriptions", columns=["clip_id"]))
    result = {"clips": clips, "kills": kills, "killed_mid_run": sum(x["killed"] for x in landed),
              **{key: max(x[key] for x in landed)
                 for key in ("lost", "doubled", "plain_lost", "plain_doubled")},
              "rows_differing_from_uninterrupted": len(differ), "temp_files": len(temps),
              "rows_on_disk": on_disk, "uninterrupted_s": round(uninterrupted, 1),
              "final_s": round(finished, 1), "kills_log": landed}
    assert not differ and not temps and on_disk == clips, result
    return result


def _rows(out: Path) -> dict:
    return {r["clip_id"]: r for r in Store(out).read().to_pylist()}
