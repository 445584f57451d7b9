"""A dataset's own evaluation protocol: `vaemo-inject eval --manifest LABELLED`.

The usual case: 10k clips were annotated and injected, and the encoder is judged on the
dataset's official test split (or its folds), thousands of clips that were never annotated.
Their features come from the same caches and loader as training; labels are mapped onto the
run's label set through the audit's synonyms; the probe trains on the train split and is
scored on the test split (UAR and WAR, as MAFW, DFEW and CREMA-D report them), zero-shot on
the test split; before (the original encoder's features) vs after (the injected embedding).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from annotator.core.errors import DataError
from injection.config import EvalConfig
from injection.training.data import map_labels
from injection.training.evaluate import evaluate_split
from injection.training.train import Features

Sets = list[tuple[str, np.ndarray, np.ndarray]]
"""(name, train rows, test rows) per evaluation: one for a split, K for folds."""


def protocol_sets(rows: dict[str, list], config: EvalConfig) -> Sets:
    """The train/test rows the manifest's `split` (or `fold`) column defines."""
    where = config.manifest
    if config.folds:
        folds = rows.get("fold") or [None] * len(rows["path"])
        values = sorted({f for f in folds if f is not None})
        if len(values) != config.folds:
            raise DataError(f"{where}: --folds {config.folds}, but its `fold` column holds "
                            f"{len(values)} value(s) ({', '.join(map(str, values[:10])) or 'none'}"
                            "): add a `fold` column numbering each clip's fold, or drop --folds")
        fold = np.array(folds, dtype=object)
        return [(f"fold {v}", np.flatnonzero(fold != v), np.flatnonzero(fold == v))
                for v in values]
    split = np.array(rows["split"], dtype=object)
    test, train = np.flatnonzero(split == config.split), np.flatnonzero(
        split == config.train_split)
    if not (len(test) and len(train)):
        found = sorted({s for s in rows["split"] if s is not None})
        raise DataError(f"{where}: needs rows with split '{config.train_split}' and "
                        f"'{config.split}' (found: {', '.join(found) or 'no split column'}); "
                        "pass --split/--train-split with the names it uses, or --folds K "
                        "with a `fold` column")
    return [(f"{config.train_split} -> {config.split}", train, test)]


def read_protocol(config: EvalConfig, label_names: list[str]) -> tuple[dict, np.ndarray]:
    """The manifest's labelled rows (columns as lists) and their label indices."""
    from annotator.core.manifest import load_manifest

    table = load_manifest(config.manifest)
    table = table.filter(table["label"].is_valid())
    if not len(table):
        raise DataError(f"{config.manifest}: no row has a `label`; the protocol needs labels")
    rows = table.to_pydict()
    missing = [p for p in rows["path"] if not Path(p).is_file()]
    if missing:
        raise DataError(f"{config.manifest}: {len(missing)} clip(s) not found, e.g. "
                        f"{', '.join(missing[:3])}: fix the paths (relative ones resolve "
                        "against the manifest's folder)")
    mapped = map_labels(rows["label"], label_names)
    lookup = {name: i for i, name in enumerate(label_names)}
    return rows, np.array([lookup[m] for m in mapped], np.int64)


def evaluate_protocol(config: EvalConfig, features: dict, tuned_features: dict | None,
                      labels: np.ndarray, label_text: np.ndarray, projector, untrained,
                      sets: Sets, seed: int) -> dict:
    """Before/after per train/test set, and for folds their mean and std."""
    def part(va: dict, rows: np.ndarray) -> Features:
        return Features({k: np.asarray(v)[rows] for k, v in va.items()}, {}, labels[rows],
                        label_text)

    results = {}
    for name, train, test in sets:
        tuned = (part(tuned_features, train), part(tuned_features, test)) \
            if tuned_features is not None else None
        results[name] = evaluate_split(projector, untrained, part(features, train),
                                       part(features, test), seed, tuned)
    found = {"manifest": str(config.manifest), "sets": results}
    if len(results) > 1:
        found["mean"], found["std"] = _over_folds(list(results.values()))
    return found


def _over_folds(results: list[dict]) -> tuple[dict, dict]:
    """Mean and std of every score over the folds, in the shape of one result."""
    def leaves(tree: dict, prefix=()):
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from leaves(value, (*prefix, key))
            elif isinstance(value, float):
                yield (*prefix, key), value

    collected: dict[tuple, list[float]] = {}
    for result in results:
        for path, value in leaves({k: result[k] for k in ("before", "after")}):
            collected.setdefault(path, []).append(value)
    mean: dict = {"warnings": sorted({w for r in results for w in r["warnings"]})}
    std: dict = {}
    for path, values in collected.items():
        for target, value in ((mean, float(np.mean(values))), (std, float(np.std(values)))):
            node = target
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = value
    return mean, std
