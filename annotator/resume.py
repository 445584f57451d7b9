"""Resume: which selected clips already have their row, without planning them again.

`OUT/plan_index.parquet` keeps each clip's fingerprint (its manifest row, the stat of its files
and the run's settings) and the cache key it was planned to: a clip whose fingerprint and
stored row still match needs no probe, hash, tokenizer or prompt. `split_cached` then splits a
plan into the clips whose stored row has the plan's cache key and those still to compute.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from annotator.core.files import write_parquet
from annotator.core.layout import RunFolder
from annotator.core.store import Store
from annotator.resolve import Resolved
from annotator.stages.plan import context_digest, fingerprint


def known_hits(resolved: Resolved, store: Store
               ) -> tuple[dict[str, tuple], dict[str, str | None]]:
    """({clip: (fingerprint, cache key)} of the clips whose last plan still holds and whose
    stored row has its cache key, every selected clip's fingerprint): those clips need no
    planning, no tokenizer, no hashing."""
    digest = context_digest(resolved.ctx)
    prints = {r["clip_id"]: fingerprint(r, digest) for r in resolved.chosen.to_pylist()}
    path = RunFolder(resolved.config.out).plan_index
    if not path.is_file():
        return {}, prints
    try:
        known = pq.read_table(path).to_pydict()
    except Exception:  # noqa: BLE001 - a damaged index only costs a full plan
        return {}, prints
    stored = store.index()
    hits = {c: (fp, key) for c, fp, key in zip(known["clip_id"], known["fingerprint"],
                                               known["cache_key"])
            if fp is not None and prints.get(c) == fp
            and stored.get(c, {}).get("cache_key") == key}
    return hits, prints


def write_plan_index(resolved: Resolved, plan: pa.Table, hits: dict[str, tuple],
                     prints: dict[str, str | None]) -> None:
    """The selected clips' fingerprints and planned cache keys, for the next run: the
    entries that still held (`hits`, as `known_hits` read them) and the new plan's."""
    entries = dict(hits)
    for clip, key in zip(plan["clip_id"].to_pylist(), plan["cache_key"].to_pylist()):
        entries[clip] = (prints.get(clip), key)
    table = pa.table({"clip_id": list(entries), "fingerprint": [v[0] for v in entries.values()],
                      "cache_key": [v[1] for v in entries.values()]})
    write_parquet(table, RunFolder(resolved.config.out).plan_index)


def split_cached(plan: pa.Table, store: Store, force: bool, only: set[str] | None = None
                 ) -> tuple[pa.Table, pa.Table]:
    """(cached, pending): a clip is cached when its stored row has the plan's cache key and
    it is not forced; with `only` (retry-failed), exactly those clips are pending and no
    other clip is touched. A pending clip's old row stays until its new row
    commits."""
    index = store.index()
    keys = plan["cache_key"].to_pylist()
    ids = plan["clip_id"].to_pylist()
    if only is not None:  # every other clip is left as it is, with or without a row
        hit = [c not in only for c in ids]
    else:
        hit = [not force and index.get(c, {}).get("cache_key") == k for c, k in zip(ids, keys)]
    mask = pa.array(hit, pa.bool_())
    return plan.filter(mask), plan.filter(pc.invert(mask))
