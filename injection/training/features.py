"""On-disk feature caches: text embeddings and frozen VA features.

Keys: a text embedding is keyed by sha256(text) + the text encoder's id; a VA feature by the
clip's media sha256 + the VA encoder's id + its preprocessing. Values live in append-only
shards (`.npy`, read memory-mapped, so RAM does not grow with the corpus) with a Parquet index
key -> (shard, row). A shard and the index are each replaced atomically: a killed run leaves
either the old or the new index, never a torn one, and resumes from what was cached.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from annotator.core.files import replacing


def text_key(text: str, encoder_id: str) -> str:
    return hashlib.sha256(f"{encoder_id}\0{text}".encode()).hexdigest()


def va_key(media_sha256: str, encoder_id: str, preprocess_key: str) -> str:
    return hashlib.sha256(f"{encoder_id}\0{preprocess_key}\0{media_sha256}".encode()
                          ).hexdigest()


MEMMAP_ROWS = 4096
"""From this many rows on, `get` serves a memory-mapped matrix file instead of an array."""


class FeatureCache:
    """Vectors of one size by key; `get_or_compute` fills what is missing, in chunks, each
    rank of a distributed job its own share (each writes its own index file; readers see
    the union)."""

    def __init__(self, folder: Path, name: str, rank: int = 0):
        self.dir = Path(folder) / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.index_path = self.dir / ("index.parquet" if rank == 0 else
                                      f"index-rank{rank}.parquet")
        self._index: dict[str, tuple[str, int]] | None = None
        self._shards: dict[str, np.ndarray] = {}

    def index(self) -> dict[str, tuple[str, int]]:
        if self._index is None:
            self._index = {}
            for path in sorted(self.dir.glob("index*.parquet")):
                t = pq.read_table(path).to_pydict()
                self._index.update(zip(t["key"], zip(t["shard"], t["row"])))
        return self._index

    def _shard(self, name: str) -> np.ndarray:
        if name not in self._shards:
            self._shards[name] = np.load(self.dir / name, mmap_mode="r")
        return self._shards[name]

    def put(self, keys: list[str], values: np.ndarray) -> None:
        name = f"shard-{uuid.uuid4().hex[:12]}.npy"
        _save_atomic(self.dir / name, np.ascontiguousarray(values, np.float32))
        index = self.index()
        index.update({k: (name, i) for i, k in enumerate(keys)})
        table = pa.table({"key": list(index), "shard": [v[0] for v in index.values()],
                          "row": [v[1] for v in index.values()]})
        with replacing(self.index_path) as tmp:
            pq.write_table(table, tmp)

    def get(self, keys: list[str]) -> np.ndarray:
        """The vectors of `keys` in order; a large set as a read-only memory map of one
        matrix file (made once per key list), so RAM does not hold the corpus."""
        index = self.index()
        rows = [index[k] for k in keys]
        if not rows:
            return np.zeros((0, 0), np.float32)
        if len(rows) < MEMMAP_ROWS:
            return np.stack([self._shard(s)[r] for s, r in rows]).astype(np.float32)
        digest = hashlib.sha256("\0".join(keys).encode()).hexdigest()[:16]
        path = self.dir / f"matrix-{digest}.npy"
        if not path.is_file():
            width = self._shard(rows[0][0]).shape[1]
            with replacing(path) as tmp:
                matrix = np.lib.format.open_memmap(tmp, "w+", np.float32, (len(rows), width))
                for start in range(0, len(rows), MEMMAP_ROWS):
                    part = rows[start:start + MEMMAP_ROWS]
                    matrix[start:start + len(part)] = [self._shard(s)[r] for s, r in part]
                matrix.flush()
                del matrix
        return np.load(path, mmap_mode="r")

    def get_or_compute(self, keys: list[str], compute: Callable[[list[int]], np.ndarray],
                       chunk: int = 256, rank: int = 0, world: int = 1,
                       sync: Callable[[], None] | None = None) -> np.ndarray:
        """Vectors for `keys`; `compute(positions)` makes the missing ones, a chunk at a time
        (each chunk is cached as soon as it exists). With `world` > 1 this rank computes
        the missing keys it owns (by key hash), `sync()` waits for the other ranks, then all
        read all."""
        index = self.index()
        missing = [i for i, k in enumerate(keys) if k not in index]
        seen: set[str] = set()
        todo = [i for i in missing if not (keys[i] in seen or seen.add(keys[i]))]
        if world > 1:  # a key's owner follows from the key, whatever each rank has seen
            todo = [i for i in todo if int(keys[i][:8], 16) % world == rank]
        for start in range(0, len(todo), chunk):
            positions = todo[start:start + chunk]
            self.put([keys[i] for i in positions], compute(positions))
        if world > 1:
            sync()
            self._index = None  # the other ranks' shares
        return self.get(keys)


def _save_atomic(path: Path, values: np.ndarray) -> None:
    with replacing(path) as tmp, open(tmp, "wb") as f:
        np.save(f, values)


@dataclass
class Share:
    """This process's part of a distributed job (rank of world), and how to wait for the
    others; one process alone is rank 0 of 1."""

    rank: int = 0
    world: int = 1
    sync: Callable[[], None] | None = None


def embed_texts(cache: FeatureCache, encoder, texts: list[str], share: Share = Share()
                ) -> np.ndarray:
    keys = [text_key(t, encoder.id) for t in texts]
    return cache.get_or_compute(keys, lambda pos: encoder.encode([texts[i] for i in pos]),
                                rank=share.rank, world=share.world, sync=share.sync)


def va_features(cache: FeatureCache, encoder, media: list[tuple[str, str | None]],
                media_sha256: list[str], share: Share = Share(), **extract_args
                ) -> dict[str, np.ndarray]:
    """Frozen features per branch, [N, D_branch] each, for clips by path (cached by the hash
    of their bytes, separate audio included); `extract_args` go to `loader.extract`."""
    from injection.training.loader import extract

    keys = [va_key(h, encoder.id, encoder.preprocess.key()) for h in media_sha256]

    def compute(positions: list[int]) -> np.ndarray:
        return extract(encoder, [media[i] for i in positions], **extract_args)

    flat = cache.get_or_compute(keys, compute, chunk=1024, rank=share.rank,
                                world=share.world, sync=share.sync)
    return split_branches(flat, encoder.branches)


def split_branches(flat: np.ndarray, branches: dict[str, int]) -> dict[str, np.ndarray]:
    """[N, sum D] -> {branch: [N, D_branch]} for branch sizes `branches` (views: a memory map
    stays one)."""
    out, start = {}, 0
    for name, size in branches.items():
        out[name] = flat[:, start:start + size]
        start += size
    return out
