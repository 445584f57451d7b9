"""VA encoders in: a transformers folder, a safetensors state dict with a factory, or a
`torch.export` program; each behind one contract.

Contract: `encoder.inputs(frames, audio)` makes one clip's model inputs on the CPU (numpy; it
runs in the loader's worker processes), `encoder.inputs.collate(items)` batches them, and
`encoder(batch) -> {branch: [B, D_branch]}` runs the batch on the module's device. Decoded
frames are `[T, 3, H, W]` float (normalised as the encoder expects; see `Preprocess`) and audio
is `[S]` float at 16 kHz; clips differ in audio length, and every encoder kind sees each clip's
true length (masks, per-length groups, or windows), never padding as if it were sound.
A single-output encoder has one branch, "clip".

transformers folders: see `injection.encoders.hf`. A factory module's forward takes
`(frames [B, T, 3, H, W], audio [B, S])`, plus `audio_lengths` [B] if it accepts that argument
(then a batch is zero-padded); without it, clips of equal length share a forward. A `.pt2`
program has the fixed audio length of its example: longer audio is cut into windows of that
length (the last one ending at the clip's end) and the outputs averaged.
Pickled `.pt`/`.pth` files load only as plain tensors (`weights_only=True`), and only as a
factory's state dict.
"""

from __future__ import annotations

import importlib
import inspect
import pickle
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from annotator.core.errors import EncoderError
from annotator.core.media import SAMPLE_RATE
from injection.encoders.preprocess import Preprocess, by_length, weights_digest

class VAEncoder(Protocol):
    id: str
    """Names the encoder and its weights: part of every VA feature cache key."""
    kind: str
    """'hf', 'factory' or 'export': the format it came in, and goes back out in."""
    branches: dict[str, int]
    """Output size per branch, e.g. {"video": 768, "audio": 768} or {"clip": 512}."""
    preprocess: Preprocess
    """How clips are decoded for it (frames, size, normalisation)."""
    inputs: ClipInputs
    module: nn.Module

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...


class ClipInputs(Protocol):
    """One clip's model inputs from its decoded frames and audio, and their batching; must
    pickle (it runs in DataLoader worker processes)."""

    def __call__(self, frames: np.ndarray, audio: np.ndarray) -> dict[str, np.ndarray]: ...

    def collate(self, items: list[dict]) -> dict[str, torch.Tensor]: ...


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
        from injection.encoders.hf import HFEncoder

        return HFEncoder(path, trust_remote_code)
    raise EncoderError(f"cannot load {path}: expected a transformers folder, a .safetensors "
                       "state dict with --factory, or a torch.export .pt2 program")


class FactoryEncoder:
    """A state dict (safetensors, or a tensors-only pickle) and the factory that builds its
    module. The module's forward takes (frames, audio[, audio_lengths]) and returns [B, D]."""

    kind = "factory"

    def __init__(self, path: Path, factory: str):
        self.path, self.factory = path, factory
        self.module = build_factory(factory)
        self.module.load_state_dict(load_state_dict(path), strict=True)
        self.module.eval()
        self.preprocess = Preprocess(**getattr(self.module, "preprocess", {}))
        self.inputs = WaveformInputs()
        self.takes_lengths = "audio_lengths" in inspect.signature(self.module.forward).parameters
        self.branches = {"clip": int(getattr(self.module, "output_dim", 0)) or self._probe()}
        self.id = f"factory:{factory}:{weights_digest([path])}"

    def _probe(self) -> int:
        p = self.preprocess
        item = self.inputs(np.zeros((p.num_frames, 3, p.size, p.size), np.float32),
                           np.zeros(SAMPLE_RATE, np.float32))
        with torch.no_grad():
            return int(self(self.inputs.collate([item]))["clip"].shape[-1])

    def __call__(self, batch):
        frames, audio, samples = batch["frames"], batch["audio"], batch["audio_samples"]
        if self.takes_lengths:
            return {"clip": self.module(frames, audio, audio_lengths=samples)}
        return {"clip": by_length(lambda rows, n: self.module(frames[rows], audio[rows, :n]),
                                  samples)}


@dataclass
class WaveformInputs:
    """Frames and the raw waveform; a batch pads the waveforms and keeps their lengths."""

    def __call__(self, frames: np.ndarray, audio: np.ndarray) -> dict[str, np.ndarray]:
        return {"frames": frames, "audio": audio, "audio_samples": np.int64(len(audio))}

    def collate(self, items: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(i["audio"]) for i in items)
        audio = np.stack([np.pad(i["audio"], (0, longest - len(i["audio"]))) for i in items])
        return {"frames": torch.from_numpy(np.stack([i["frames"] for i in items])),
                "audio": torch.from_numpy(audio.astype(np.float32)),
                "audio_samples": torch.tensor([int(i["audio_samples"]) for i in items])}


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
        if not program.example_inputs or len(program.example_inputs[0]) != 2:
            raise EncoderError(f"{path.name} was exported without its example inputs "
                               "(frames, audio): export it with torch.export.export(module, "
                               "(frames, audio)) so its input shapes are known")
        self.example = program.example_inputs[0]
        frames, audio = self.example
        self.preprocess = Preprocess(num_frames=frames.shape[1], size=frames.shape[-1])
        self.inputs = WindowInputs(int(audio.shape[1]))
        self.batch = _static_batch(program)
        with torch.no_grad():
            self.branches = {"clip": int(self.module(*self.example).shape[-1])}
        self.id = f"export:{weights_digest([path])}"

    def __call__(self, batch):
        owner = batch["window_owner"]
        frames, windows = batch["frames"][owner], batch["audio_windows"]
        step = self.batch or len(owner)  # a program exported with a fixed batch takes that
        out = torch.cat([self.module(frames[i:i + step], windows[i:i + step])
                         for i in range(0, len(owner), step)])
        total = torch.zeros(len(batch["frames"]), out.shape[1], dtype=out.dtype,
                            device=out.device).index_add_(0, owner, out)
        counts = torch.bincount(owner, minlength=len(batch["frames"])).to(out.dtype)
        return {"clip": total / counts[:, None]}


def _static_batch(program) -> int | None:
    """The batch size a program was exported with, or None where its batch is dynamic."""
    first = program.graph_signature.user_inputs[0]
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == first)
    size = node.meta["val"].shape[0]
    return int(size) if isinstance(size, int) else None


@dataclass
class WindowInputs:
    """A program's audio length is fixed: a clip's audio as windows of that length (shorter
    audio zero-padded, longer cut into windows, the last ending at the clip's end)."""

    length: int

    def __call__(self, frames: np.ndarray, audio: np.ndarray) -> dict[str, np.ndarray]:
        if len(audio) <= self.length:
            windows = np.pad(audio, (0, self.length - len(audio)))[None]
        else:
            starts = list(range(0, len(audio) - self.length, self.length))
            starts.append(len(audio) - self.length)
            windows = np.stack([audio[s:s + self.length] for s in starts])
        return {"frames": frames, "audio_windows": windows.astype(np.float32)}

    def collate(self, items: list[dict]) -> dict[str, torch.Tensor]:
        owner = np.concatenate([np.full(len(i["audio_windows"]), n) for n, i in
                                enumerate(items)])
        return {"frames": torch.from_numpy(np.stack([i["frames"] for i in items])),
                "audio_windows": torch.from_numpy(np.concatenate(
                    [i["audio_windows"] for i in items])),
                "window_owner": torch.from_numpy(owner.astype(np.int64))}


