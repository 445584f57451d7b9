"""Redundancy and richness: exact and near-duplicate descriptions, length and vocabulary, and
boilerplate phrases that recur across many clips.

Near-duplicates are found by MinHash over word 3-shingles with LSH banding: linear in the
corpus and fast enough for 100k rows in seconds (an embedding pass over 100k texts with the
trainer's text encoder takes minutes on a CPU). Shingling runs in DuckDB, signatures in numpy.
Duplicate descriptions matter for injection: two clips with the same text are each other's
false negatives in the contrastive loss.
"""

from __future__ import annotations

import duckdb
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from annotator.core.schema import description_text_sql

NUM_HASHES, BANDS = 64, 16  # 16 bands of 4: pairs above ~0.5 Jaccard become candidates
M1, M2 = np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53)



def tokenize(con: duckdb.DuckDBPyConnection) -> None:
    """Table `description_words` (row_id, clip_id, words) of the ok rows: the description's
    own text (as the injection trainer embeds it by default), lowercased and split into
    words once, for the duplicate search and the richness statistics."""
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE description_words AS
        SELECT row_id, clip_id, string_split(trim(regexp_replace(
            lower({description_text_sql()}), '[^a-z0-9]+', ' ', 'g')), ' ') AS words
        FROM audited WHERE status = 'ok'
    """)


def _mix(x: np.ndarray) -> np.ndarray:
    """murmur3's 64-bit finaliser: a cheap, well-mixed permutation of uint64."""
    x = x ^ (x >> np.uint64(33))
    x = x * M1
    x = x ^ (x >> np.uint64(33))
    x = x * M2
    return x ^ (x >> np.uint64(33))


def minhash(con: duckdb.DuckDBPyConnection) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row_ids, signatures [rows, NUM_HASHES], hashes of the whole normalised texts) of the
    ok rows' description texts (`tokenize` first)."""
    shingles = con.execute("""
        SELECT row_id, hash(array_to_string(words[i:i + 2], ' ')) AS h
        FROM (SELECT row_id, words, unnest(range(1, greatest(len(words) - 1, 2))) AS i
              FROM description_words)
        ORDER BY row_id
    """).fetchnumpy()
    rid, h = shingles["row_id"], shingles["h"].astype(np.uint64)
    if len(rid) == 0:
        return np.zeros(0, np.int64), np.zeros((0, NUM_HASHES), np.uint64), np.zeros(0)
    whole = con.execute("SELECT hash(array_to_string(words, ' ')) AS h "
                        "FROM description_words ORDER BY row_id").fetchnumpy()["h"]
    starts = np.flatnonzero(np.r_[True, rid[1:] != rid[:-1]])
    salts = np.random.default_rng(0).integers(1, 2**63, NUM_HASHES, dtype=np.uint64)
    signature = np.empty((len(starts), NUM_HASHES), np.uint64)
    for k, salt in enumerate(salts):
        signature[:, k] = np.minimum.reduceat(_mix(h ^ salt), starts)
    return rid[starts].astype(np.int64), signature, whole


def _candidate_pairs(signature: np.ndarray) -> np.ndarray:
    """Pairs (i, j), i < j, that share at least one LSH band (each member of a bucket is
    paired with the bucket's first member, which keeps the count linear)."""
    rows = NUM_HASHES // BANDS
    pairs = []
    for band in range(BANDS):
        block = signature[:, band * rows:(band + 1) * rows]
        key = _mix(block[:, 0])
        for c in range(1, rows):
            key = _mix(key ^ block[:, c])
        order = np.argsort(key, kind="stable")
        sorted_key = key[order]
        first = np.r_[True, sorted_key[1:] != sorted_key[:-1]]
        leader = order[np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))]
        same = ~first
        pairs.append(np.stack([leader[same], order[same]], 1))
    if not pairs:
        return np.zeros((0, 2), np.int64)
    found = np.concatenate(pairs)
    found = np.sort(found, 1)
    return np.unique(found, axis=0)


def duplicates(con: duckdb.DuckDBPyConnection, preference: np.ndarray,
               threshold: float = 0.8) -> dict[str, np.ndarray]:
    """Every row that duplicates a better one: arrays `row_id`, `of` (the row kept),
    `similarity` (estimated Jaccard of word 3-shingles) and `exact`. In each group of
    near-identical texts the row kept has the lowest `preference[row_id]` (e.g. fewest other
    flags), then the lowest row_id."""
    row_ids, signature, whole = minhash(con)
    none = {"row_id": np.zeros(0, np.int64), "of": np.zeros(0, np.int64),
            "similarity": np.zeros(0), "exact": np.zeros(0, bool)}
    if len(row_ids) < 2:
        return none
    pairs = _candidate_pairs(signature)
    similarity = (signature[pairs[:, 0]] == signature[pairs[:, 1]]).mean(1)
    keep = similarity >= threshold
    pairs, similarity = pairs[keep], similarity[keep]
    if not len(pairs):
        return none
    n = len(row_ids)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    best = np.zeros(n)
    np.maximum.at(best, pairs[:, 0], similarity)
    np.maximum.at(best, pairs[:, 1], similarity)
    grouped = np.flatnonzero(best > 0)
    ids = row_ids[grouped]
    order = grouped[np.lexsort((ids, preference[ids], component[grouped]))]
    first = np.r_[True, component[order][1:] != component[order][:-1]]
    keeper = order[np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))]
    dup, kept = order[~first], keeper[~first]
    return {"row_id": row_ids[dup], "of": row_ids[kept], "similarity": best[dup],
            "exact": whole[dup] == whole[kept]}


def richness(con: duckdb.DuckDBPyConnection, boilerplate_share: float = 0.2,
             top: int = 15) -> dict:
    """Length and vocabulary of the description texts, and the 4-word phrases found in at
    least `boilerplate_share` of them (at least 3). `tokenize` first."""
    stats = con.execute("""
        SELECT count(*) AS texts, avg(len(words)) AS mean_words,
               quantile_cont(len(words), 0.05) AS p05_words,
               quantile_cont(len(words), 0.5) AS median_words,
               quantile_cont(len(words), 0.95) AS p95_words,
               avg(len(list_distinct(words)) / greatest(len(words), 1)) AS type_token_ratio
        FROM description_words
    """).fetchall()[0]
    names = ("texts", "mean_words", "p05_words", "median_words", "p95_words",
             "type_token_ratio")
    out = {k: (round(float(v), 3) if v is not None else None) for k, v in zip(names, stats)}
    out["texts"] = int(stats[0])
    out["vocabulary"] = con.execute(
        "SELECT count(DISTINCT w) FROM (SELECT unnest(words) w FROM description_words)"
    ).fetchall()[0][0]
    lengths = con.execute("SELECT len(words) AS n FROM description_words").fetchnumpy()["n"]
    out["length_histogram"] = _histogram(lengths)
    floor = max(3, int(np.ceil(boilerplate_share * out["texts"])))
    phrases = con.execute(f"""
        WITH grams AS (SELECT DISTINCT row_id, array_to_string(words[i:i + 3], ' ') AS phrase
                       FROM (SELECT row_id, words, unnest(range(1, len(words) - 2)) AS i
                             FROM description_words))
        SELECT phrase, count(*) AS n FROM grams GROUP BY phrase HAVING count(*) >= {floor}
        ORDER BY n DESC, phrase LIMIT {top}
    """).fetchall()
    out["boilerplate"] = [{"phrase": p, "share": round(n / out["texts"], 3)} for p, n in phrases]
    return out


def _histogram(values: np.ndarray, bins: int = 12) -> dict:
    """Counts of word lengths in at most `bins` bins of whole words."""
    if len(values) == 0:
        return {"edges": [], "counts": []}
    low, high = int(values.min()), int(values.max()) + 1
    width = max(1, int(np.ceil((high - low) / bins)))
    counts, edges = np.histogram(values, bins=np.arange(low, high + width, width))
    return {"edges": [round(float(e), 1) for e in edges], "counts": counts.tolist()}
