"""Write the injected encoder back in the format it came in, and load it again.

- transformers folder -> the same folder layout (`from_pretrained` loads each branch into the
  same class), with the projection beside it;
- factory state dict -> `encoder.safetensors` (load it with the same factory);
- torch.export program -> `encoder.pt2`.
Beside the encoder: `projection.safetensors` (the heads and temperature), `label_texts.
safetensors` (one text embedding per label, for zero-shot use) and `injection.json` (what
built it and how to load it).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from annotator.core.files import replacing
from injection.encoders.va import FactoryEncoder, load_encoder
from injection.training.model import Projector

HF_FILES = ("*.json", "*.safetensors", "pytorch_model*.bin", "*.txt", "*.model")


def export(encoder, projector: Projector, meta: dict, label_text: np.ndarray, target: Path,
           tuned: bool = False) -> Path:
    """`tuned`: the encoder's own weights changed (blocks mode), so they are saved, not
    copied."""
    with replacing(target) as tmp:
        tmp.mkdir(parents=True)
        _write(encoder, projector, meta, label_text, tmp, tuned)
    return Path(target)


def _write(encoder, projector: Projector, meta: dict, label_text: np.ndarray, tmp: Path,
           tuned: bool) -> None:
    if encoder.kind == "hf":
        for name, folder in encoder.folders.items():
            relative = folder.relative_to(encoder.path)
            (tmp / relative).mkdir(parents=True, exist_ok=True)
            for pattern in HF_FILES:
                for f in folder.glob(pattern):
                    shutil.copy2(f, tmp / relative / f.name)
            if tuned:  # same class and config, new weights
                encoder.module[name].model.save_pretrained(tmp / relative)
    elif encoder.kind == "factory":
        save_file({k: v.contiguous() for k, v in encoder.module.state_dict().items()},
                  tmp / "encoder.safetensors")
    else:
        program = torch.export.export(encoder.module, encoder.example)
        torch.export.save(program, str(tmp / "encoder.pt2"))
    save_file({k: v.contiguous() for k, v in projector.state_dict().items()},
              tmp / "projection.safetensors")
    save_file({"label_texts": torch.from_numpy(np.ascontiguousarray(label_text))},
              tmp / "label_texts.safetensors")
    (tmp / "injection.json").write_text(json.dumps({"format": encoder.kind, **meta}, indent=2))


def load_injected(folder: Path):
    """(encoder, projector, meta) from an exported folder."""
    folder = Path(folder)
    meta = json.loads((folder / "injection.json").read_text())
    if meta["format"] == "hf":
        encoder = load_encoder(folder)
    elif meta["format"] == "factory":
        encoder = FactoryEncoder(folder / "encoder.safetensors", meta["factory"])
    else:
        encoder = load_encoder(folder / "encoder.pt2")
    projector = Projector(meta["branches"], meta["text_dim"], meta["dim"], meta["hidden"] or None)
    projector.load_state_dict(load_file(folder / "projection.safetensors"))
    return encoder, projector.eval(), meta
