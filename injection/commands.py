"""The `vaemo-inject` commands: train, eval, export. Each reads descriptions and media,
fills the feature caches, and calls the trainer, the evaluator or the exporter."""

from __future__ import annotations

import json
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from annotator.core.errors import ConfigError, DataError
from annotator.core.layout import InjectionFolder
from annotator.core.schema import MODALITY_FIELDS
from injection.config import EvalConfig, FeaturesConfig, TrainConfig
from injection.training.data import Corpus, build_corpus, load_rows
from injection.training.features import (FeatureCache, Share, embed_texts, split_branches,
                                         va_features)
from injection.training.finetune import Tuned, interpolate, merge_lora
from injection.training.checkpoint import load_checkpoint
from injection.training.train import SAMPLED_SOURCES, Features, fit, new_projector, tune_encoder


@dataclass
class Prepared:
    """What `vaemo-inject` loads before training or evaluating: corpus, encoders, features."""

    config: TrainConfig
    corpus: Corpus
    encoder: object
    text_encoder: object
    features: Features


def prepare(config: TrainConfig, log=print, share: Share = Share()) -> Prepared:
    """Corpus, encoders and every feature; under torchrun each rank computes its share of
    what is not cached yet, then reads all."""
    from injection.encoders.va import load_encoder
    from injection.encoders.text import TransformersTextEncoder

    device = compute_device()
    rows, run = load_rows(config.descriptions, config.exclude_flagged)
    corpus = build_corpus(rows, run, config.seed, config.eval_fraction, config.label_source,
                          config.min_label_confidence)
    check_label_path(corpus, config, log)
    encoder = load_encoder(config.encoder, config.factory, config.trust_remote_code)
    text_encoder = TransformersTextEncoder(config.text_encoder, device=device)
    cache = InjectionFolder(config.out).cache
    text_cache = FeatureCache(cache, "text", share.rank)
    sources = {"sampled": SAMPLED_SOURCES, "fields": MODALITY_FIELDS}.get(
        config.text, (config.text,))
    texts = {s: embed_texts(text_cache, text_encoder, corpus.texts[s], share)
             for s in sorted(set(sources) | {"description"})}  # same order on every rank
    if config.text == "fields":  # one embedding: the renormalised mean of the three fields
        mean = np.mean([texts[s] for s in sources], 0)
        texts["fields"] = mean / np.linalg.norm(mean, axis=1, keepdims=True).clip(1e-6)
    label_text = label_embeddings(text_cache, text_encoder, corpus.label_names,
                                  config.label_prompts.split("|"), share)
    log(f"features: {len(corpus)} clips, encoder {encoder.id}, text {text_encoder.id}")
    va = va_features(FeatureCache(cache, "va", share.rank), encoder, corpus.media,
                     corpus.media_sha256, share, **extract_args(config, device, log))
    return Prepared(config, corpus, encoder, text_encoder,
                    Features(va, texts, corpus.labels, label_text))


def compute_device() -> torch.device:
    """The device features and training run on; on a CPU, one torch thread."""
    from injection.training.loader import pick_device

    device = pick_device()
    if device.type == "cpu":
        torch.set_num_threads(1)  # measured: 2 CPU threads are erratic (10-50x slower)
    return device


def check_label_path(corpus: Corpus, config: TrainConfig, log) -> None:
    """Say where path 2's labels come from; refuse a label path that would have none (it
    would silently train the description path alone)."""
    path = corpus.label_path
    if not config.label_weight:
        return
    if path["none"] == len(corpus):
        fix = ("--label-source auto (the descriptions' primary emotions where the dataset "
               "has no label)" if config.label_source == "dataset" else
               f"--min-label-confidence below {config.min_label_confidence}")
        raise DataError(f"the label path has no targets: no clip has a {config.label_source} "
                        f"label; pass {fix}, or --label-weight 0 to train the description "
                        "path alone")
    log(f"label path ({config.label_source}): {path['dataset']} clips from dataset labels, "
        f"{path['description']} from descriptions (confidence >= "
        f"{config.min_label_confidence}), {path['none']} without")


def extract_args(config: TrainConfig, device, log, every_s: float = 10.0) -> dict:
    """How features are extracted: batch, workers, precision, and a progress line every
    `every_s` seconds (clips done, clips/s)."""
    import time

    last = [time.monotonic()]

    def progress(done: int, rate: float) -> None:
        if time.monotonic() - last[0] >= every_s:
            last[0] = time.monotonic()
            log(f"  features: {done} clips, {rate:.1f} clips/s")

    return {"device": device, "batch_size": config.feature_batch, "workers": config.workers,
            "precision": config.precision, "progress": progress}


def label_embeddings(cache: FeatureCache, encoder, names: list[str], templates: list[str],
                     share: Share = Share()) -> np.ndarray:
    """One embedding per label: the renormalised mean over the prompt templates."""
    if not names:
        return np.zeros((0, encoder.dim), np.float32)
    texts = [t.format(label=n) for n in names for t in templates]
    flat = embed_texts(cache, encoder, texts, share).reshape(len(names), len(templates), -1)
    mean = flat.mean(1)
    return (mean / np.linalg.norm(mean, axis=1, keepdims=True).clip(1e-6)).astype(np.float32)


def meta(prep: Prepared) -> dict:
    config, features = prep.config, prep.features
    return {"branches": {k: v.shape[1] for k, v in features.va.items()},
            "text_dim": next(iter(features.text.values())).shape[1], "dim": config.dim,
            "hidden": config.hidden, "dual_path": config.dual_path,
            "text_encoder": prep.text_encoder.id, "encoder": prep.encoder.id,
            "factory": config.factory, "label_names": prep.corpus.label_names,
            "label_path": prep.corpus.label_path,
            "mode": config.mode, "interpolate": config.interpolate,
            "preprocess": prep.encoder.preprocess.__dict__}


def _distributed() -> Share:
    """Under torchrun: this rank's device, the process group (nccl on GPUs, gloo on CPUs)
    and its share; one process alone is rank 0 of 1."""
    import os

    import torch.distributed as dist

    from injection.training.loader import pick_device

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Share()
    device = pick_device()  # before the group: NCCL binds each rank to its own GPU
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Share(dist.get_rank(), dist.get_world_size(), dist.barrier)


def train(config: TrainConfig, log=print) -> dict:
    """`vaemo-inject train`: fill the feature caches (each rank its share), fit the heads
    (and, by --mode, the encoder), checkpoint, and on rank 0 export the injected encoder;
    returns the summary."""
    from injection.training.export import export

    share = _distributed()
    rank = share.rank
    prep = prepare(config, log if rank == 0 else (lambda *_: None), share)
    # path 2 trains on --label-source's targets; evaluation keeps the dataset's labels
    training = replace(prep.features, labels=prep.corpus.targets).subset(~prep.corpus.held_out)
    media = [m for m, held in zip(prep.corpus.media, prep.corpus.held_out) if not held]
    original = _original_weights(prep.encoder, config)
    with _progress(config) if rank == 0 else nullcontext(None) as report:
        result = fit(training, config, config.out, log=report, encoder=prep.encoder,
                     media=media)
    if rank > 0:
        return {"rank": rank}
    _fold_back(prep.encoder, original, config)
    target = export(prep.encoder, result["projector"], meta(prep), prep.features.label_text,
                    InjectionFolder(config.out).encoder, tuned=config.mode != "heads")
    last = result["history"][-1] if result["history"] else {}
    summary = {"steps": config.steps, "resumed_from": result["start"],
               "train_clips": len(training), "final": last, "exported": str(target)}
    InjectionFolder(config.out).train_json.write_text(json.dumps(summary, indent=2))
    return summary


@contextmanager
def _progress(config: TrainConfig):
    """A progress bar with the step, the losses and the throughput (on stderr)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("{task.fields[status]}"), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task("train", total=config.steps, status="")

        def report(record: dict) -> None:
            losses = " ".join(f"{k.removesuffix('_loss')} {v:.4f}" for k, v in record.items()
                              if k.endswith("_loss"))
            bar.update(task, completed=record["step"], status=f"loss {record['loss']:.4f} "
                       f"({losses}) {record['samples_per_s']:.0f} clips/s")

        yield report


def recorded_config(out: Path) -> TrainConfig:
    pointer = InjectionFolder(out).last
    if not pointer.is_file():
        raise ConfigError(f"{pointer} not found: run `vaemo-inject train --out {out}` "
                          "first")
    folder = pointer.parent / pointer.read_text().strip()
    return TrainConfig.model_validate_json((folder / "config.json").read_text())


def _original_weights(encoder, config: TrainConfig) -> dict[str, torch.Tensor] | None:
    """The encoder's weights before tuning: kept only when the export interpolates back."""
    if config.mode == "heads" or config.interpolate == 1:
        return None
    return {n: p.detach().clone() for n, p in encoder.module.named_parameters()}


def _fold_back(encoder, original: dict | None, config: TrainConfig) -> None:
    """After tuning: LoRA adapters merged into the weights, then the interpolation toward
    the original weights (--interpolate)."""
    merge_lora(encoder)
    if original is not None:
        interpolate(encoder, original, config.interpolate)


def restore(out: Path, log):
    """(config, prepared data, trained projector, the tuned encoder module or None), from
    the last checkpoint, the encoder folded back as at export."""
    config = recorded_config(out)
    prep = prepare(config, log)
    projector = new_projector(prep.features, config)
    original = _original_weights(prep.encoder, config)
    tuned = None
    if config.mode != "heads":
        tune_encoder(prep.encoder, config)  # the same trainable layout (LoRA adapters) as trained
        tuned = Tuned(prep.encoder, projector)
    load_checkpoint(InjectionFolder(out), projector, tuned=tuned)
    _fold_back(prep.encoder, original, config)
    return config, prep, projector.eval(), tuned


def evaluate(eval_config: EvalConfig, log=print) -> dict:
    """`vaemo-inject eval`: before vs after on the held-out annotated clips and, with
    --manifest, on the dataset's own split or folds; writes OUT/eval.json."""
    from injection.training.evaluate import evaluate as run_eval
    from injection.training.evaluate import table
    from injection.training.loader import pick_device

    out = eval_config.out
    config, prep, projector, tuned = restore(out, log)
    device = pick_device()
    protocol = _protocol_features(eval_config, config, prep, device, log) \
        if eval_config.manifest else None
    tuned_va = _tuned_features(prep, prep.corpus.media, config, device, log) \
        if tuned is not None else None
    untrained = new_projector(prep.features, config).eval()
    source = config.text if config.text in prep.features.text else "description"
    result = run_eval(projector, untrained, prep.features, prep.corpus.held_out, source,
                      config.seed, tuned_va)
    log(table(result))
    if protocol is not None:
        from injection.training.protocol import evaluate_protocol

        rows, labels, sets, original = protocol
        after = _tuned_features(prep, list(zip(rows["path"], rows["audio_path"])), config,
                                device, log) if tuned is not None else None
        result["protocol"] = evaluate_protocol(eval_config, original, after, labels,
                                               prep.features.label_text, projector, untrained,
                                               sets, config.seed)
        shown = result["protocol"].get("mean") or next(iter(
            result["protocol"]["sets"].values()))
        title = f"{eval_config.manifest.name}: " + (
            f"mean of {len(sets)} folds" if len(sets) > 1 else sets[0][0])
        log(table(shown, title))
    InjectionFolder(out).eval_json.write_text(json.dumps(result, indent=2))
    return result


def _protocol_features(eval_config: EvalConfig, config: TrainConfig, prep: Prepared,
                       device, log):
    """The manifest's rows, labels and train/test sets, and the original encoder's
    features of its clips (cached like the training clips')."""
    from annotator.core.media import media_sha256
    from injection.encoders.va import load_encoder
    from injection.training.protocol import protocol_sets, read_protocol

    rows, labels = read_protocol(eval_config, prep.corpus.label_names)
    sets = protocol_sets(rows, eval_config)
    # after restore a blocks/lora encoder holds its tuned weights: "before" needs the original
    original = prep.encoder if config.mode == "heads" else load_encoder(
        config.encoder, config.factory, config.trust_remote_code)
    media = list(zip(rows["path"], rows["audio_path"]))
    log(f"protocol: {len(media)} labelled clips from {eval_config.manifest}")
    features = va_features(FeatureCache(InjectionFolder(config.out).cache, "va"), original, media,
                           [media_sha256(p, a) for p, a in media],
                           **extract_args(config, device, log))
    return rows, labels, sets, features


def _tuned_features(prep: Prepared, media, config: TrainConfig, device, log) -> dict:
    """The fine-tuned encoder's features (blocks/lora): computed now, never cached (its id
    names the original weights)."""
    from injection.training.loader import extract

    return split_branches(extract(prep.encoder, media, **extract_args(config, device, log)),
                          prep.encoder.branches)


def export_checkpoint(out: Path, log=print) -> Path:
    """`vaemo-inject export`: write OUT/encoder from the last checkpoint, in the encoder's
    own format; returns where."""
    from injection.training.export import export

    config, prep, projector, tuned = restore(out, log)
    return export(prep.encoder, projector, meta(prep), prep.features.label_text,
                  InjectionFolder(out).encoder, tuned=tuned is not None)


def features(config: FeaturesConfig, log=print) -> dict:
    """Per-clip embeddings of a manifest: the encoder's branches (or, without one, the
    measured ones), each L2-normalised, side by side, cached by media hash and encoder id (a
    re-run computes only new clips). A clip whose media cannot be read gets no vector, and is
    named."""
    import pyarrow as pa

    from annotator.core.errors import MediaError
    from annotator.core.files import write_parquet
    from annotator.core.manifest import load_manifest
    from annotator.core.media import readable_hashes
    from injection.encoders.va import load_encoder

    device, share = compute_device(), _distributed()
    log = log if share.rank == 0 else (lambda *_: None)
    readable, hashes, unreadable = [], [], []
    rows = load_manifest(config.manifest).select(["clip_id", "path", "audio_path"]).to_pylist()
    for row, found in zip(rows, readable_hashes([(r["path"], r["audio_path"])
                                                  for r in rows])):
        if isinstance(found, MediaError):
            unreadable.append(f"{row['clip_id']} ({found})")
        else:
            readable.append(row)
            hashes.append(found)
    folder, media = config.cache or config.out.parent / ".vaemo-features", [
        (r["path"], r["audio_path"]) for r in readable]
    if config.encoder is None:
        log(f"features: {len(readable)} clips, measured (no encoder)")
        branches = measured_features(FeatureCache(folder, "measured", share.rank), media,
                                     hashes, config.workers, share)
    else:
        encoder = load_encoder(config.encoder, config.factory, config.trust_remote_code)
        log(f"features: {len(readable)} clips, encoder {encoder.id}")
        branches = va_features(FeatureCache(folder, "va", share.rank), encoder, media, hashes,
                               share, **extract_args(config, device, log))
    if share.rank > 0:  # every rank filled its share of the cache; rank 0 writes the file
        return {"rank": share.rank}
    vectors = np.concatenate([b / np.linalg.norm(b, axis=1, keepdims=True).clip(1e-6)
                              for b in branches.values()], axis=1).astype(np.float32)
    width = vectors.shape[1]
    write_parquet(pa.table({"clip_id": [r["clip_id"] for r in readable],
                            "features": pa.FixedSizeListArray.from_arrays(
                                pa.array(vectors.ravel()), width)}), config.out)
    summary = {"clips": len(readable), "dims": width, "out": str(config.out),
               "branches": {name: int(b.shape[1]) for name, b in branches.items()},
               "unreadable": len(unreadable)}
    log(f"wrote {config.out}: {len(readable)} clips x {width} "
        f"({', '.join(f'{k} {v}' for k, v in summary['branches'].items())})")
    if unreadable:
        log(f"{len(unreadable)} clips have no vector (unreadable media), e.g. "
            f"{'; '.join(unreadable[:3])}; --select diverse never picks them")
    return summary


def measured_features(cache: FeatureCache, media: list, hashes: list[str], workers: int,
                      share: Share = Share()) -> dict[str, np.ndarray]:
    """The measured branches (injection/encoders/measured.py) of each clip, cached, computed
    in `workers` processes, each column z-scored over the corpus (dB, Hz and pixels alike)."""
    from concurrent.futures import ProcessPoolExecutor

    from injection.encoders import measured
    from injection.training.features import va_key

    def compute(positions: list[int]) -> np.ndarray:
        paths = [media[i] for i in positions]
        if not workers:
            return np.stack([measured.clip_vector(*m) for m in paths])
        with ProcessPoolExecutor(workers) as pool:
            return np.stack(list(pool.map(measured.clip_vector, *zip(*paths), chunksize=8)))

    keys = [va_key(h, measured.ID, "") for h in hashes]
    flat = np.asarray(cache.get_or_compute(keys, compute, rank=share.rank, world=share.world,
                                           sync=share.sync), np.float32)
    return split_branches((flat - flat.mean(0)) / flat.std(0).clip(1e-6), measured.BRANCHES)
