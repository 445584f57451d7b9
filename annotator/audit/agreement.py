"""Agreement with the dataset's labels: label mapping, confusion, accuracy, macro-F1, kappa,
per-class recall, and a calibration table of the model's confidence.

All metrics come from one confusion matrix built with `np.bincount`; the tests check them
against scikit-learn on the same data.
"""

from __future__ import annotations

import numpy as np


def agreement(true: np.ndarray, pred: np.ndarray) -> dict:
    """Metrics of predicted vs true labels (object arrays of str; None = unmapped prediction).

    Classes are the sorted union of both (scikit-learn's convention); an unmapped prediction
    is its own class '(unmapped)', which is always wrong."""
    pred = np.where(pred == None, "(unmapped)", pred).astype(str)  # noqa: E711 (elementwise)
    true = true.astype(str)
    classes, codes = np.unique(np.concatenate([true, pred]), return_inverse=True)
    k, n = len(classes), len(true)
    if n == 0:
        return {"n": 0}
    t, p = codes[:n], codes[n:]
    confusion = np.bincount(t * k + p, minlength=k * k).reshape(k, k)
    tp = np.diag(confusion).astype(float)
    support, predicted = confusion.sum(1), confusion.sum(0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k),
                   where=(precision + recall) > 0)
    observed = tp.sum() / n
    expected = float((support * predicted).sum()) / n**2
    kappa = (observed - expected) / (1 - expected) if expected < 1 else 0.0
    present = support > 0
    return {
        "n": n, "classes": classes.tolist(), "accuracy": float(observed),
        "macro_f1": float(f1.mean()), "cohen_kappa": float(kappa),
        "uar": float(recall[present].mean()),  # unweighted average recall, the field's UAR
        "per_class_recall": {c: float(r) for c, r, s in zip(classes, recall, present) if s},
        "confusion": confusion.tolist(),
    }


def calibration(confidence: np.ndarray, correct: np.ndarray, bins: int = 5) -> dict:
    """Accuracy per confidence bin and the expected calibration error (ECE)."""
    if len(confidence) == 0:
        return {"bins": [], "ece": None}
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    conf_sum = np.bincount(which, weights=confidence, minlength=bins)
    hit_sum = np.bincount(which, weights=correct.astype(float), minlength=bins)
    rows, ece = [], 0.0
    for b in range(bins):
        if count[b]:
            mean_conf, acc = conf_sum[b] / count[b], hit_sum[b] / count[b]
            ece += count[b] / len(confidence) * abs(acc - mean_conf)
            rows.append({"from": float(edges[b]), "to": float(edges[b + 1]), "n": int(count[b]),
                         "mean_confidence": float(mean_conf), "accuracy": float(acc)})
    return {"bins": rows, "ece": float(ece)}
