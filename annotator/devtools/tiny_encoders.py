"""A tiny random transformers VA encoder (VideoMAE video branch + wav2vec2 audio branch), built
locally for tests and the CPU end-to-end run: no model hub needed."""

from __future__ import annotations

import json
from pathlib import Path


def build_tiny_va_encoder(out_dir: str | Path, seed: int = 0) -> Path:
    import torch
    from transformers import (VideoMAEConfig, VideoMAEModel, Wav2Vec2Config,
                              Wav2Vec2FeatureExtractor, Wav2Vec2Model)

    out = Path(out_dir)
    torch.manual_seed(seed)
    video = VideoMAEConfig(image_size=32, patch_size=16, num_frames=4, tubelet_size=2,
                           hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, use_mean_pooling=False)
    VideoMAEModel(video).save_pretrained(out / "video")
    (out / "video" / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "VideoMAEImageProcessor", "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5], "size": {"shortest_edge": 32}}))
    audio = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, conv_dim=(32, 32, 32), conv_stride=(5, 4, 4),
                           conv_kernel=(10, 8, 8), num_conv_pos_embeddings=16,
                           num_conv_pos_embedding_groups=2, vocab_size=32)
    Wav2Vec2Model(audio).save_pretrained(out / "audio")
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16_000, do_normalize=True,
                             return_attention_mask=False).save_pretrained(out / "audio")
    return out
