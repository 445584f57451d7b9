"""The emotion vocabulary: the benchmarks' label sets and the groups of words that name the
same emotion (with valence and arousal), read from one file (emotions.toml beside this module).

Prompts constrain answers to a label set, the audit maps predicted labels onto it and checks
labels against valence and arousal, and injection maps descriptions' and datasets' labels
onto the classes it trains: all through this module.
"""

from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass
from importlib import resources


@functools.cache
def _vocabulary() -> dict:
    return tomllib.loads(resources.files(__package__).joinpath("emotions.toml").read_text())


def label_sets() -> dict[str, list[str]]:
    """Label sets of the usual benchmarks (`--labels crema-d`, ...), by lower-case name."""
    return {name: list(labels) for name, labels in _vocabulary()["label_sets"].items()}


@dataclass(frozen=True)
class Emotion:
    name: str
    synonyms: tuple[str, ...]
    valence: str | None
    arousal: str | None
    fallback: str | None


def lexicon() -> dict[str, Emotion]:
    """The emotion groups (emotions.toml [groups]), by name, in the file's order."""
    return {name: Emotion(name, tuple(v.get("synonyms", ())), v.get("valence"),
                          v.get("arousal"), v.get("fallback"))
            for name, v in _vocabulary()["groups"].items()}


def _norm(word: str) -> str:
    return " ".join(word.lower().replace("_", " ").split())


def _group_of(groups: dict[str, Emotion]) -> dict[str, str]:
    """Normalised word (a group's name or synonym) -> its group; the first group wins."""
    found: dict[str, str] = {}
    for group in groups.values():
        for word in (group.name, *group.synonyms):
            found.setdefault(_norm(word), group.name)
    return found


def label_mapping(words: list[str], label_set: list[str] | None) -> dict[str, str | None]:
    """Map each distinct predicted or dataset label onto the label set (see emotions.toml).

    Without a label set, words are mapped onto lexicon group names (open vocabulary)."""
    groups = lexicon()
    group_of = _group_of(groups)
    targets = {_norm(x): x for x in label_set} if label_set else {g: g for g in groups}
    target_group = {group_of.get(t): x for t, x in targets.items() if group_of.get(t)}
    mapping: dict[str, str | None] = {}
    for word in words:
        key = _norm(word)
        group = group_of.get(key)
        if key in targets:
            mapping[word] = targets[key]
        elif group in target_group:
            mapping[word] = target_group[group]
        elif group and groups[group].fallback in target_group:
            mapping[word] = target_group[groups[group].fallback]
        else:
            mapping[word] = None
    return mapping


def emotion_properties(words: list[str]) -> dict[str, tuple[str | None, str | None]]:
    """(valence, arousal) of each word's lexicon group; (None, None) when unknown."""
    groups = lexicon()
    group_of = _group_of(groups)
    out = {}
    for word in words:
        group = groups.get(group_of.get(_norm(word), ""))
        out[word] = (group.valence, group.arousal) if group else (None, None)
    return out
