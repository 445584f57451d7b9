"""VA encoders in: a transformers folder, a safetensors state dict with a factory, or a
`torch.export` program; each behind one forward contract.

Contract: `encoder(frames, audio) -> {branch: [B, D_branch]}` where frames are
`[B, T, 3, H, W]` float (normalised as the encoder expects; see `Preprocess`) and audio is
`[B, S]` float at 16 kHz. A single-output encoder has one branch, "clip".

transformers folders: a video model (VideoMAE, ViViT, TimeSformer class: `pixel_values`
`[B, T, 3, H, W]`), an audio model (wav2vec2, HuBERT, WavLM, Whisper-encoder class), or a folder
with `video/` and `audio/` subfolders holding one of each. Each branch is the mean of its last
hidden states over tokens; the two branches are kept apart for the per-branch dual path, and
fused for the single path by the Projector (mean of the projected, normalised branches).
Pickled `.pt`/`.pth` files load only as plain tensors (`weights_only=True`), and only as a
factory's state dict.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import pickle
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from annotator.errors import EncoderError
from annotator.hashing import file_sha256
from annotator.media import SAMPLE_RATE

VIDEO_TYPES = {"videomae", "vivit", "timesformer"}
AUDIO_TYPES = {"wav2vec2", "hubert", "wavlm", "whisper", "data2vec-audio", "unispeech",
               "unispeech-sat", "wav2vec2-conformer"}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def weights_digest(files: list[Path]) -> str:
    """Short digest of files' names and bytes: the part of an encoder's id that changes
    when its weights (or config) do, so caches never serve features of other weights."""
    digest = hashlib.sha256()
    for f in sorted(files):
        digest.update(f.name.encode() + bytes.fromhex(file_sha256(f)))  # hashed once
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Preprocess:
    """How clips become the encoder's inputs; part of the feature cache key."""

    num_frames: int = 8
    size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    max_duration_s: float = 10.0
    audio_normalize: bool = True

    def key(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)


class VAEncoder(Protocol):
    id: str
    """Names the encoder and its weights: part of every VA feature cache key."""
    kind: str
    """'hf', 'factory' or 'export': the format it came in, and goes back out in."""
    branches: dict[str, int]
    """Output size per branch, e.g. {"video": 768, "audio": 768} or {"clip": 512}."""
    preprocess: Preprocess
    module: nn.Module

    def __call__(self, frames: torch.Tensor | None, audio: torch.Tensor | None
                 ) -> dict[str, torch.Tensor]: ...


def load_encoder(path: str | Path, factory: str | None = None,
                 trust_remote_code: bool = False) -> VAEncoder:
    path = Path(path).expanduser()
    if not path.exists():
        raise EncoderError(f"encoder {path} not found")
    if path.suffix == ".pt2":
        return ExportedEncoder(path, trust_remote_code)
    if path.suffix in (".safetensors", ".pt", ".pth", ".bin"):
        if not factory:
            raise EncoderError(f"{path.name} is a bare state dict: pass --factory "
                               "module:function that builds the nn.Module it belongs to")
        return FactoryEncoder(path, factory)
    if path.is_dir():
        return HFEncoder(path, trust_remote_code)
    raise EncoderError(f"cannot load {path}: expected a transformers folder, a .safetensors "
                       "state dict with --factory, or a torch.export .pt2 program")


class _Branch(nn.Module):
    """One transformers model, mean-pooled over its last hidden states."""

    def __init__(self, model: nn.Module, kind: str, feature_extractor=None):
        super().__init__()
        self.model, self.kind, self.feature_extractor = model, kind, feature_extractor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "video":
            hidden = self.model(pixel_values=x).last_hidden_state
        elif getattr(self.model.config, "model_type", "") == "whisper":
            hidden = self.model.get_encoder()(input_features=x).last_hidden_state
        else:
            hidden = self.model(input_values=x).last_hidden_state
        return hidden.mean(1)


class HFEncoder:
    """A transformers folder (video, audio, or video/ + audio/ subfolders): each branch's
    mean last hidden state, concatenated; preprocessing from the folder's own config."""

    kind = "hf"

    def __init__(self, path: Path, trust_remote_code: bool = False):
        from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

        self.path = path
        folders = {"video": path / "video", "audio": path / "audio"}
        folders = {k: v for k, v in folders.items() if (v / "config.json").is_file()}
        if not folders:
            if not (path / "config.json").is_file():
                raise EncoderError(f"{path} has no config.json and no video/ or audio/ "
                                   "subfolder with one")
            folders = {_modality(AutoConfig.from_pretrained(
                path, trust_remote_code=trust_remote_code)): path}
        self.folders = folders
        branches = {}
        self.preprocess = Preprocess()
        for name, folder in folders.items():
            try:
                model = AutoModel.from_pretrained(folder, trust_remote_code=trust_remote_code,
                                                  dtype=torch.float32)
            except ValueError as err:
                raise EncoderError(f"{folder}: {err} (custom code needs "
                                   "--trust-remote-code, and only for code you trust)") from err
            extractor = None
            if name == "audio":
                try:
                    extractor = AutoFeatureExtractor.from_pretrained(folder)
                except (OSError, ValueError):
                    extractor = None
            else:
                self.preprocess = _video_preprocess(folder, model.config)
            branches[name] = _Branch(model.eval(), name, extractor)
        self.module = nn.ModuleDict(branches)
        self.branches = {n: b.model.config.hidden_size for n, b in branches.items()}
        files = [f for folder in folders.values() for f in folder.glob("*.safetensors")]
        files += [f for folder in folders.values() for f in folder.glob("config.json")]
        self.id = f"hf:{path.name}:{weights_digest(files)}"

    def __call__(self, frames, audio):
        out = {}
        for name, branch in self.module.items():
            if name == "video":
                out[name] = branch(frames)
            else:
                out[name] = branch(self.audio_inputs(branch, audio))
        return out

    @staticmethod
    def audio_inputs(branch: _Branch, audio: torch.Tensor) -> torch.Tensor:
        if branch.feature_extractor is None:
            return audio
        features = branch.feature_extractor([a.numpy() for a in audio],
                                            sampling_rate=SAMPLE_RATE, return_tensors="pt")
        return features.get("input_values", features.get("input_features"))


def _modality(config) -> str:
    kind = getattr(config, "model_type", "")
    if kind in VIDEO_TYPES:
        return "video"
    if kind in AUDIO_TYPES:
        return "audio"
    raise EncoderError(f"model type {kind!r} is neither a known video ({sorted(VIDEO_TYPES)}) "
                       f"nor audio ({sorted(AUDIO_TYPES)}) encoder; wrap it in a factory "
                       "(--factory module:function) with the documented forward contract")


def _video_preprocess(folder: Path, config) -> Preprocess:
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    processor = folder / "preprocessor_config.json"
    if processor.is_file():
        values = json.loads(processor.read_text())
        mean = tuple(values.get("image_mean", mean))
        std = tuple(values.get("image_std", std))
    return Preprocess(num_frames=getattr(config, "num_frames", 8),
                      size=getattr(config, "image_size", 224), mean=mean, std=std)


class FactoryEncoder:
    """A state dict (safetensors, or a tensors-only pickle) and the factory that builds its
    module. The module's forward takes (frames, audio) and returns [B, D]."""

    kind = "factory"

    def __init__(self, path: Path, factory: str):
        self.path, self.factory = path, factory
        self.module = build_factory(factory)
        self.module.load_state_dict(load_state_dict(path), strict=True)
        self.module.eval()
        self.preprocess = Preprocess(**getattr(self.module, "preprocess", {}))
        self.branches = {"clip": int(getattr(self.module, "output_dim", 0)) or self._probe()}
        self.id = f"factory:{factory}:{weights_digest([path])}"

    def _probe(self) -> int:
        p = self.preprocess
        with torch.no_grad():
            out = self.module(torch.zeros(1, p.num_frames, 3, p.size, p.size),
                              torch.zeros(1, SAMPLE_RATE))
        return int(out.shape[-1])

    def __call__(self, frames, audio):
        return {"clip": self.module(frames, audio)}


def build_factory(factory: str) -> nn.Module:
    module_name, _, function = factory.partition(":")
    if not function:
        raise EncoderError(f"--factory {factory!r} must be 'module:function'")
    try:
        built = getattr(importlib.import_module(module_name), function)()
    except (ImportError, AttributeError) as err:
        raise EncoderError(f"--factory {factory!r}: {err}") from err
    if not isinstance(built, nn.Module):
        raise EncoderError(f"--factory {factory!r} returned {type(built).__name__}, not an "
                           "nn.Module")
    return built


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    try:  # tensors only: a pickle that needs code to load is refused, never executed
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise EncoderError(f"{path.name} is not a plain tensors pickle and is refused "
                           f"(weights_only=True: {str(err).splitlines()[0]}); save it with "
                           "safetensors or as a state dict of tensors") from err
    if not isinstance(state, dict):
        raise EncoderError(f"{path.name} holds a {type(state).__name__}, not a state dict")
    return state


@contextmanager
def _weights_only_loads(path: Path):
    """While a .pt2 loads, every `torch.load` inside it is weights-only: torch.export falls back
    to a full unpickle for sample inputs and `use_pickle` payloads, which runs whatever code
    the file carries. Such a file is refused instead, with the opt-in named."""
    original = torch.load

    def weights_only(f, *args, **kwargs):
        kwargs["weights_only"] = True
        try:
            return original(f, *args, **kwargs)
        except pickle.UnpicklingError as err:
            raise EncoderError(
                f"{path.name} holds a pickled payload that is not plain tensors, and loading it "
                "would run code from the file; it is refused. Re-export it without custom "
                "objects, or pass --trust-remote-code if you trust the file") from err

    torch.load = weights_only
    try:
        yield
    finally:
        torch.load = original


class ExportedEncoder:
    """A `torch.export` program (.pt2) with the contract's signature (frames, audio) -> [B, D]."""

    kind = "export"

    def __init__(self, path: Path, trust_pickles: bool = False):
        self.path = path
        with nullcontext() if trust_pickles else _weights_only_loads(path):
            program = torch.export.load(str(path))
        self.module = program.module()
        meta = program.example_inputs[0] if program.example_inputs else None
        frames = meta[0] if meta else torch.zeros(1, 8, 3, 224, 224)
        self.preprocess = Preprocess(num_frames=frames.shape[1], size=frames.shape[-1])
        self.example = meta
        with torch.no_grad():
            out = self.module(*meta) if meta else None
        self.branches = {"clip": int(out.shape[-1]) if out is not None else 0}
        self.id = f"export:{weights_digest([path])}"

    def __call__(self, frames, audio):
        if self.example:  # a program's shapes are fixed: fit the audio to its length
            length = self.example[1].shape[1]
            audio = torch.nn.functional.pad(audio, (0, max(0, length - audio.shape[1])))
            audio = audio[:, :length]
        return {"clip": self.module(frames, audio)}


def clip_tensors(path: str, preprocess: Preprocess, audio_path: str | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(frames [T, 3, size, size] float32 normalised, audio [S] float32 16 kHz) for one clip,
    with the annotator's PyAV decoding; a missing stream is zeros (and said in the row)."""
    import cv2

    from annotator.media import decode

    clip = decode(path, audio_path, num_frames=preprocess.num_frames,
                  max_duration_s=preprocess.max_duration_s, max_side=4 * preprocess.size)
    size = preprocess.size
    if clip.frames is not None:
        frames = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA)
                           for f in clip.frames]).astype(np.float32) / 255.0
        frames = (frames - np.array(preprocess.mean, np.float32)) / np.array(preprocess.std,
                                                                               np.float32)
        frames = frames.transpose(0, 3, 1, 2)
        if len(frames) < preprocess.num_frames:  # short clip: repeat the last frame
            pad = np.repeat(frames[-1:], preprocess.num_frames - len(frames), 0)
            frames = np.concatenate([frames, pad])
    else:
        frames = np.zeros((preprocess.num_frames, 3, size, size), np.float32)
    audio = np.zeros(SAMPLE_RATE, np.float32)  # no audio: one second of silence
    if clip.audio is not None and len(clip.audio):
        audio = clip.audio.astype(np.float32)
        if preprocess.audio_normalize and audio.std() > 0:
            audio = (audio - audio.mean()) / audio.std()
    return np.ascontiguousarray(frames, np.float32), audio
