"""transformers folders as VA encoders: one branch per model, each pooled to one vector.

Kinds of branch, by the model's `model_type`:
- video: a clip model (VideoMAE, ViViT, TimeSformer) over `[B, T, 3, H, W]`; mean of its last
  hidden states.
- frames: an image model (CLIP / SigLIP vision tower, DINOv2, ViT) run on every sampled frame;
  its pooled output (mean of last hidden states where it has none), averaged over frames.
- sequence: a raw-waveform model (wav2vec2, HuBERT, WavLM, ...); mean over the frames of the
  true audio only. Layer-norm models get the attention mask; group-norm ones (wav2vec2-base
  class) normalise over time, padding included, so only clips of equal length share a forward:
  a clip's features never depend on the clips batched with it.
- spectrogram: Whisper's encoder (mean over the frames the clip covers, not the 30 s of
  padding the model is fed) and AST (its pooled output).

Per-clip inputs are made on the CPU (in the loader's worker processes: the feature extractors
are numpy code); `collate` pads a batch and records each clip's true length.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from annotator.core.errors import EncoderError
from annotator.core.media import SAMPLE_RATE
from injection.encoders.preprocess import (IMAGENET_MEAN, IMAGENET_STD, Preprocess, by_length,
                                           weights_digest)

BRANCH_KINDS = {
    "video": {"videomae", "vivit", "timesformer"},
    "frames": {"clip_vision_model", "siglip_vision_model", "dinov2", "vit"},
    "sequence": {"wav2vec2", "hubert", "wavlm", "data2vec-audio", "unispeech",
                 "unispeech-sat", "wav2vec2-conformer"},
    "spectrogram": {"whisper", "audio-spectrogram-transformer"},
}
VISUAL = ("video", "frames")
WHISPER_HOP = 320  # samples per Whisper encoder frame: 160 per mel frame, then stride 2


def branch_kind(config) -> str:
    model_type = getattr(config, "model_type", "")
    for kind, types in BRANCH_KINDS.items():
        if model_type in types:
            return kind
    hint = (" (a full CLIP/SigLIP folder: save its vision tower, e.g. "
            "CLIPVisionModel.from_pretrained(path).save_pretrained(out))"
            if model_type in ("clip", "siglip") else "")
    raise EncoderError(f"model type {model_type!r} is not a supported encoder{hint}; "
                       f"{SUPPORTED}")


SUPPORTED = ("supported: " + ", ".join(f"{kind}: {sorted(types)}"
                                       for kind, types in BRANCH_KINDS.items())
             + ". Anything else: wrap it in a factory (--factory module:function) with the "
             "documented forward contract")


def _config(folder: Path, trust_remote_code: bool):
    """The folder's transformers config, or one line naming the file and what is wrong."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except Exception as err:  # noqa: BLE001 - transformers raises many kinds for bad configs
        raise EncoderError(f"{folder / 'config.json'} cannot be read as a transformers config "
                           f"({type(err).__name__}: {_first_line(err)}); {SUPPORTED}") from err


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0][:300]


@dataclass
class BranchInputs:
    """How one branch's inputs are made from a decoded clip (picklable: runs in workers)."""

    name: str
    kind: str
    model_type: str
    extractor: object | None = None

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        if self.extractor is None:
            return audio
        found = self.extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="np")
        values = found.get("input_values", found.get("input_features"))
        return np.asarray(values[0], np.float32)


@dataclass
class HFInputs:
    """Per-clip inputs and their batching for a transformers encoder's branches."""

    branches: list[BranchInputs]

    def __call__(self, frames: np.ndarray, audio: np.ndarray) -> dict[str, np.ndarray]:
        item = {}
        for branch in self.branches:
            if branch.kind in VISUAL:
                item["frames"] = frames
            else:
                item["audio_values"] = branch(audio)
                item["audio_samples"] = np.int64(len(audio))
        return item

    def collate(self, items: list[dict]) -> dict[str, torch.Tensor]:
        batch = {}
        if "frames" in items[0]:
            batch["frames"] = torch.from_numpy(np.stack([i["frames"] for i in items]))
        if "audio_values" in items[0]:
            batch["audio_values"] = pad_stack([i["audio_values"] for i in items])
            batch["audio_samples"] = torch.tensor([int(i["audio_samples"]) for i in items])
        return batch


def pad_stack(arrays: list[np.ndarray]) -> torch.Tensor:
    """Arrays that differ only in their last axis, zero-padded to the longest and stacked."""
    longest = max(a.shape[-1] for a in arrays)
    padded = [np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, longest - a.shape[-1])]) for a in arrays]
    return torch.from_numpy(np.stack(padded).astype(np.float32))


def masked_mean(hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean over the first `lengths[b]` positions of each row of `hidden` [B, L, D]."""
    lengths = lengths.clamp(1, hidden.shape[1]).to(hidden.device)
    mask = torch.arange(hidden.shape[1], device=hidden.device)[None] < lengths[:, None]
    mask = mask.to(hidden.dtype)[..., None]
    return (hidden * mask).sum(1) / mask.sum(1)


class Branch(nn.Module):
    """One transformers model, pooled to one vector per clip by its kind."""

    def __init__(self, model: nn.Module, kind: str):
        super().__init__()
        self.model, self.kind = model, kind

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        config = self.model.config
        if self.kind == "video":
            return self.model(pixel_values=batch["frames"]).last_hidden_state.mean(1)
        if self.kind == "frames":
            frames = batch["frames"]
            out = self.model(pixel_values=frames.flatten(0, 1))
            pooled = out.pooler_output if getattr(out, "pooler_output", None) is not None \
                else out.last_hidden_state.mean(1)
            return pooled.view(*frames.shape[:2], -1).mean(1)
        values, samples = batch["audio_values"], batch["audio_samples"]
        if config.model_type == "whisper":
            hidden = self.model.get_encoder()(input_features=values).last_hidden_state
            return masked_mean(hidden, (samples + WHISPER_HOP - 1) // WHISPER_HOP)
        if self.kind == "spectrogram":
            return self.model(input_values=values).pooler_output
        if getattr(config, "feat_extract_norm", "group") != "layer":
            # group norm normalises over time, padding included: equal lengths share a forward
            return by_length(lambda rows, n: self.model(input_values=values[rows, :n])
                             .last_hidden_state.mean(1), samples)
        positions = torch.arange(values.shape[1], device=values.device)
        mask = (positions[None] < samples[:, None].to(values.device)).long()
        hidden = self.model(input_values=values, attention_mask=mask).last_hidden_state
        return masked_mean(hidden, self.model._get_feat_extract_output_lengths(samples))


class HFEncoder:
    """A transformers folder (one model, or video/ + audio/ subfolders with one each)."""

    kind = "hf"

    def __init__(self, path: Path, trust_remote_code: bool = False):
        from transformers import AutoModel

        self.path = path
        folders = {"video": path / "video", "audio": path / "audio"}
        folders = {k: v for k, v in folders.items() if (v / "config.json").is_file()}
        if not folders:
            if not (path / "config.json").is_file():
                raise EncoderError(f"{path} has no config.json and no video/ or audio/ "
                                   "subfolder with one")
            config = _config(path, trust_remote_code)
            folders = {"video" if branch_kind(config) in VISUAL else "audio": path}
        self.folders = folders
        branches, inputs = {}, []
        self.preprocess = Preprocess()
        for name, folder in folders.items():
            config = _config(folder, trust_remote_code)
            kind = branch_kind(config)
            if (name == "video") != (kind in VISUAL):
                raise EncoderError(f"{folder} holds a {config.model_type} model, which is not "
                                   f"a {name} encoder")
            try:
                model = AutoModel.from_pretrained(folder, trust_remote_code=trust_remote_code,
                                                  dtype=torch.float32)
            except ValueError as err:
                raise EncoderError(f"{folder}: {_first_line(err)} (custom code needs "
                                   "--trust-remote-code, and only for code you trust)") from err
            except Exception as err:  # noqa: BLE001 - a damaged or hostile weights file
                raise EncoderError(
                    f"{folder}: its weights cannot be loaded ({type(err).__name__}: "
                    f"{_first_line(err)}); a pytorch_model.bin is read tensors-only (one that "
                    "needs code is refused): save the weights as model.safetensors, and check "
                    "the file is complete"
                ) from err
            extractor = None
            if kind in VISUAL:
                self.preprocess = _video_preprocess(folder, model.config, kind)
            else:
                extractor = _feature_extractor(folder, kind)
            branches[name] = Branch(model.eval(), kind)
            inputs.append(BranchInputs(name, kind, config.model_type, extractor))
        self.module = nn.ModuleDict(branches)
        self.inputs = HFInputs(inputs)
        self.branches = {n: _width(b.model.config) for n, b in branches.items()}
        self.id = f"hf:{path.name}:{weights_digest(weight_files(folders.values()))}"

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: branch(batch) for name, branch in self.module.items()}


def weight_files(folders) -> list[Path]:
    """What defines a folder's model: its config and weights in either format."""
    patterns = ("config.json", "*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin",
                "pytorch_model.bin.index.json")
    return sorted({f for folder in folders for p in patterns for f in Path(folder).glob(p)})


def _width(config) -> int:
    return int(getattr(config, "hidden_size", None) or config.d_model)


def _feature_extractor(folder: Path, kind: str):
    from transformers import AutoFeatureExtractor

    try:
        return AutoFeatureExtractor.from_pretrained(folder)
    except (OSError, ValueError) as err:
        if kind == "spectrogram":  # the model reads spectrograms: it cannot go without
            raise EncoderError(f"{folder} has no preprocessor_config.json: a spectrogram "
                               "model needs its feature extractor saved beside it "
                               "(extractor.save_pretrained(folder))") from err
        return None  # a raw-waveform model: the normalised waveform as it is


def _video_preprocess(folder: Path, config, kind: str) -> Preprocess:
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    processor = folder / "preprocessor_config.json"
    if processor.is_file():
        values = json.loads(processor.read_text())
        mean = tuple(values.get("image_mean", mean))
        std = tuple(values.get("image_std", std))
    frames = getattr(config, "num_frames", 8) if kind == "video" else 8
    size = getattr(config, "image_size", 224)
    size = size if isinstance(size, int) else int(math.prod(size) ** 0.5)
    return Preprocess(num_frames=frames, size=size, mean=mean, std=std)
