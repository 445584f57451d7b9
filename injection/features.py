"""On-disk feature caches: text embeddings and frozen VA features.

Keys: a text embedding is keyed by sha256(text) + the text encoder's id; a VA feature by the
clip's media sha256 + the VA encoder's id + its preprocessing. Values live in append-only
shards (`.npy`, read memory-mapped, so RAM does not grow with the corpus) with a Parquet index
key -> (shard, row). A shard and the index are each replaced atomically: a killed run leaves
either the old or the new index, never a torn one, and resumes from what was cached.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from injection.encoders import clip_tensors



def text_key(text: str, encoder_id: str) -> str:
    return hashlib.sha256(f"{encoder_id}\0{text}".encode()).hexdigest()


def va_key(media_sha256: str, encoder_id: str, preprocess_key: str) -> str:
    return hashlib.sha256(f"{encoder_id}\0{preprocess_key}\0{media_sha256}".encode()
                          ).hexdigest()


class FeatureCache:
    """Vectors of one size by key; `get_or_compute` fills what is missing, in chunks."""

    def __init__(self, folder: Path, name: str):
        self.dir = Path(folder) / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.index_path = self.dir / "index.parquet"
        self._index: dict[str, tuple[str, int]] | None = None
        self._shards: dict[str, np.ndarray] = {}

    def index(self) -> dict[str, tuple[str, int]]:
        if self._index is None:
            self._index = {}
            if self.index_path.is_file():
                t = pq.read_table(self.index_path).to_pydict()
                self._index = dict(zip(t["key"], zip(t["shard"], t["row"])))
        return self._index

    def _shard(self, name: str) -> np.ndarray:
        if name not in self._shards:
            self._shards[name] = np.load(self.dir / name, mmap_mode="r")
        return self._shards[name]

    def put(self, keys: list[str], values: np.ndarray) -> None:
        name = f"shard-{uuid.uuid4().hex[:12]}.npy"
        tmp = self.dir / f".{name}.tmp"
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(values, np.float32))
        os.replace(tmp, self.dir / name)
        index = self.index()
        index.update({k: (name, i) for i, k in enumerate(keys)})
        table = pa.table({"key": list(index), "shard": [v[0] for v in index.values()],
                          "row": [v[1] for v in index.values()]})
        tmp = self.dir / ".index.parquet.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, self.index_path)

    def get(self, keys: list[str]) -> np.ndarray:
        index = self.index()
        rows = [index[k] for k in keys]
        if not rows:
            return np.zeros((0, 0), np.float32)
        return np.stack([self._shard(s)[r] for s, r in rows]).astype(np.float32)

    def get_or_compute(self, keys: list[str], compute: Callable[[list[int]], np.ndarray],
                       chunk: int = 256) -> np.ndarray:
        """Vectors for `keys`; `compute(positions)` makes the missing ones, a chunk at a time
        (each chunk is cached as soon as it exists)."""
        index = self.index()
        missing = [i for i, k in enumerate(keys) if k not in index]
        seen: set[str] = set()
        todo = [i for i in missing if not (keys[i] in seen or seen.add(keys[i]))]
        for start in range(0, len(todo), chunk):
            positions = todo[start:start + chunk]
            self.put([keys[i] for i in positions], compute(positions))
        return self.get(keys)


def embed_texts(cache: FeatureCache, encoder, texts: list[str]) -> np.ndarray:
    keys = [text_key(t, encoder.id) for t in texts]
    return cache.get_or_compute(keys, lambda pos: encoder.encode([texts[i] for i in pos]))


def encode_clips(encoder, media: list[tuple[str, str | None]]) -> dict[str, np.ndarray]:
    """Features per branch, [N, D_branch] each, computed now (no cache), for clips given as
    (file, separate audio file or None)."""
    import torch


    names, out = list(encoder.branches), []
    with torch.inference_mode():
        for path, audio_path in media:  # one clip per forward: clips differ in length
            frames, audio = clip_tensors(path, encoder.preprocess, audio_path)
            features = encoder(torch.from_numpy(frames)[None], torch.from_numpy(audio)[None])
            out.append(np.concatenate([features[n][0].float().numpy() for n in names]))
    return _split(np.stack(out) if out else np.zeros((0, sum(encoder.branches.values()))),
                  encoder)


def va_features(cache: FeatureCache, encoder, media: list[tuple[str, str | None]],
                media_sha256: list[str]) -> dict[str, np.ndarray]:
    """Frozen features per branch, [N, D_branch] each, for clips by path (cached by the hash
    of their bytes, separate audio included)."""
    prep = encoder.preprocess
    keys = [va_key(h, encoder.id, prep.key()) for h in media_sha256]

    def compute(positions: list[int]) -> np.ndarray:
        parts = encode_clips(encoder, [media[i] for i in positions])
        return np.concatenate([parts[n] for n in encoder.branches], 1)

    return _split(cache.get_or_compute(keys, compute, chunk=64), encoder)


def _split(flat: np.ndarray, encoder) -> dict[str, np.ndarray]:
    names = list(encoder.branches)
    split = np.cumsum([encoder.branches[n] for n in names])[:-1]
    return dict(zip(names, np.split(flat, split, axis=1)))
