"""Pick a deterministic, stratified, growth-stable subset of a manifest.

Strata are `label` x `speaker` (whichever of the two the manifest has). Each stratum gets a
quota in proportion to its size (largest remainder), every label keeps at least one clip, and
inside a stratum clips are ranked by a hash of (seed, clip_id) (or, `--select diverse`, picked
to cover their features: annotator/core/diverse.py). Because the rank of a clip does
not depend on the other clips, adding clips to the manifest only adds or removes picks at the
edge of each stratum's quota instead of reshuffling the chosen set.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pyarrow as pa

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)([kKmM]?)$")


def parse_subset(spec: str | float) -> int | float | None:
    """'10k' -> 10000, '2500' -> 2500, '0.1' -> 0.1 (a fraction), 'all' -> None."""
    text = str(spec).strip()
    if text.lower() == "all":
        return None
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"--subset {spec!r}: use a count (2500, 10k, 1.5m), a fraction in "
                         "(0, 1] such as 0.1, or 'all'")
    number, unit = float(match.group(1)), match.group(2).lower()
    if unit:
        return int(number * {"k": 1_000, "m": 1_000_000}[unit])
    if "." in match.group(1):
        if not 0 < number <= 1:
            raise ValueError(f"--subset {spec!r}: a fraction must lie in (0, 1]")
        return number
    if number < 1:
        raise ValueError(f"--subset {spec!r}: a count must be at least 1")
    return int(number)


def stable_rank(seed: int, clip_ids: list[str]) -> np.ndarray:
    """A uint64 per clip that depends only on (seed, clip_id)."""
    return np.array([
        int.from_bytes(hashlib.blake2b(f"{seed}:{c}".encode(), digest_size=8).digest(), "big")
        for c in clip_ids], dtype=np.uint64)


def _quotas(sizes: np.ndarray, target: int, labels: np.ndarray) -> np.ndarray:
    exact = sizes * target / sizes.sum()
    quota = np.floor(exact).astype(np.int64)
    # every label keeps a clip: give its largest stratum one where the label got none
    for label in np.unique(labels):
        strata = np.flatnonzero(labels == label)
        if quota[strata].sum() == 0:
            quota[strata[np.argmax(sizes[strata])]] = 1
    remaining = target - quota.sum()
    if remaining > 0:  # largest remainder, ties broken by stratum order (deterministic)
        order = np.argsort(-(exact - quota), kind="stable")
        for i in order:
            if remaining == 0:
                break
            if quota[i] < sizes[i]:
                quota[i] += 1
                remaining -= 1
    return np.minimum(quota, sizes)


def select_subset(manifest: pa.Table, subset: float | None, seed: int,
                  features: np.ndarray | None = None) -> pa.Table:
    """The chosen rows (manifest columns plus `stratum`), in manifest order. With `features`
    (one row per manifest row), each stratum's quota covers its features
    (annotator/core/diverse.py) instead of following the hash rank."""
    n = len(manifest)
    label = manifest["label"].to_pylist()
    speaker = manifest["speaker"].to_pylist()
    strata_keys = [f"{lab}\x1f{spk}" for lab, spk in zip(label, speaker)]
    with_stratum = manifest.append_column("stratum", pa.array(
        [_stratum_name(lab, spk) for lab, spk in zip(label, speaker)], pa.string()))
    if subset is None or (isinstance(subset, int) and subset >= n) or subset == 1.0:
        return with_stratum
    target = int(round(subset * n)) if isinstance(subset, float) else subset
    target = max(target, 1)
    keys, inverse = np.unique(np.array(strata_keys, dtype=object), return_inverse=True)
    sizes = np.bincount(inverse, minlength=len(keys))
    key_labels = np.array([k.split("\x1f")[0] for k in keys], dtype=object)
    quota = _quotas(sizes, target, key_labels)
    rank = stable_rank(seed, manifest["clip_id"].to_pylist())
    if features is not None:
        return with_stratum.filter(pa.array(diverse_mask(features, inverse, quota, rank, seed)))
    # order clips by (stratum, hash); a clip is chosen if its position in its stratum < quota
    order = np.lexsort((rank, inverse))
    position = np.empty(n, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    position[order] = np.arange(n) - np.repeat(starts, sizes)
    chosen = position < quota[inverse]
    return with_stratum.filter(pa.array(chosen))


def diverse_mask(features: np.ndarray, inverse: np.ndarray, quota: np.ndarray,
                 rank: np.ndarray, seed: int) -> np.ndarray:
    from annotator.core.diverse import pick, project

    x = project(features, seed)
    chosen = np.zeros(len(inverse), bool)
    members = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(np.bincount(inverse, minlength=len(quota)))[:-1]
    known = ~np.isnan(x[:, 0])  # a clip without a vector is never picked
    for stratum, idx in enumerate(np.split(members, bounds)):
        idx = idx[known[idx]]
        if quota[stratum] and len(idx):
            chosen[pick(x, idx, int(quota[stratum]), rank)] = True
    return chosen


def _stratum_name(label: str | None, speaker: str | None) -> str:
    parts = [f"label={label}" if label is not None else "", f"speaker={speaker}"
             if speaker is not None else ""]
    return ",".join(p for p in parts if p) or "all"
