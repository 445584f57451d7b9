"""`vaemo-inject eval`: the encoder before vs after injection, on held-out labelled clips.

- Linear probe with 1%, 10% and 100% of the training labels (at least one per class):
  UAR (unweighted average recall, the field's headline metric) and WAR (accuracy).
  Before: the frozen features as they are; after: the injected embedding.
- Zero-shot: each clip takes the label whose text embedding is nearest.
- Retrieval clip <-> its description: R@1, R@5, R@10 both ways.
Before injection there is no shared space, so zero-shot and retrieval use the heads at their
initialisation (same seed): the chance baseline the trained heads must beat.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from injection.training.model import Projector
from injection.training.train import Features

FRACTIONS = (0.01, 0.1, 1.0)


def uar_war(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    classes = np.unique(true)
    recall = [float((pred[true == c] == c).mean()) for c in classes]
    return {"uar": float(np.mean(recall)), "war": float((pred == true).mean())}


def few_labels(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of a stratified `fraction` of `labels`, at least one per class."""
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        count = max(1, int(round(fraction * len(members))))
        picked.append(rng.choice(members, count, replace=False))
    return np.sort(np.concatenate(picked))


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                 classes: int, l2: float = 1e-3) -> np.ndarray:
    """Multinomial logistic regression (L-BFGS) on standardised features; test predictions."""
    x = torch.from_numpy(train_x).double()
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6) if len(x) > 1 else torch.ones(x.shape[1])
    x = (x - mean) / std
    y = torch.from_numpy(train_y)
    w = torch.zeros(x.shape[1], classes, dtype=torch.double, requires_grad=True)
    b = torch.zeros(classes, dtype=torch.double, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    test = (torch.from_numpy(test_x).double() - mean) / std
    return (test @ w + b).argmax(1).detach().numpy()


def recall_at(similarity: np.ndarray, ks=(1, 5, 10)) -> dict[str, float]:
    """Row i's match is column i; nothing to rank (no held-out clips) gives no scores."""
    if not similarity.size:
        return {}
    rank = (similarity > similarity.diagonal()[:, None]).sum(1)
    return {f"r@{k}": float((rank < k).mean()) for k in ks}


def frozen(features: Features) -> np.ndarray:
    """The encoder's own features, branches side by side: what a probe reads before."""
    return np.concatenate(list(features.va.values()), 1)


@torch.no_grad()
def embed_clips(projector: Projector, features: Features) -> np.ndarray:
    va = {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in features.va.items()}
    return projector.clip_embedding(va).numpy()


@torch.no_grad()
def embed(projector: Projector, features: Features, source: str):
    text = projector.project_text(torch.from_numpy(np.asarray(features.text[source], np.float32))
                                  ).numpy()
    labels = projector.project_text(torch.from_numpy(features.label_text)).numpy()
    return embed_clips(projector, features), text, labels


def classify(model: Projector, train: Features, test: Features, seed: int, raw: bool,
             fractions=FRACTIONS) -> dict:
    """Linear probe trained on `train`'s labelled clips (each fraction of the labels) and
    zero-shot via the label texts, both scored on `test`'s labelled clips (UAR, WAR). `raw`:
    the probe reads the frozen features (before injection), else the injected embedding."""
    keep_train, keep_test = train.labels >= 0, test.labels >= 0
    y_train, y_test = train.labels[keep_train], test.labels[keep_test]
    if not (len(y_train) and len(y_test)):
        return {"linear_probe": {}, "zero_shot": {}}
    clip_test = embed_clips(model, test)
    probe_train, probe_test = (frozen(train), frozen(test)) if raw else \
        (embed_clips(model, train), clip_test)
    classes = int(train.label_text.shape[0])
    probe = {}
    for fraction in fractions:
        pick = few_labels(y_train, fraction, seed)
        pred = linear_probe(probe_train[keep_train][pick], y_train[pick],
                            probe_test[keep_test], classes)
        probe[f"{fraction:.0%}"] = uar_war(y_test, pred)
    label_text = model.project_text(torch.from_numpy(train.label_text)).detach().numpy()
    zero_shot = uar_war(y_test, (clip_test[keep_test] @ label_text.T).argmax(1))
    return {"linear_probe": probe, "zero_shot": zero_shot}


def too_small(test: Features) -> list[str]:
    """Why scores on `test` would mean little, if they would."""
    labels = test.labels[test.labels >= 0]
    found = []
    if len(test) < 10:
        found.append(f"only {len(test)} held-out clips: the scores are anecdotes")
    if len(np.unique(labels)) < 2:
        found.append(f"the held-out clips carry {len(np.unique(labels))} label(s): "
                     "classification scores are trivially 0 or 1")
    return found


def evaluate(projector: Projector, untrained: Projector, features: Features,
             held_out: np.ndarray, source: str = "description", seed: int = 0,
             tuned_va: dict[str, np.ndarray] | None = None) -> dict:
    """`tuned_va`: the fine-tuned encoder's features (blocks mode); `features.va` are the
    original encoder's, which is what "before" measures."""
    train, test = features.subset(~held_out), features.subset(held_out)
    tuned = features if tuned_va is None else \
        Features(tuned_va, features.text, features.labels, features.label_text)
    result: dict = {"clips": {"train": len(train), "test": len(test)},
                    "warnings": too_small(test)}
    for name, model, data in (("before", untrained, features), ("after", projector, tuned)):
        on_train, on_test = data.subset(~held_out), data.subset(held_out)
        scores = classify(model, on_train, on_test, seed, raw=name == "before")
        clip_test, text_test, _ = embed(model, on_test, source)
        similarity = clip_test @ text_test.T
        result[name] = {**scores, "clip_to_text": recall_at(similarity),
                        "text_to_clip": recall_at(similarity.T)}
    return result


def evaluate_split(projector: Projector, untrained: Projector, train: Features,
                   test: Features, seed: int = 0, tuned: tuple[Features, Features] | None = None
                   ) -> dict:
    """A dataset's own protocol: probe on its train split, scored on its test split, and
    zero-shot on the test split; before vs after. `tuned`: (train, test) features of the
    fine-tuned encoder (blocks/lora), where "after" reads those."""
    after_train, after_test = tuned or (train, test)
    return {"clips": {"train": len(train), "test": len(test)}, "warnings": too_small(test),
            "before": classify(untrained, train, test, seed, raw=True),
            "after": classify(projector, after_train, after_test, seed, raw=False)}


def table(result: dict, title: str = "held-out annotated clips") -> str:
    """A short before/after table for the terminal and the README."""
    lines = [f"| {title} | before | after |", "|---|---|---|"]
    before, after = result["before"], result["after"]

    def row(name: str, pair: tuple[dict, dict], key: str) -> None:
        if key in pair[0] and key in pair[1]:
            lines.append(f"| {name} | {pair[0][key]:.3f} | {pair[1][key]:.3f} |")

    for fraction in before["linear_probe"]:
        pair = (before["linear_probe"][fraction], after["linear_probe"][fraction])
        for metric in ("uar", "war"):
            row(f"probe {fraction} labels {metric.upper()}", pair, metric)
    for metric in ("uar", "war"):
        row(f"zero-shot {metric.upper()}", (before["zero_shot"], after["zero_shot"]), metric)
    for k in ("r@1", "r@5", "r@10"):
        if "clip_to_text" in before:
            row(f"clip->text {k}", (before["clip_to_text"], after["clip_to_text"]), k)
    lines += [f"warning: {w}" for w in result.get("warnings", [])]
    return "\n".join(lines)
