"""A tiny encoder for the factory path: (frames [B,T,3,H,W], audio [B,S]) -> [B, 16]."""

import torch
from torch import nn


class TinyAV(nn.Module):
    preprocess = {"num_frames": 4, "size": 16}
    output_dim = 16

    def __init__(self):
        super().__init__()
        self.video = nn.Linear(3 * 16 * 16, 8)
        self.audio = nn.Linear(4, 8)

    def forward(self, frames: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        v = self.video(frames.mean(1).flatten(1))
        stats = torch.stack([audio.mean(1), audio.std(1), audio.abs().amax(1),
                             (audio[:, 1:] * audio[:, :-1]).mean(1)], 1)
        return torch.cat([v, self.audio(stats)], 1)


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return TinyAV()
