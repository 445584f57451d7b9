"""Diversity-aware picks: inside each stratum, the clips that cover the feature space.

A stratum's quota q is met by greedy k-center selection (farthest first, Gonzalez 1985): each
next clip is the one farthest from every clip already picked, so the pick's largest gap to
any clip is within twice the best possible. Near-identical clips (one speaker, one room,
consecutive segments of one video) sit close together, so after one of them is picked the
rest are never the farthest, and the budget goes to new faces, voices and expressions
instead of to copies. (k-means cells were tried first: their random start puts centres where
the copies are, 40 centres in a group of 400 copies, and covered 96 of 300 planted groups
where farthest-first covers 237.) Features are projected to at most PROJECTED_DIMS dimensions
(PCA fitted on a sample) and large strata pick from a hash-ranked sample, which keeps 1M x 768
within minutes on one node (benchmarks/selection.py). Deterministic for a seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from annotator.core.errors import ConfigError

PROJECTED_DIMS = 64
"""Features are projected to this many dimensions (PCA) before clustering."""
SAMPLE_PER_PICK = 20
"""A stratum picks from its SAMPLE_PER_PICK x quota clips of lowest hash rank (at least
MIN_SAMPLE): 1M candidates for a 10k pick cost 200k, and the sample, like the hash pick,
changes only at its edge as the corpus grows."""
MIN_SAMPLE = 50_000
COVERAGE_SAMPLE = 20_000
"""Candidates the coverage figure is measured on (a sample of the corpus)."""


def load_features(path: Path, clip_ids: list[str]) -> np.ndarray:
    """The `features` of each clip in `clip_ids` (float32, one row each) from a Parquet file
    with `clip_id` and `features` (a list of floats) columns; a clip without one (its media
    unreadable) gets a row of NaN and is never picked."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=["clip_id", "features"])
    except (OSError, KeyError, ValueError) as err:
        raise ConfigError(f"--features {path}: cannot read a Parquet file with `clip_id` and "
                          f"`features` columns ({type(err).__name__}: {err})") from err
    where = pc.index_in(pc.cast(clip_ids, table["clip_id"].type), table["clip_id"])
    found = pc.is_valid(where).to_numpy(zero_copy_only=False)
    if found.sum() < len(clip_ids) / 2:  # most clips unknown: features of another corpus
        missing = [c for c, ok in zip(clip_ids, found) if not ok]
        raise ConfigError(f"--features {path} has no vector for {len(missing)} of the "
                          f"manifest's {len(clip_ids)} clips (e.g. {', '.join(missing[:3])});"
                          " compute them for this manifest (`vaemo-inject features`)")
    vectors = table["features"].take(where.filter(pc.is_valid(where))).combine_chunks()
    lengths = pc.unique(pc.list_value_length(vectors)).to_pylist()
    if len(lengths) != 1 or not lengths[0]:
        raise ConfigError(f"--features {path}: every clip needs a vector of the same length "
                          f"(found lengths {sorted(lengths, key=str)[:5]})")
    out = np.full((len(clip_ids), lengths[0]), np.nan, np.float32)  # NaN: never picked
    out[found] = np.asarray(vectors.flatten(), np.float32).reshape(-1, lengths[0])
    return out


def project(x: np.ndarray, seed: int) -> np.ndarray:
    """`x` centred and projected on its top PROJECTED_DIMS principal axes (PCA on a sample
    of its rows without NaN; NaN rows stay NaN)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    known = np.flatnonzero(~np.isnan(x[:, 0]))
    if len(known) < len(x):
        out = np.full((len(x), min(x.shape[1], PROJECTED_DIMS)), np.nan, np.float32)
        out[known] = project(x[known], seed)
        return out
    if x.shape[1] <= PROJECTED_DIMS:
        return x - x.mean(axis=0)
    rng = np.random.default_rng(seed)
    sample = x[rng.choice(len(x), min(len(x), 50_000), replace=False)]
    mean = sample.mean(axis=0)
    _, _, axes = np.linalg.svd(sample - mean, full_matrices=False)
    top = axes[:PROJECTED_DIMS].T
    return x @ top - mean @ top  # no centred copy of x (3 GB at 1M x 768)


def pick(x: np.ndarray, members: np.ndarray, quota: int, rank: np.ndarray) -> np.ndarray:
    """`quota` of `members` (indices into x) covering their features: greedy k-center
    (farthest first) from the member of lowest hash rank, over the SAMPLE_PER_PICK x quota
    members of lowest rank (all of them in most strata)."""
    if quota >= len(members):
        return members
    pool = members[np.argsort(rank[members], kind="stable")][:max(quota * SAMPLE_PER_PICK,
                                                                   MIN_SAMPLE)]
    points = np.ascontiguousarray(x[pool])
    norms = np.einsum("ij,ij->i", points, points)
    chosen = [0]
    nearest = norms + norms[0] - 2 * points @ points[0]  # squared distance to the chosen
    for _ in range(quota - 1):
        far = int(np.argmax(nearest))
        chosen.append(far)
        np.minimum(nearest, norms + norms[far] - 2 * points @ points[far], out=nearest)
    return pool[chosen]


def coverage(x: np.ndarray, chosen: np.ndarray, seed: int) -> float:
    """Mean distance from a candidate (a sample of COVERAGE_SAMPLE) to its nearest chosen
    clip, in the projected space: lower covers the corpus better."""
    rng = np.random.default_rng(seed)
    sample = x[rng.choice(len(x), min(len(x), COVERAGE_SAMPLE), replace=False)]
    picked = x[chosen]
    picked_norms = np.einsum("ij,ij->i", picked, picked)
    nearest = []
    for block in np.array_split(sample, max(1, len(sample) // 2048)):
        d2 = (np.einsum("ij,ij->i", block, block)[:, None] + picked_norms[None, :]
              - 2 * block @ picked.T)
        nearest.append(np.sqrt(np.maximum(d2.min(axis=1), 0)))
    return float(np.concatenate(nearest).mean())
