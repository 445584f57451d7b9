"""Which rows are trained on: ok rows, minus what the audit excluded (unless asked)."""

import pytest

from annotator.audit import AuditConfig, audit
from tests.builders.synthetic_runs import PLANTED, write_synthetic_run
from injection.training.data import DataError, build_corpus, load_rows


def test_audit_exclusions_are_respected(tmp_path):
    out = write_synthetic_run(tmp_path / "run", 30)
    audit(AuditConfig(out=out))
    rows, run = load_rows(out)
    kept = set(rows["clip_id"].to_pylist())
    assert not kept & set(PLANTED) and len(kept) == 30
    everything, _ = load_rows(out, exclude_flagged=False)
    assert len(everything) == 30 + len(PLANTED) - 1  # the truncated row is never ok
    corpus = build_corpus(rows, run, seed=0, eval_fraction=0.2)
    assert corpus.label_names == sorted(corpus.label_names) and (corpus.labels >= 0).all()
    assert 4 <= corpus.held_out.sum() <= 9  # stratified, about 20%
    assert corpus.texts["description"][0].startswith(rows["description"][0]["face"].as_py())


def test_too_few_rows_say_how_to_keep_flagged_ones(tmp_path):
    out = write_synthetic_run(tmp_path / "run", 1)
    audit(AuditConfig(out=out))
    with pytest.raises(DataError, match="--no-exclude-flagged"):
        load_rows(out)


def test_dataset_labels_spelled_differently_map_through_the_synonyms():
    from injection.training.data import map_labels

    mafw = ["anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"]
    raw = ["happy", "sad", "angry", None, "Happiness", "surprised"]
    assert map_labels(raw, mafw) == ["happiness", "sadness", "anger", None, "happiness",
                                     "surprise"]


def test_a_label_that_maps_nowhere_is_an_error_naming_it():
    import pytest

    from annotator.core.errors import DataError
    from injection.training.data import map_labels

    with pytest.raises(DataError, match="'qwerty'.*emotions.toml"):
        map_labels(["happy", "qwerty"], ["happiness", "sadness"])


def test_a_corpus_keeps_synonym_labels_and_separate_audio(tmp_path):
    import pyarrow as pa

    out = write_synthetic_run(tmp_path / "run", 12, planted=False)
    rows, run = load_rows(out)
    spelled = {"anger": "angry", "happy": "Happiness", "sad": "sadness"}
    relabeled = [spelled.get(x, x) for x in rows["label"].to_pylist()]
    rows = rows.set_column(rows.schema.get_field_index("label"), "label",
                           pa.array(relabeled, pa.string()))
    rows = rows.set_column(rows.schema.get_field_index("audio_path"), "audio_path",
                           pa.array(["/data/a.wav"] * len(rows), pa.string()))
    corpus = build_corpus(rows, run, seed=0, eval_fraction=0.2)
    assert (corpus.labels >= 0).all(), "no synonym label dropped to -1"
    assert set(corpus.label_names) <= set(run["labels"])
    assert all(audio == "/data/a.wav" for _, audio in corpus.media)
