"""Audit speed on a large synthetic run (the issue's target: 100k rows well under a minute).

    .venv/bin/python -m benchmarks.audit              # 100k rows
    .venv/bin/python -m benchmarks.audit --rows 20000

Prints the time to write the run (not part of the audit) and the audit's own wall time, which
includes reading the Parquet, the rules, duplicates, metrics, the clean set and the report.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()

    from annotator.audit import AuditConfig, audit
    from tests.builders.synthetic_runs import write_synthetic_run

    work = Path(tempfile.mkdtemp(prefix="vaemo-audit-bench-"))
    t0 = time.perf_counter()
    out = write_synthetic_run(work / "run", args.rows)
    written = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics = audit(AuditConfig(out=out, clean=out / "clean.parquet"))
    seconds = time.perf_counter() - t0
    print(json.dumps({"rows": metrics["rows"], "write_s": round(written, 1),
                      "audit_s": round(seconds, 1), "clean": metrics["clean"]["rows"],
                      "flags": metrics["flags"]["counts"],
                      "report_mb": round(Path(metrics["report"]).stat().st_size / 1e6, 1)},
                     indent=1))


if __name__ == "__main__":
    main()
