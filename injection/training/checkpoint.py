"""Checkpoints of a training run: `OUT/checkpoints/step-NNNNNN/` and the `last` pointer
(annotator/core/layout.py `InjectionFolder`), written atomically, read back for --resume and
for eval/export."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from annotator.core.errors import ConfigError
from annotator.core.files import replacing, write_text
from annotator.core.layout import InjectionFolder
from injection.config import TrainConfig
from injection.training.finetune import Tuned
from injection.training.model import Projector


def save_checkpoint(folder: InjectionFolder, step: int, projector: Projector, optimizer, scheduler,
                    config: TrainConfig, tuned: Tuned | None = None) -> Path:
    """step-NNNNNN/: projector.safetensors, encoder_blocks.safetensors (blocks mode: the
    trained encoder weights), state.pt (optimizer, scheduler, RNG: tensors and numbers only,
    loadable with weights_only=True), config.json; then `last` points to it."""
    target = folder.checkpoint(step)
    with replacing(target) as tmp:
        tmp.mkdir(parents=True)
        _save_state(tmp, step, projector, optimizer, scheduler, config, tuned)
    write_text(folder.last, target.name)
    return target


def _save_state(tmp: Path, step: int, projector: Projector, optimizer, scheduler,
                config: TrainConfig, tuned: Tuned | None) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in projector.state_dict().items()},
              tmp / "projector.safetensors")
    if tuned is not None:
        save_file(tuned.trainable_state(), tmp / "encoder_blocks.safetensors")
    torch.save({"step": step, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state()},
               tmp / "state.pt")
    (tmp / "config.json").write_text(config.model_dump_json(indent=2))


def load_checkpoint(folder: InjectionFolder, projector: Projector, optimizer=None,
                    scheduler=None, tuned: Tuned | None = None) -> int:
    pointer = folder.last
    if not pointer.is_file():
        raise ConfigError(f"--resume, but {pointer} does not exist: nothing to resume "
                          "(start without --resume)")
    target = folder.checkpoints / pointer.read_text().strip()
    try:
        heads = load_file(target / "projector.safetensors")
        blocks = {k.removeprefix("encoder."): v for k, v in
                  load_file(target / "encoder_blocks.safetensors").items()} if tuned else {}
        state = torch.load(target / "state.pt", weights_only=True)
    except Exception as err:  # noqa: BLE001 - safetensors/torch raise many types on damage
        others = sorted((p.name for p in folder.checkpoints.glob("step-*")
                         if p != target and p.name[5:].isdigit()), key=lambda n: int(n[5:]))
        offer = (f"; an earlier checkpoint is there: write `{others[-1]}` into {pointer} to "
                 "resume from it") if others else ""
        raise ConfigError(f"checkpoint {target} is damaged ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}){offer}") from err
    projector.load_state_dict(heads)
    if tuned is not None:
        missing = set(blocks) - set(dict(tuned.encoder_module.named_parameters()))
        if missing:
            raise ConfigError(f"checkpoint {target} trained other encoder weights "
                              f"({sorted(missing)[:3]}...): resume with the same --train-blocks")
        tuned.encoder_module.load_state_dict(blocks, strict=False)
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"])
