"""Which rows are trained on: ok rows, minus what the audit excluded (unless asked)."""

import pytest

from annotator.audit import AuditConfig, audit
from annotator.devtools.synthetic_runs import PLANTED, write_synthetic_run
from injection.data import DataError, build_corpus, load_rows


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
