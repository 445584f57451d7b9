"""A run folder at scale: N rows written as a run writes them (one file per 16-clip batch),
then how long a writer's start takes (repair, which merges the batch files into shards) and
how long the index and a full read take before and after.

    .venv/bin/python -m benchmarks.store --rows 100000
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa


def write_batches(out: Path, rows: int, batch: int) -> None:
    from annotator.core.files import write_parquet
    from annotator.core.store import Store
    from annotator.core.rows import ROW_SCHEMA

    folder = Store(out).dir
    folder.mkdir(parents=True)
    now = datetime.now(UTC)
    for start in range(0, rows, batch):
        n = min(batch, rows - start)
        columns = {f.name: pa.nulls(n, f.type) for f in ROW_SCHEMA}
        columns["clip_id"] = pa.array([f"c{i:08d}" for i in range(start, start + n)])
        columns["status"] = pa.array(["ok"] * n)
        columns["cache_key"] = pa.array([f"{i:064x}" for i in range(start, start + n)])
        columns["created_at"] = pa.array([now] * n, ROW_SCHEMA.field("created_at").type)
        write_parquet(pa.table(columns, schema=ROW_SCHEMA),
                             folder / f"part-bench-{start:09d}.parquet")


def timed(fn) -> tuple[float, object]:
    started = time.perf_counter()
    value = fn()
    return round(time.perf_counter() - started, 2), value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()

    from annotator.core.store import Store

    out = Path(tempfile.mkdtemp(prefix="vaemo-store-")) / "out"
    write_s, _ = timed(lambda: write_batches(out, args.rows, args.batch))
    result = {"rows": args.rows, "files_before": len(Store(out).files()), "write_s": write_s}
    result["index_before_s"], _ = timed(lambda: Store(out).index())
    result["repair_with_merge_s"], _ = timed(lambda: Store(out).repair())
    result["files_after"] = len(Store(out).files())
    result["index_after_s"], index = timed(lambda: Store(out).index())
    result["read_after_s"], table = timed(lambda: Store(out).read())
    assert len(index) == len(table) == args.rows
    result["second_start_s"], _ = timed(lambda: Store(out).repair())
    result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
