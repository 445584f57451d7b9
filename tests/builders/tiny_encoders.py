"""Tiny random transformers VA encoders of real architectures, built locally from their
configs (no model hub): for tests, the CPU end-to-end run and the GPU check.

`build_tiny_va_encoder` is the default video + audio pair (VideoMAE + wav2vec2);
`build_tiny_architecture(name, out)` builds one of `ARCHITECTURES` as a folder
`vaemo-inject --encoder` reads.
"""

from __future__ import annotations

import json
from pathlib import Path

SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
         "intermediate_size": 64}
WAVEFORM = {"conv_dim": (32, 32, 32), "conv_stride": (5, 4, 4), "conv_kernel": (10, 8, 8),
            "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2,
            "vocab_size": 32}
HALF = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}


def _videomae(out: Path) -> None:
    from transformers import VideoMAEConfig, VideoMAEModel

    config = VideoMAEConfig(image_size=32, patch_size=16, num_frames=4, tubelet_size=2,
                            use_mean_pooling=False, **SMALL)
    VideoMAEModel(config).save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "VideoMAEImageProcessor", "size": {"shortest_edge": 32},
        **HALF}))


def _clip_vision(out: Path) -> None:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    CLIPVisionModel(CLIPVisionConfig(image_size=32, patch_size=16, **SMALL)).save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor",
        "image_mean": [0.4815, 0.4578, 0.4082], "image_std": [0.2686, 0.2613, 0.2758]}))


def _wav2vec2(out: Path, norm: str = "group") -> None:
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    Wav2Vec2Model(Wav2Vec2Config(feat_extract_norm=norm, do_stable_layer_norm=norm == "layer",
                                 **SMALL, **WAVEFORM)).save_pretrained(out)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16_000, do_normalize=True,
                             return_attention_mask=norm == "layer").save_pretrained(out)


def _hubert(out: Path) -> None:
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    HubertModel(HubertConfig(**SMALL, **WAVEFORM)).save_pretrained(out)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16_000).save_pretrained(out)


def _whisper(out: Path) -> None:
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    config = WhisperConfig(d_model=32, encoder_layers=2, decoder_layers=1,
                           encoder_attention_heads=2, decoder_attention_heads=2,
                           encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80,
                           vocab_size=64, max_source_positions=1500, max_target_positions=32,
                           pad_token_id=0, bos_token_id=1, eos_token_id=2,
                           decoder_start_token_id=1)
    WhisperModel(config).save_pretrained(out)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(out)


def _ast(out: Path) -> None:
    from transformers import ASTConfig, ASTFeatureExtractor, ASTModel

    ASTModel(ASTConfig(max_length=128, num_mel_bins=32, patch_size=16, frequency_stride=16,
                       time_stride=16, **SMALL)).save_pretrained(out)
    ASTFeatureExtractor(num_mel_bins=32, max_length=128).save_pretrained(out)


ARCHITECTURES = {
    "videomae": _videomae,
    "clip_vision": _clip_vision,
    "wav2vec2": _wav2vec2,
    "wav2vec2_layer_norm": lambda out: _wav2vec2(out, "layer"),
    "hubert": _hubert,
    "whisper": _whisper,
    "ast": _ast,
}
"""Name -> builder of a single-branch folder."""


def build_tiny_architecture(name: str, out_dir: str | Path, seed: int = 0) -> Path:
    """One architecture as a folder; `name` may be "video+audio" (e.g. "clip_vision+whisper")
    for a video/ + audio/ pair."""
    import torch

    out = Path(out_dir)
    parts = name.split("+")
    for i, part in enumerate(parts):
        torch.manual_seed(seed + i)
        folder = out if len(parts) == 1 else out / ("video", "audio")[i]
        folder.mkdir(parents=True, exist_ok=True)
        ARCHITECTURES[part](folder)
    return out


def build_tiny_va_encoder(out_dir: str | Path, seed: int = 0) -> Path:
    """The default pair: VideoMAE video/ + wav2vec2 audio/."""
    return build_tiny_architecture("videomae+wav2vec2", out_dir, seed)


def build_tiny_text_encoder(out_dir: str | Path, seed: int = 0) -> Path:
    """A random 2-layer BERT with a WordPiece vocabulary trained here on a few affective
    sentences: a text encoder for machines without the shipped MiniLM (the GPU check)."""
    import torch
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    words = ("a person who feels happy sad angry neutral fearful surprised disgusted calm "
             "face smiles frowns brows raised voice high low pitch fast slow loud soft "
             "speaks shoulders tense relaxed gaze eyes mouth open closed")
    tokenizer = BertWordPieceTokenizer(lowercase=True)
    tokenizer.train_from_iterator([words] * 4, vocab_size=256, min_frequency=1)
    tokenizer.save_model(str(out))
    BertTokenizerFast(vocab_file=str(out / "vocab.txt")).save_pretrained(out)
    torch.manual_seed(seed)
    BertModel(BertConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32,
                         num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=256)).save_pretrained(out)
    return out
