"""Fine-tuning the encoder itself: the last N transformer blocks of each transformers branch
train with the heads (`--mode blocks`), optionally pulled toward the original features
(`--anchor-weight`) and interpolated back toward the original weights at export
(`--interpolate`, WiSE-FT's weight-space ensemble).

The encoder stays in eval mode while its blocks train: dropout and wav2vec2's LayerDrop would
make steps random, and exact resume and DDP parity rely on steps being a function of the
batch. Clips are decoded per step by the loader's workers (the inputs change nothing, the
features do), with audio cropped to `--clip-seconds` to bound a step's memory.
"""

from __future__ import annotations

import torch
from torch import nn

from injection.encoders.hf import HFEncoder
from annotator.core.errors import FinetuneError



def blocks_of(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a transformers encoder (VideoMAE: encoder.layer, wav2vec2 /
    HuBERT / WavLM / Whisper: encoder.layers)."""
    inner = model.get_encoder() if hasattr(model, "get_encoder") else model
    inner = getattr(inner, "encoder", inner)
    for name in ("layer", "layers"):
        found = getattr(inner, name, None)
        if isinstance(found, nn.ModuleList):
            return found
    raise FinetuneError(f"{type(model).__name__} has no encoder.layer(s) list: use --mode heads")


def unfreeze_last_blocks(encoder, count: int) -> list[nn.Parameter]:
    """Freeze the encoder, then let the last `count` blocks of every branch train."""
    if not isinstance(encoder, HFEncoder):
        raise FinetuneError("--mode blocks needs a transformers encoder folder (a factory or "
                            ".pt2 encoder has no known blocks): use --mode heads")
    for parameter in encoder.module.parameters():
        parameter.requires_grad_(False)
    trainable = []
    for branch in encoder.module.values():
        blocks = blocks_of(branch.model)
        if count > len(blocks):
            raise FinetuneError(f"--train-blocks {count}, but {type(branch.model).__name__} "
                                f"has {len(blocks)} blocks")
        for block in list(blocks)[-count:]:
            for parameter in block.parameters():
                parameter.requires_grad_(True)
                trainable.append(parameter)
    return trainable


LORA_TARGETS = ("query", "value", "q_proj", "v_proj")


def apply_lora(encoder, rank: int, alpha: float) -> list[nn.Parameter]:
    """Wrap every branch in LoRA adapters (peft) on its attention query and value
    projections; only the adapters train. Export merges them into the weights."""
    if not isinstance(encoder, HFEncoder):
        raise FinetuneError("--mode lora needs a transformers encoder folder: use --mode heads")
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:
        raise FinetuneError("--mode lora needs peft: pip install peft") from err
    trainable = []
    for branch in encoder.module.values():
        names = {n.rsplit(".", 1)[-1] for n, m in branch.model.named_modules()
                 if isinstance(m, nn.Linear)}
        targets = [t for t in LORA_TARGETS if t in names]
        if not targets:
            raise FinetuneError(f"{type(branch.model).__name__} has no {LORA_TARGETS} "
                                "projections for LoRA: use --mode blocks")
        branch.model = get_peft_model(branch.model, LoraConfig(
            r=rank, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0))
        trainable += [p for p in branch.model.parameters() if p.requires_grad]
    return trainable


def merge_lora(encoder) -> None:
    """Fold the adapters into the weights: the branches are their original classes again.
    Only transformers encoders carry adapters (--mode lora); others are left as they are."""
    if not isinstance(encoder, HFEncoder):
        return
    for branch in encoder.module.values():
        if hasattr(branch.model, "merge_and_unload"):
            branch.model = branch.model.merge_and_unload()


class Tuned(nn.Module):
    """Encoder + heads as one module (so DDP syncs both): media in, embeddings out."""

    def __init__(self, encoder, projector: nn.Module):
        super().__init__()
        self.encoder_module = encoder.module
        self.encoder = encoder
        self.projector = projector

    def forward(self, media: dict[str, torch.Tensor], text: torch.Tensor,
                label_text: torch.Tensor) -> dict:
        """`media`: a collated batch of the encoder's inputs."""
        self.encoder_module.eval()  # see the module docstring
        raw = self.encoder(media)
        out = self.projector(raw, text, label_text)
        out["va_raw"] = raw
        return out

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {f"encoder.{n}": p.detach().cpu().contiguous()
                for n, p in self.encoder_module.named_parameters() if p.requires_grad}


def anchor_loss(raw: dict[str, torch.Tensor], frozen: dict[str, torch.Tensor]
                ) -> dict[str, torch.Tensor]:
    """Relative squared distance of the tuned features from the original ones."""
    parts = [((raw[k] - frozen[k]) ** 2).sum(-1) / (frozen[k] ** 2).sum(-1).clamp(min=1e-8)
             for k in raw]
    return {"anchor_loss": torch.stack([p.mean() for p in parts]).mean()}


@torch.no_grad()
def interpolate(encoder, original: dict[str, torch.Tensor], alpha: float) -> None:
    """theta = alpha * tuned + (1 - alpha) * original, in place, for the trained weights."""
    for name, parameter in encoder.module.named_parameters():
        if name in original:
            parameter.mul_(alpha).add_(original[name], alpha=1 - alpha)
