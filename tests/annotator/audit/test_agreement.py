"""Label metrics against scikit-learn on the same data; label mapping and calibration."""

import numpy as np
import pytest
from sklearn import metrics as sk

from annotator.audit.agreement import agreement, calibration
from annotator.core.emotions import label_mapping


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    classes = np.array(["anger", "happy", "neutral", "sad", "fear"])
    true = rng.choice(classes, 300)
    pred = np.where(rng.random(300) < 0.6, true, rng.choice(classes[:4], 300)).astype(object)
    got = agreement(true.astype(object), pred)
    labels = sorted(set(true) | set(pred))
    assert got["classes"] == labels
    assert got["accuracy"] == pytest.approx(sk.accuracy_score(true, pred), abs=1e-12)
    assert got["macro_f1"] == pytest.approx(sk.f1_score(true, pred, average="macro"), abs=1e-12)
    assert got["cohen_kappa"] == pytest.approx(sk.cohen_kappa_score(true, pred), abs=1e-12)
    assert got["uar"] == pytest.approx(sk.balanced_accuracy_score(true, pred), abs=1e-12)
    recall = sk.recall_score(true, pred, average=None, labels=labels, zero_division=0)
    assert [got["per_class_recall"][c] for c in labels] == pytest.approx(recall, abs=1e-12)
    assert got["confusion"] == sk.confusion_matrix(true, pred, labels=labels).tolist()


def test_unmapped_predictions_are_their_own_wrong_class():
    got = agreement(np.array(["sad", "sad"], object), np.array(["sad", None], object))
    assert got["accuracy"] == 0.5 and "(unmapped)" in got["classes"]


def test_labels_map_by_synonym_and_fallback():
    crema = ["anger", "disgust", "fear", "happy", "neutral", "sad"]
    mapped = label_mapping(["Angry", "joy", "calm", "contempt", "worried", "bored"], crema)
    assert mapped == {"Angry": "anger", "joy": "happy", "calm": "neutral",
                      "contempt": "disgust", "worried": "fear", "bored": None}
    ravdess = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
    assert label_mapping(["relaxed", "anger", "surprise"], ravdess) == {
        "relaxed": "calm", "anger": "angry", "surprise": "surprised"}
    assert label_mapping(["glad"], None) == {"glad": "happy"}  # open vocabulary: groups


def test_calibration_bins_by_hand():
    confidence = np.array([0.1, 0.15, 0.9, 0.95, 0.85])
    correct = np.array([False, True, True, True, False])
    got = calibration(confidence, correct)
    low, high = got["bins"]
    assert (low["n"], low["accuracy"], high["n"]) == (2, 0.5, 3)
    assert high["accuracy"] == pytest.approx(2 / 3)
    expected = 2 / 5 * abs(0.5 - 0.125) + 3 / 5 * abs(2 / 3 - 0.9)
    assert got["ece"] == pytest.approx(expected)
