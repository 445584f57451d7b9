"""The training corpus: a run's ok descriptions (minus what the audit excluded), the text to
embed per clip, its label, and a held-out split for evaluation."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from annotator.core.layout import RunFolder
from annotator.core.schema import MODALITY_FIELDS, TEXT_FIELDS, description_text
from annotator.core.rows import RowStatus
from annotator.core.subset import stable_rank
from annotator.core.errors import DataError


@dataclass
class Corpus:
    clip_ids: list[str]
    media: list[tuple[str, str | None]]
    """(clip file, separate audio file or None) per clip."""
    media_sha256: list[str]
    texts: dict[str, list[str]]
    """Text per source: description, summary, reasoning, face, body, voice."""
    labels: np.ndarray
    """The dataset's label index per clip (-1: no label): evaluation's ground truth."""
    label_names: list[str]
    held_out: np.ndarray
    """True for clips kept out of training, for evaluation."""
    targets: np.ndarray | None = None
    """Path 2's label index per clip, from --label-source (-1: none); None: `labels`."""
    label_path: dict | None = None
    """Where path 2's targets come from: clips per source, kept in the checkpoint."""

    def __len__(self) -> int:
        return len(self.clip_ids)



def load_rows(source: Path, exclude_flagged: bool = True) -> tuple[pa.Table, dict]:
    """The ok rows of a run folder (or a Parquet file of rows) and the run's summary."""
    source = Path(source)
    run: dict = {}
    excluded = 0
    if source.is_dir():
        from annotator.core.store import Store

        rows = Store(source).read()
        folder = RunFolder(source)
        if folder.run_json.is_file():
            run = json.loads(folder.run_json.read_text())
        flags = folder.flags
        if exclude_flagged and flags.is_file():
            flagged = pq.read_table(flags, columns=["clip_id", "excluded"])
            out = flagged.filter(flagged["excluded"])["clip_id"]
            before = len(rows)
            rows = rows.filter(pc.invert(pc.is_in(rows["clip_id"], value_set=out)))
            excluded = before - len(rows)
    elif source.is_file():
        rows = pq.read_table(source)
    else:
        raise DataError(f"descriptions {source} not found: pass a `vaemo-annotate run` folder "
                        "or a Parquet file of its rows")
    rows = rows.filter(pc.equal(rows["status"], RowStatus.OK.value))
    if len(rows) < 2:
        hint = (f" ({excluded} rows were excluded by the audit; --no-exclude-flagged keeps "
                "them)") if excluded else ""
        raise DataError(f"{source} has {len(rows)} usable (ok, not excluded) rows; "
                        f"contrastive training needs at least 2{hint}")
    return rows, run


def build_corpus(rows: pa.Table, run: dict, seed: int, eval_fraction: float,
                 label_source: str = "dataset", min_confidence: float = 0.0) -> Corpus:
    description = rows["description"].combine_chunks()
    field = {name: [t or "" for t in description.field(name).to_pylist()]
             for name in TEXT_FIELDS}
    full = [description_text(d) for d in description.to_pylist()]
    reasoning = [t or s for t, s in zip(rows["reasoning"].to_pylist(), field["summary"])]
    texts = {"description": full, "summary": field["summary"], "reasoning": reasoning,
             **{name: field[name] for name in MODALITY_FIELDS}}
    raw_labels = rows["label"].to_pylist()
    described = described_emotions(description.to_pylist(), min_confidence)
    full = run.get("labels") or sorted({x for x in raw_labels if x}) or (
        sorted({x for x in described if x}) if label_source != "dataset" else [])
    dataset, from_description = map_labels(raw_labels, full), _onto(described, full)
    origin = [("dataset" if d and label_source != "description" else
               "description" if e and label_source != "dataset" else "none")
              for d, e in zip(dataset, from_description)]
    target = [d if o == "dataset" else e if o == "description" else None
              for o, d, e in zip(origin, dataset, from_description)]
    used = {x for x in dataset + target if x}
    names = [n for n in full if n in used] or full  # the label set as this corpus uses it
    lookup = {n: i for i, n in enumerate(names)}
    labels = np.array([lookup.get(x, -1) for x in dataset], np.int64)
    targets = np.array([lookup.get(x, -1) for x in target], np.int64)
    path = {"source": label_source, **{k: origin.count(k)
                                       for k in ("dataset", "description", "none")}}
    clip_ids = rows["clip_id"].to_pylist()
    audio = rows["audio_path"].to_pylist() if "audio_path" in rows.column_names \
        else [None] * len(rows)  # rows written before the column existed
    media = list(zip(rows["path"].to_pylist(), audio))
    return Corpus(clip_ids, media, rows["media_sha256"].to_pylist(), texts, labels, names,
                  held_out_split(clip_ids, labels, seed, eval_fraction), targets, path)


def described_emotions(descriptions: list[dict], min_confidence: float) -> list[str | None]:
    """Each description's primary emotion, where its confidence reaches `min_confidence`."""
    return [(d.get("primary_emotion") or "").strip().lower() or None
            if (d.get("confidence") or 0.0) >= min_confidence else None for d in descriptions]


def _onto(emotions: list[str | None], label_set: list[str]) -> list[str | None]:
    """Emotions onto the label set through the synonyms; one that maps nowhere is no label
    (an open-vocabulary description may name an emotion the set lacks)."""
    from annotator.core.emotions import label_mapping

    mapping = label_mapping(sorted({x for x in emotions if x}), label_set)
    return [mapping.get(x) if x else None for x in emotions]


def map_labels(raw: list[str | None], label_set: list[str]) -> list[str | None]:
    """Dataset labels onto the run's label set through the audit's synonym table
    (annotator/core/emotions.toml: happy -> happiness, angry -> anger, ...). A label that
    maps nowhere is an error: it would silently drop out of the label path and the probe."""
    from annotator.core.emotions import label_mapping

    mapping = label_mapping(sorted({x for x in raw if x}), label_set)
    unmapped = sorted(word for word, target in mapping.items() if target is None)
    if unmapped:
        raise DataError(
            f"dataset label(s) {', '.join(map(repr, unmapped[:10]))} match none of the run's "
            f"label set ({', '.join(label_set)}), even through the synonyms in "
            "annotator/core/emotions.toml: fix those rows' `label`, add the words as synonyms "
            "there, or annotate with a --labels set that has them")
    return [mapping[x] if x else None for x in raw]


def held_out_split(clip_ids: list[str], labels: np.ndarray, seed: int, fraction: float
                   ) -> np.ndarray:
    """Stratified by label, decided by a hash of seed and clip id (the subset's ranking):
    stable as data grows."""
    rank = stable_rank(seed, clip_ids)
    held = np.zeros(len(clip_ids), bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = int(round(fraction * len(members)))
        if len(members) >= 2:
            held[members[np.argsort(rank[members])[:max(1, count)]]] = True
    return held
