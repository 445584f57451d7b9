"""`vaemo-annotate audit` on runs with planted faults: each is flagged, clean rows are not."""

import json

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from annotator.audit import AuditConfig, audit
from annotator.audit.rules import RulesError, load_rules
from tests.builders.synthetic_runs import PLANTED, write_synthetic_run
from annotator.cli import app
from annotator.core.store import Store

EXPECTED = {  # planted clip -> the flag that must catch it
    "zz_valence_conflict": "label_valence_conflict",
    "zz_voice_without_audio": "voice_without_audio",
    "zz_face_without_face": "face_without_face",
    "zz_duplicate": "duplicate",
    "zz_near_duplicate": "near_duplicate",
    "zz_truncated": "failed:truncated",
    "zz_loud_but_quiet": "loud_claim_quiet_audio",
    "zz_smile_not_shown": "expression_claim_not_shown",
    "zz_audio_not_received": "media_not_received",
}
CLEAN_FALSE_POSITIVES = 0.02  # at most 2% of clean rows may be excluded by a flag


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    out = write_synthetic_run(tmp_path_factory.mktemp("run"), 300)
    runner = CliRunner()
    result = runner.invoke(app, ["audit", str(out), "--clean", str(out / "clean.parquet")])
    assert result.exit_code == 0, result.output
    flags = {r["clip_id"]: r for r in pq.read_table(out / "audit" / "flags.parquet").to_pylist()}
    return out, flags, json.loads((out / "audit" / "metrics.json").read_text())


def test_every_planted_fault_is_flagged_and_says_why(audited):
    _, flags, _ = audited
    assert set(EXPECTED) == set(PLANTED)
    for clip, flag in EXPECTED.items():
        assert flag in flags[clip]["flags"], (clip, flags[clip]["flags"])
        assert flags[clip]["excluded"]
        why = {d["flag"]: json.loads(d["values"]) for d in flags[clip]["details"]}[flag]
        assert why  # the values the rule saw
    assert {d["flag"]: json.loads(d["values"]) for d in flags["zz_loud_but_quiet"]["details"]}[
        "loud_claim_quiet_audio"]["cues.audio.loudness_db"] == -45.0
    dup = json.loads(flags["zz_duplicate"]["details"][0]["values"])
    assert dup == {"duplicate_of": "c0000000", "similarity": 1.0}


def test_clean_rows_are_rarely_excluded_and_the_clean_set_has_no_fault(audited):
    out, flags, metrics = audited
    clean_rows = [r for c, r in flags.items() if c not in EXPECTED]
    excluded = [r["clip_id"] for r in clean_rows if r["excluded"]]
    assert len(excluded) <= CLEAN_FALSE_POSITIVES * len(clean_rows), excluded
    kept = pq.read_table(out / "clean.parquet")
    assert kept.schema.equals(Store(out).read().schema)  # same columns, ready for injection
    assert not set(kept["clip_id"].to_pylist()) & set(EXPECTED)
    assert len(kept) == metrics["clean"]["rows"] == len(clean_rows) - len(excluded)
    assert "c0000000" in kept["clip_id"].to_pylist()  # the original of the duplicates stays


def test_metrics_cover_validity_agreement_and_richness(audited):
    _, _, metrics = audited
    assert metrics["validity"]["failed_by_kind"] == {"truncated": 1}
    rows = 300 + len(PLANTED)
    assert metrics["validity"]["truncation_rate"] == pytest.approx(1 / rows, abs=1e-4)
    agreement = metrics["agreement"]
    assert agreement["n"] == rows - 1 and 0.6 < agreement["accuracy"] < 0.85
    assert {"macro_f1", "cohen_kappa", "uar", "per_class_recall", "confusion",
            "calibration"} <= set(agreement)
    assert metrics["duplicates"] == {"exact": 1, "near": 1, "threshold": 0.8}
    assert metrics["richness"]["vocabulary"] > 100 and metrics["richness"]["median_words"] > 20
    assert any("face and voice agree" in b["phrase"] for b in metrics["richness"]["boilerplate"])


def test_a_users_rules_file_extends_the_checks(tmp_path, audited):
    out, _, _ = audited
    rules = tmp_path / "mine.toml"
    rules.write_text("""
[words]
grin = '\\b(grin\\w*)\\b'

[[rule]]
name = "grin_when_sad"
about = "A grin on a sad clip."
where = "primary_label = 'sad' AND regexp_matches(said_face, '{grin}')"
values = ["description.face"]
""")
    assert [r.name for r in load_rules(rules)] == ["grin_when_sad"]
    metrics = audit(AuditConfig(out=out, rules=rules, report=tmp_path / "r.html"))
    assert "grin_when_sad" in metrics["flags"]["rules"]
    assert "label_valence_conflict" not in metrics["flags"]["counts"]


@pytest.mark.parametrize("text, claims", [
    ("No audio, so the voice is not observable.", False),
    ("The voice cannot be heard; not observable", False),
    ("not loud, but fast and shaky", True),
    ("a loud voice", True),
])
def test_only_affirmed_voice_claims_count(text, claims):
    import re
    import tomllib
    from importlib import resources

    from annotator.audit.rules import NEGATION

    words = tomllib.loads(resources.files("annotator.audit").joinpath("rules.toml").read_text())
    said = re.sub(NEGATION, "", text.lower())  # what the `said` macro does, in RE2 syntax
    assert bool(re.search(words["words"]["voice"], said)) == claims


@pytest.mark.parametrize("body, message", [
    ("[[rule]]\nname = 'x'\nwhere = 'no_such_column > 1'\n", "rule 'x' cannot be evaluated"),
    ("[[rule]]\nwhere = 'true'\n", "lacks ['name']"),
    ("rule = [", "not valid TOML"),
])
def test_a_bad_rules_file_is_refused_before_anything_is_written(tmp_path, audited, body,
                                                               message):
    out, _, _ = audited
    rules = tmp_path / "bad.toml"
    rules.write_text(body)
    with pytest.raises(RulesError, match=message.replace("[", r"\[")):
        audit(AuditConfig(out=out, rules=rules, report=tmp_path / "never.html"))
    assert not (tmp_path / "never.html").exists()


def test_auditing_an_empty_folder_says_what_to_do(tmp_path):
    result = CliRunner().invoke(app, ["audit", str(tmp_path)])
    assert result.exit_code == 1 and "vaemo-annotate run" in result.output


def test_self_consistency_over_samples(tmp_path):
    out = write_synthetic_run(tmp_path / "run", 120, samples=4, stable=0.85, planted=False)
    rows = Store(out).read()
    unstable = rows["clip_id"][5].as_py()
    table = rows.to_pylist()
    table[5]["samples"] = [{**s, "primary_emotion": e} for s, e in zip(
        table[5]["samples"], ["anger", "fear", "happy"])]  # row 5 is sad
    import pyarrow as pa

    from annotator.core.files import write_parquet

    from annotator.core.rows import ROW_SCHEMA

    write_parquet(pa.Table.from_pylist(table, schema=ROW_SCHEMA), Store(out).files()[0])
    metrics = audit(AuditConfig(out=out))
    consistency = metrics["self_consistency"]
    assert consistency["rows"] == 120 and consistency["mean_samples"] == 4
    # each extra sample keeps the label with p = 0.85 (+ chance): mean share near 0.9
    assert 0.8 < consistency["label_agreement"] < 0.97
    assert consistency["valence_spread"] > 0 and consistency["summary_dispersion"] > 0
    flags = {r["clip_id"]: r for r in pq.read_table(out / "audit" / "flags.parquet").to_pylist()}
    assert "unstable_label" in flags[unstable]["flags"] and not flags[unstable]["excluded"]
    assert flags[unstable]["scores"]["self_agreement"] <= 0.5


def test_runs_without_samples_say_how_to_get_them(audited):
    _, _, metrics = audited
    assert metrics["self_consistency"]["rows"] == 0
    assert "--samples" in metrics["self_consistency"]["note"]


def test_an_unlabelled_run_gets_a_trust_summary_and_a_trusted_clean_set(tmp_path):
    """Without dataset labels the audit says agreement cannot be measured, and sorts every
    row into trusted / uncertain / excluded from what needs no labels."""
    import pyarrow.parquet as pq

    out = write_synthetic_run(tmp_path / "run", 120, samples=3, stable=0.7, labelled=False)
    loose = audit(AuditConfig(out=out, clean=tmp_path / "loose.parquet"))
    trust = loose["trust"]
    assert trust["trusted"] + trust["uncertain"] + trust["excluded"] == loose["rows"]
    assert trust["trusted"] and trust["uncertain"] and trust["excluded"]
    assert "cannot be measured" in trust["note"] and not loose["agreement"]["n"]
    assert loose["clean"]["rows"] == trust["trusted"] + trust["uncertain"]
    strict = audit(AuditConfig(out=out, clean=tmp_path / "strict.parquet", keep="trusted"))
    assert strict["clean"]["rows"] == trust["trusted"]
    kept = set(pq.read_table(tmp_path / "strict.parquet")["clip_id"].to_pylist())
    assert len(kept) == trust["trusted"] and kept < set(
        pq.read_table(tmp_path / "loose.parquet")["clip_id"].to_pylist())
    flags = pq.read_table(out / "audit" / "flags.parquet").to_pylist()
    assert {f["clip_id"] for f in flags if f["trust"] == "trusted"} == kept
    assert "cannot be measured" in (out / "audit" / "index.html").read_text()


def test_expression_claims_are_scored_against_the_landmarks_as_mer_factory_does(tmp_path):
    """Precision and recall of the facial-expression units a description claims against
    those its face's landmarks show, checked against scikit-learn's micro-averaged scores
    over the same claims; a negated claim is no claim, and a row without a landmarked face
    is left out."""
    import pyarrow as pa
    from sklearn.metrics import precision_score, recall_score

    from annotator.core.expression import UNITS
    from annotator.core.files import write_parquet
    from annotator.core.rows import ROW_SCHEMA

    cases = [  # face text, measures, claimed units, shown units
        ("a broad smile", {"lip_corner_lift": 0.15}, {"smile"}, {"smile"}),
        ("frowning hard", {}, {"brows_lowered"}, set()),
        ("a still face", {"lip_corner_lift": 0.15}, set(), {"smile"}),
        ("smiling, with raised eyebrows", {"lip_corner_lift": 0.2, "brow_eye_gap": 0.5},
         {"smile", "brows_raised"}, {"smile", "brows_raised"}),
        ("not smiling, mouth wide open", {"mouth_open": 0.5}, {"mouth_open"}, {"mouth_open"}),
    ]
    out = write_synthetic_run(tmp_path / "run", len(cases) + 1, planted=False)
    table = Store(out).read().to_pylist()
    for row, (text, measures, _, _) in zip(table, cases):
        row["description"]["face"] = text
        row["cues"]["face"] |= {"lip_corner_lift": 0.0, "brow_eye_gap": 0.3,
                                "mouth_open": 0.05} | measures
    table[-1]["description"]["face"] = "a grin"  # no face landmarked: not scored
    table[-1]["cues"]["face"]["landmarked_frames"] = 0
    write_parquet(pa.Table.from_pylist(table, schema=ROW_SCHEMA), Store(out).files()[0])
    scored = audit(AuditConfig(out=out))["expressions"]
    names = [u.name for u in UNITS]
    claimed = [[u in c[2] for u in names] for c in cases]
    shown = [[u in c[3] for u in names] for c in cases]
    assert scored["rows"] == len(cases)
    assert scored["precision"] == pytest.approx(precision_score(shown, claimed,
                                                                average="micro"))
    assert scored["recall"] == pytest.approx(recall_score(shown, claimed, average="micro"))
    assert scored["per_unit"]["smile"] == {"claimed": 2, "shown": 3, "both": 2}
