"""Projection heads into the shared space, and the learnable temperature.

`Projector` maps VA features (one vector per clip, or one per branch for encoders with a video
and an audio branch) and text embeddings into one L2-normalised space. The temperature is
CLIP's: a learnable log-scale initialised to 1/0.07 and clamped at 100.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

INIT_SCALE, MAX_SCALE = 1 / 0.07, 100.0


def head(dim_in: int, dim_out: int, hidden: int | None) -> nn.Module:
    if not hidden:
        return nn.Linear(dim_in, dim_out)
    return nn.Sequential(nn.Linear(dim_in, hidden), nn.GELU(), nn.Linear(hidden, dim_out))


class Projector(nn.Module):
    """The trained part: a projection head per VA branch and one for text, into a shared
    space, and the learnable temperature (open_clip's logit scale)."""

    def __init__(self, va_dims: dict[str, int], text_dim: int, dim: int = 256,
                 hidden: int | None = 512):
        """va_dims: feature size per VA branch ({"clip": D} for a single or fused encoder,
        {"video": Dv, "audio": Da} for the per-branch dual path)."""
        super().__init__()
        self.va = nn.ModuleDict({name: head(d, dim, hidden) for name, d in va_dims.items()})
        self.text = head(text_dim, dim, hidden)
        self.log_scale = nn.Parameter(torch.tensor(math.log(INIT_SCALE)))

    def logit_scale(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=MAX_SCALE)

    def project_va(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: F.normalize(self.va[name](x), dim=-1) for name, x in features.items()}

    def project_text(self, embeddings: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text(embeddings), dim=-1)

    def forward(self, features: dict[str, torch.Tensor], text: torch.Tensor,
                label_text: torch.Tensor) -> dict[str, torch.Tensor | dict]:
        """Everything a training step needs, in one call (DDP syncs gradients of forward)."""
        return {"va": self.project_va(features), "text": self.project_text(text),
                "label_text": self.project_text(label_text), "scale": self.logit_scale()}

    def clip_embedding(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """One vector per clip: the branch, or the renormalised mean of the branches."""
        projected = list(self.project_va(features).values())
        return F.normalize(torch.stack(projected).mean(0), dim=-1)
