"""Planted structure: VA features carry a hidden emotion (and intensity) under a strong
nuisance; descriptions are written from the hidden factors in varied wording and embedded by
the real MiniLM. Injection must lift the few-label probe and retrieval; shuffled descriptions
(the control) must not. Only the description path is on: labels would lift the probe alone."""

import numpy as np
import pytest

from injection.config import TrainConfig
from injection.training.evaluate import evaluate, evaluate_split
from injection.training.train import Features, fit, new_projector

EMOTIONS = {
    "anger": ["angry", "furious", "irritated", "enraged"],
    "happiness": ["happy", "joyful", "cheerful", "delighted"],
    "sadness": ["sad", "sorrowful", "downcast", "unhappy"],
    "fear": ["afraid", "frightened", "scared", "terrified"],
    "disgust": ["disgusted", "repulsed", "revolted", "sickened"],
    "neutral": ["calm", "composed", "unmoved", "neutral"],
}
INTENSITY = [["slightly", "a little", "mildly"], ["clearly", "noticeably", "visibly"],
             ["extremely", "intensely", "overwhelmingly"]]
TEMPLATES = ["The speaker seems {i} {e}.", "A {i} {e} face and voice.",
             "Judging by the voice and the brows, the person is {i} {e}.",
             "Someone who is {i} {e} while talking.", "The expression reads as {i} {e}."]
FILLER = ["The camera does not move.", "The lighting is dim.", "The background is plain.",
          "", "The clip is short."]


def planted(n=720, dim=96, seed=0):
    rng = np.random.default_rng(seed)
    emotion = rng.integers(0, len(EMOTIONS), n)
    intensity = rng.integers(0, 3, n)
    e_dirs, i_dirs = rng.normal(size=(len(EMOTIONS), dim)), rng.normal(size=(3, dim))
    nuisance = rng.normal(size=(n, 12)) @ rng.normal(size=(12, dim))
    va = e_dirs[emotion] + 0.6 * i_dirs[intensity] + 1.5 * nuisance \
        + 0.3 * rng.normal(size=(n, dim))
    return va.astype(np.float32), descriptions(rng, emotion, intensity), emotion


def two_branches(n=720, seed=0, blind=0.3):
    """The same world seen by a video and an audio branch, each with its own nuisance and
    each blind to the emotion in a random `blind` share of the clips (a turned face, a
    silent stretch): the description still says what the clip expresses."""
    rng = np.random.default_rng(seed)
    emotion, intensity = rng.integers(0, len(EMOTIONS), n), rng.integers(0, 3, n)
    va = {}
    for branch, dim in (("video", 96), ("audio", 64)):
        signal = rng.normal(size=(len(EMOTIONS), dim))[emotion] \
            + 0.6 * rng.normal(size=(3, dim))[intensity]
        signal[rng.random(n) < blind] = 0
        nuisance = rng.normal(size=(n, 12)) @ rng.normal(size=(12, dim))
        va[branch] = (signal + 1.5 * nuisance + 0.3 * rng.normal(size=(n, dim))
                      ).astype(np.float32)
    return va, descriptions(rng, emotion, intensity), emotion


def descriptions(rng, emotion, intensity) -> list[str]:
    """One description per clip, written from its hidden emotion and intensity in varied
    wording."""
    words = list(EMOTIONS.values())
    return [f"{rng.choice(FILLER)} " + rng.choice(TEMPLATES).format(
        i=rng.choice(INTENSITY[k]), e=rng.choice(words[e])) for e, k in zip(emotion, intensity)]


@pytest.fixture(scope="module")
def setup(minilm):
    va, texts, emotion = planted()
    text = minilm.encode(texts)
    labels = minilm.encode([f"a person who feels {e}." for e in EMOTIONS])
    held = np.zeros(len(va), bool)
    held[np.random.default_rng(1).permutation(len(va))[:144]] = True
    return va, text, emotion, labels, held


def recipe(out, **changed) -> TrainConfig:
    """The planted tests' training: the description path alone, 150 steps."""
    return TrainConfig(**{"descriptions": out, "encoder": out, "out": out, "steps": 150,
                          "batch_size": 128, "label_weight": 0.0, "warmup": 10, "lr": 2e-3,
                          "checkpoint_every": 1000, **changed})


def train(va: dict, text, emotion, labels, held, tmp_path, **changed):
    """(trained, untrained projector, features): trained on the clips not `held`."""
    features = Features(va, {"description": text}, emotion, labels)
    config = recipe(tmp_path, **changed)
    trained = fit(features.subset(~held), config, tmp_path)["projector"]
    return trained, new_projector(features, config), features


def run(va, text, emotion, labels, held, tmp_path):
    return evaluate(*train({"clip": va}, text, emotion, labels, held, tmp_path), held)


def test_injection_lifts_few_label_probe_and_retrieval(setup, tmp_path):
    result = run(*setup, tmp_path)
    before, after = result["before"], result["after"]
    print("planted:", {k: (before[k], after[k]) for k in ("linear_probe", "clip_to_text")})
    assert after["linear_probe"]["1%"]["uar"] > before["linear_probe"]["1%"]["uar"] + 0.2
    chance = 1 / result["clips"]["test"]
    assert after["clip_to_text"]["r@1"] > 5 * chance
    assert after["clip_to_text"]["r@10"] > before["clip_to_text"]["r@10"] + 0.2


def test_shuffled_descriptions_do_not(setup, tmp_path):
    va, text, emotion, labels, held = setup
    shuffled = text[np.random.default_rng(2).permutation(len(text))]
    result = run(va, shuffled, emotion, labels, held, tmp_path)
    before, after = result["before"], result["after"]
    print("control:", {k: (before[k], after[k]) for k in ("linear_probe", "clip_to_text")})
    assert after["linear_probe"]["1%"]["uar"] < before["linear_probe"]["1%"]["uar"] + 0.1
    assert after["clip_to_text"]["r@10"] < 0.2


def test_the_dataset_protocol_split_is_lifted_too(minilm, tmp_path):
    """Clips never annotated, from the same world (same hidden factors): the probe trains on
    their train split and is scored on their test split, as `eval --manifest` does."""
    va, texts, emotion = planted(n=1320)
    annotated, protocol = slice(0, 720), slice(720, None)
    labels = minilm.encode([f"a person who feels {e}." for e in EMOTIONS])
    features = Features({"clip": va[annotated]}, {"description": minilm.encode(
        texts[:720])}, emotion[annotated], labels)
    config = recipe(tmp_path)
    trained = fit(features, config, tmp_path)["projector"]
    split = np.random.default_rng(3).random(600) < 0.3
    rest = Features({"clip": va[protocol]}, {}, emotion[protocol], labels)
    result = evaluate_split(trained, new_projector(features, config), rest.subset(~split),
                            rest.subset(split), seed=0)
    before, after = result["before"]["linear_probe"], result["after"]["linear_probe"]
    print("protocol:", before, after)
    for fraction in ("1%", "10%"):
        assert after[fraction]["uar"] > before[fraction]["uar"] + 0.15
        assert after[fraction]["war"] > before[fraction]["war"] + 0.15
    assert result["after"]["zero_shot"] and not result["warnings"]


@pytest.mark.slow
def test_the_label_path_from_descriptions_lifts_the_protocol_probe_over_one_path(minilm,
                                                                                 tmp_path):
    """An unlabelled corpus: path 2's targets are the descriptions' primary emotions (here
    the planted emotion each description was written from). On the dataset's own split the
    1%-label probe is higher with both paths than with the description path alone. Measured
    (3 seeds): 0.639/0.611/0.736 -> 0.891/0.791/0.900; with 30% of the description labels
    replaced at random (2 seeds): 0.639 -> 0.625 and 0.611 -> 0.700 (docs/inject.md)."""
    va, texts, emotion = planted(n=1320)
    labels = minilm.encode([f"a person who feels {e}." for e in EMOTIONS])
    features = Features({"clip": va[:720]}, {"description": minilm.encode(texts[:720])},
                        emotion[:720], labels)
    split = np.random.default_rng(3).random(600) < 0.3
    rest = Features({"clip": va[720:]}, {}, emotion[720:], labels)
    uar = {}
    for weight in (0.0, 1.0):
        config = recipe(tmp_path / str(weight), label_weight=weight)
        trained = fit(features, config, tmp_path / str(weight))["projector"]
        result = evaluate_split(trained, new_projector(features, config), rest.subset(~split),
                                rest.subset(split), seed=0)
        uar[weight] = result["after"]["linear_probe"]["1%"]["uar"]
    print("label path:", uar)
    assert uar[1.0] > uar[0.0] + 0.1


@pytest.mark.slow
def test_two_branches_trained_each_against_the_description_beat_their_mean(minilm, tmp_path):
    """The two readings of "dual path" on a two-branch encoder, description path only:
    per_branch (video<->text and audio<->text) against fused (their mean <-> text). Measured
    (seeds 0/1/2, docs/inject.md), 1%-label probe UAR fused -> per_branch: both branches
    0.38/0.36/0.45 -> 0.45/0.62/0.62, the video branch alone 0.20/0.31/0.28 ->
    0.34/0.43/0.46, the audio branch alone 0.28/0.33/0.37 -> 0.42/0.48/0.49; clip->text R@10
    0.47/0.35/0.36 -> 0.58/0.50/0.51."""
    va, texts, emotion = two_branches()
    text = minilm.encode(texts)
    labels = minilm.encode([f"a person who feels {e}." for e in EMOTIONS])
    held = np.zeros(len(emotion), bool)
    held[np.random.default_rng(1).permutation(len(emotion))[:144]] = True
    found = {}
    for mode in ("fused", "per_branch"):
        trained, untrained, features = train(va, text, emotion, labels, held, tmp_path / mode,
                                             dual_path=mode)
        found[mode] = {view: evaluate(trained, untrained, features if view == "clips" else
                                      Features({view: va[view]}, features.text, emotion,
                                               labels), held)
                       for view in ("clips", *va)}
    probe = {(mode, view): result["after"]["linear_probe"]["1%"]["uar"]
             for mode, views in found.items() for view, result in views.items()}
    print("dual path:", probe)
    for view in ("clips", "video", "audio"):
        before = found["fused"][view]["before"]["linear_probe"]["1%"]["uar"]
        assert probe["per_branch", view] > before + 0.1, view
        assert probe["per_branch", view] > probe["fused", view] + 0.03, view
    recall = {mode: found[mode]["clips"]["after"]["clip_to_text"]["r@10"] for mode in found}
    assert recall["per_branch"] > recall["fused"] + 0.03
