"""--select diverse at scale: pick N from a synthetic corpus of M clips x D-dim features (one
stratum, the worst case: no labels, no speakers), and report seconds, ms per candidate and
peak RSS.

    .venv/bin/python -m benchmarks.selection --candidates 100000 1000000 --pick 10000 --dims 768
"""

from __future__ import annotations

import argparse
import json
import resource
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--candidates", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--pick", type=int, default=10_000)
    parser.add_argument("--dims", type=int, default=768)
    parser.add_argument("--groups", type=int, default=50_000,
                        help="near-duplicate groups the candidates are drawn around")
    args = parser.parse_args()

    import numpy as np
    import pyarrow as pa

    from annotator.core.subset import select_subset

    for n in args.candidates:
        rng = np.random.default_rng(0)
        centres = rng.standard_normal((args.groups, args.dims), np.float32)
        group = rng.integers(0, args.groups, n)
        features = centres[group]
        for block in np.array_split(np.arange(n), max(1, n // 50_000)):  # no 3 GB temporary
            features[block] += 0.05 * rng.standard_normal((len(block), args.dims), np.float32)
        table = pa.table({"clip_id": [f"c{i:07d}" for i in range(n)],
                          "label": pa.nulls(n, pa.string()),
                          "speaker": pa.nulls(n, pa.string())})
        started = time.perf_counter()
        chosen = select_subset(table, args.pick, seed=0, features=features)
        took = time.perf_counter() - started
        picked = np.isin(table["clip_id"].to_numpy(zero_copy_only=False),
                         chosen["clip_id"].to_numpy(zero_copy_only=False))
        print(json.dumps({
            "candidates": n, "dims": args.dims, "picked": len(chosen),
            "groups_covered": len(set(group[picked].tolist())), "seconds": round(took, 1),
            "ms_per_candidate": round(1000 * took / n, 4),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                                  2)}), flush=True)
        del features, centres


if __name__ == "__main__":
    main()
