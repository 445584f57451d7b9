"""`vaemo-annotate audit OUT`: measure, explain and filter a run's descriptions.

Reads OUT/descriptions/*.parquet (and the labels of the manifest the run came from), and writes
  OUT/audit/metrics.json   validity, agreement with labels, consistency, calibration, flags,
                           duplicates, richness
  OUT/audit/flags.parquet  one row per clip: its flags, why each fired, and scores
  OUT/audit/index.html     a self-contained report (see annotator/audit/report.py)
  --clean PATH             the ok rows that no excluding flag hit, same columns as the run
Everything is computed over whole columns (DuckDB SQL, numpy), never row by row in Python.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from annotator.config import AuditConfig

from annotator.audit import agreement, redundancy, rules
from annotator.core.errors import ConfigError
from annotator.core.schema import description_text_sql
from annotator.core.layout import RunFolder
from annotator.core.files import write_json, write_parquet
from annotator.core.store import Store


def audit(config: AuditConfig) -> dict:
    """`vaemo-annotate audit`: flag, measure and report a run's rows; writes metrics.json,
    flags.parquet, the HTML report (and the clean set with --clean); returns the metrics."""
    started = time.perf_counter()
    out = config.out
    store = Store(out)
    rows = store.read()  # a consistent snapshot: whole files, one row per clip
    if not len(rows):
        raise ConfigError(f"no rows in {RunFolder(out).descriptions}: run `vaemo-annotate "
                          f"run --out {out}` first")
    run = _run_summary(out)
    rule_list = rules.load_rules(config.rules)  # a bad rules file fails before any work
    rows = _with_manifest_labels(rows, config.manifest or run.get("config", {}).get("manifest"))
    rows = rows.append_column("row_id", pa.array(np.arange(len(rows), dtype=np.int64)))
    labels = run.get("labels")

    con = duckdb.connect()
    con.execute("SET threads TO 2")
    rules.derived_view(con, rows, labels)
    con.register("rule_hits", rules.evaluate(con, rule_list))
    excluding = [r.name for r in rule_list if r.exclude]
    preference = con.execute(
        "SELECT " + (" + ".join(f"({n} IS NOT NULL)::INT" for n in excluding) or "0")
        + " AS n FROM rule_hits ORDER BY row_id").fetchnumpy()["n"]
    redundancy.tokenize(con)
    dups = redundancy.duplicates(con, np.asarray(preference), config.near_duplicate)
    con.register("dups", pa.table(dups))
    flags = _flags(con, rule_list)
    con.register("flags_view", flags)

    folder = RunFolder(out)
    folder.audit.mkdir(parents=True, exist_ok=True)
    write_parquet(flags, folder.flags)
    metrics = {
        "run_id": run.get("run_id"), "rows": len(rows), "label_set": labels,
        "store": store_health(store),
        "validity": _validity(con),
        "agreement": _agreement(con, labels),
        "flags": _flag_counts(con, rule_list),
        "duplicates": {"exact": int(dups["exact"].sum()),
                       "near": int((~dups["exact"]).sum()),
                       "threshold": config.near_duplicate},
        "richness": redundancy.richness(con),
        "self_consistency": _self_consistency(con),
        "expressions": _expressions(con),
        "refinement": _refinement(con, rule_list),
    }
    metrics["trust"] = _trust(flags, metrics["agreement"])
    clean = pc.is_in(flags["trust"], pa.array(KEPT[config.keep]))
    metrics["clean"] = {"rows": int(pc.sum(clean).as_py() or 0),
                        "excluded_ok_rows": int(pc.sum(pc.and_(
                            pc.equal(flags["status"], "ok"), flags["excluded"])).as_py() or 0)}
    if config.clean:
        kept = rows.filter(clean).drop_columns(["row_id"])
        config.clean.parent.mkdir(parents=True, exist_ok=True)
        write_parquet(kept, config.clean)
        metrics["clean"]["path"] = str(config.clean)
    metrics["seconds"] = round(time.perf_counter() - started, 2)
    write_json(folder.metrics, metrics)
    from annotator.audit import report

    report_path = config.report or folder.report
    manifest = config.manifest or run.get("config", {}).get("manifest")
    media_root = Path(manifest).expanduser().resolve().parent if manifest else None
    report.write(report_path, metrics, con, rule_list, config.report_rows, media_root)
    metrics["report"] = str(report_path)
    return metrics


def store_health(store: Store) -> dict:
    """Files of the run that hold no readable rows: skipped now, or quarantined by a run."""
    return {"unreadable": dict(store.unreadable), "quarantined": store.quarantined()}


def _run_summary(out: Path) -> dict:
    recorded = RunFolder(out).run_json
    return json.loads(recorded.read_text()) if recorded.is_file() else {}


def _with_manifest_labels(rows: pa.Table, manifest: str | Path | None) -> pa.Table:
    """Labels from the manifest as it is now (labels may have been added after the run)."""
    if not manifest or not Path(manifest).exists():
        return rows
    from annotator.core.manifest import load_manifest

    manifest_rows = load_manifest(manifest).select(["clip_id", "label"])
    where = pc.index_in(rows["clip_id"], value_set=manifest_rows["clip_id"])
    label = pc.coalesce(pc.take(manifest_rows["label"], where), rows["label"])
    return rows.set_column(rows.schema.get_field_index("label"), "label", label)


def _flags(con: duckdb.DuckDBPyConnection, rule_list: list[rules.Rule]) -> pa.Table:
    names = [r.name for r in rule_list]
    excluding = [r.name for r in rule_list if r.exclude]
    flag_items = ", ".join(f"CASE WHEN h.{n} IS NOT NULL THEN '{n}' END" for n in names)
    details = ", ".join(f"CASE WHEN h.{n} IS NOT NULL THEN {{'flag': '{n}', 'values': h.{n}}} "
                        "END" for n in names)
    any_excluding = " OR ".join(f"h.{n} IS NOT NULL" for n in excluding) or "false"
    any_warning = " OR ".join(f"h.{r.name} IS NOT NULL" for r in rule_list
                              if not r.exclude) or "false"
    return con.sql(f"""
        SELECT a.clip_id, a.status, a.label,
               a.description.primary_emotion AS primary_emotion,
               list_filter([CASE WHEN a.status <> 'ok' THEN 'failed:' || a.error_kind END,
                            {flag_items},
                            CASE WHEN d.exact THEN 'duplicate'
                                 WHEN d.row_id IS NOT NULL THEN 'near_duplicate' END],
                           lambda x: x IS NOT NULL) AS flags,
               list_filter([CASE WHEN a.status <> 'ok' THEN {{'flag': 'failed:' || a.error_kind,
                                  'values': to_json({{'error': a.error}})::VARCHAR}} END,
                            {details},
                            CASE WHEN d.row_id IS NOT NULL THEN {{'flag': CASE WHEN d.exact
                                 THEN 'duplicate' ELSE 'near_duplicate' END,
                                 'values': to_json({{'duplicate_of': k.clip_id,
                                 'similarity': round(d.similarity, 3)}})::VARCHAR}} END],
                           lambda x: x IS NOT NULL) AS details,
               (a.status <> 'ok' OR {any_excluding} OR d.row_id IS NOT NULL) AS excluded,
               CASE WHEN a.status <> 'ok' OR {any_excluding} OR d.row_id IS NOT NULL
                    THEN 'excluded'
                    WHEN {any_warning} OR a.finish_reason = 'length'
                         OR coalesce(a.self_agreement, 1) < {TRUSTED_SELF_AGREEMENT}
                         OR coalesce(a.description.confidence, 1) < {TRUSTED_CONFIDENCE}
                    THEN 'uncertain' ELSE 'trusted' END AS trust,
               {{'agrees_with_label': a.primary_label = a.true_label,
                 'confidence': a.description.confidence,
                 'words': len(string_split(trim({description_text_sql('a.description')}),
                                           ' ')),
                 'duplicate_similarity': d.similarity,
                 'self_agreement': a.self_agreement,
                 'summary_dispersion': a.summary_dispersion}} AS scores
        FROM audited a
        JOIN rule_hits h ON h.row_id = a.row_id
        LEFT JOIN dups d ON d.row_id = a.row_id
        LEFT JOIN audited k ON k.row_id = d."of"
        ORDER BY a.row_id
    """).to_arrow_table()


TRUSTED_SELF_AGREEMENT = 0.8
"""With --samples: a row whose samples agree on its emotion less often than this is uncertain."""
TRUSTED_CONFIDENCE = 0.5
"""A row whose description gives itself a confidence below this is uncertain."""
KEPT = {"uncertain": ["trusted", "uncertain"], "trusted": ["trusted"]}
"""The trust tiers the clean set keeps, by `--keep`."""


def _trust(flags: pa.Table, agreement: dict) -> dict:
    """Rows per trust tier, from what needs no labels (validity, grounding rules, duplicates,
    truncation, self-consistency, the description's confidence)."""
    counts = {tier: 0 for tier in ("trusted", "uncertain", "excluded")}
    counts.update(zip(*np.unique(flags["trust"].to_numpy(zero_copy_only=False),
                                 return_counts=True)))
    summary = {tier: int(n) for tier, n in counts.items()}
    summary["criteria"] = (
        "excluded: failed, an excluding rule, or a duplicate; uncertain: a warning rule, a "
        f"truncated answer, samples agreeing below {TRUSTED_SELF_AGREEMENT}, or the "
        f"description's confidence below {TRUSTED_CONFIDENCE}; trusted: the rest")
    if not agreement.get("n"):
        summary["note"] = ("no dataset labels: agreement with labels cannot be measured, so "
                           "trust rests only on the checks above")
    return summary


def _validity(con: duckdb.DuckDBPyConnection) -> dict:
    def counts(expr: str, where: str = "true") -> dict:
        return dict(con.execute(f"SELECT coalesce({expr}::VARCHAR, '(none)'), count(*) "
                                f"FROM audited WHERE {where} GROUP BY 1 ORDER BY 2 DESC"
                                ).fetchall())

    total, ok, truncated = con.execute(
        "SELECT count(*), count(*) FILTER (status = 'ok'), "
        "count(*) FILTER (error_kind = 'truncated' OR finish_reason = 'length') FROM audited"
    ).fetchall()[0]
    return {"ok": ok, "failed": total - ok,
            "failed_by_kind": counts("error_kind", "status <> 'ok'"),
            "finish_reasons": counts("finish_reason"),
            "schema_versions": counts("schema_version"),
            "generation_modes": counts("generation_mode"),
            "models": counts("model"),
            "truncation_rate": round(truncated / total, 4) if total else 0.0}


def _agreement(con: duckdb.DuckDBPyConnection, labels: list[str] | None) -> dict:
    """Agreement of the rows whose prompt did not show their label (a hinted row agreeing
    with its hint says nothing), and how often hinted rows contradict their hint."""
    data = con.execute("""
        SELECT true_label, primary_label, description.confidence AS confidence
        FROM audited WHERE status = 'ok' AND true_label IS NOT NULL AND label_hint IS NULL
    """).fetchnumpy()
    hinted, contradicted = con.execute("""
        SELECT count(*), count(*) FILTER (primary_label IS DISTINCT FROM hint_label)
        FROM audited WHERE status = 'ok' AND label_hint IS NOT NULL""").fetchone()
    hints = {"rows": hinted, "contradicted": contradicted,
             "contradiction_rate": round(contradicted / hinted, 4) if hinted else None,
             "note": "rows whose prompt showed their label (--label-hint): left out of the "
                     "agreement above"}
    unmapped = [w for (w,) in con.execute("""
        SELECT DISTINCT description.primary_emotion FROM audited
        WHERE status = 'ok' AND primary_label IS NULL ORDER BY 1""").fetchall()]
    mapping = {
        "method": "exact match to the label set, else synonyms and fallbacks from "
                  "annotator/core/emotions.toml; unmapped predictions count as wrong",
        "label_set": labels or "open vocabulary (lexicon groups)",
        "unmapped_predictions": unmapped,
    }
    if len(data["true_label"]) == 0:
        return {"n": 0, "mapping": mapping, "hinted": hints,
                "note": "no ok row has a dataset label that its prompt did not show: "
                        "nothing to agree with"}
    true = np.asarray(data["true_label"], dtype=object)
    pred = np.asarray(data["primary_label"], dtype=object)
    result = agreement.agreement(true, pred)
    correct = true == pred
    confidence = np.asarray(data["confidence"], dtype=float)
    result["calibration"] = agreement.calibration(confidence, correct)
    result.update(mapping=mapping, hinted=hints)
    return result


def _refinement(con: duckdb.DuckDBPyConnection, rule_list: list[rules.Rule]) -> dict:
    """With `run --refine N`: the rows the gate sent back, their rounds, the rules that
    fired on their first answer and those that still fire on the answer kept."""
    refined, rounds = con.execute("""
        SELECT count(*), coalesce(sum(len(refinements)), 0) FROM audited
        WHERE status = 'ok' AND refinements IS NOT NULL""").fetchall()[0]
    if not refined:
        return {"rows": 0, "note": "no row was sent back (run --refine N)"}
    before = dict(con.execute("""
        SELECT rule, count(*) FROM (SELECT unnest(refinements[1].fired) AS rule FROM audited
                                    WHERE status = 'ok' AND refinements IS NOT NULL)
        GROUP BY rule ORDER BY rule""").fetchall())
    gated = [r.name for r in rule_list if r.exclude and r.refine]
    after = {}
    for name in gated:
        (count,) = con.execute(f"""
            SELECT count(*) FROM audited a JOIN rule_hits h USING (row_id)
            WHERE a.status = 'ok' AND a.refinements IS NOT NULL
              AND h.{name} IS NOT NULL""").fetchall()[0]
        if count:
            after[name] = count
    still = " OR ".join(f"h.{n} IS NOT NULL" for n in gated) or "false"
    (flagged,) = con.execute(f"""
        SELECT count(*) FROM audited a JOIN rule_hits h USING (row_id)
        WHERE a.status = 'ok' AND a.refinements IS NOT NULL AND ({still})""").fetchall()[0]
    return {"rows": refined, "rounds": rounds, "fired_before": before, "fired_after": after,
            "rows_still_flagged": flagged}


def _self_consistency(con: duckdb.DuckDBPyConnection) -> dict:
    """With --samples N: how much a clip's descriptions agree, and whether agreement works as
    a confidence (accuracy against the labels of consistent vs inconsistent clips)."""
    names = ("rows", "mean_samples", "label_agreement", "valence_spread", "summary_dispersion",
             "accuracy_when_consistent", "accuracy_when_not")
    values = con.execute(f"""
        SELECT count(*), avg(len(valid_samples) + 1), avg(self_agreement), avg(valence_spread),
               avg(summary_dispersion),
               avg((primary_label = true_label)::DOUBLE) FILTER (
                   self_agreement >= {TRUSTED_SELF_AGREEMENT} AND true_label IS NOT NULL),
               avg((primary_label = true_label)::DOUBLE) FILTER (
                   self_agreement < {TRUSTED_SELF_AGREEMENT} AND true_label IS NOT NULL)
        FROM audited WHERE status = 'ok' AND self_agreement IS NOT NULL
    """).fetchall()[0]
    out = {k: (round(float(v), 4) if v is not None else None) for k, v in zip(names, values)}
    out["rows"] = int(values[0])
    if not out["rows"]:
        out["note"] = "one description per clip: run with --samples N --temperature T"
    return out


def _expressions(con: duckdb.DuckDBPyConnection) -> dict:
    """Facial-expression claims against the landmarks, as MER-Factory scores AU claims:
    precision (claimed units that are shown) and recall (shown units that are claimed) over
    the ok rows with a landmarked face, and the counts per unit."""
    per_unit = con.execute("""
        SELECT u, count(*) FILTER (list_contains(claimed_expressions, u)),
               count(*) FILTER (list_contains(shown_expressions, u)),
               count(*) FILTER (list_contains(claimed_expressions, u)
                                AND list_contains(shown_expressions, u))
        FROM (SELECT unnest(list_distinct(list_concat(claimed_expressions, shown_expressions)))
                         AS u, claimed_expressions, shown_expressions
              FROM audited WHERE status = 'ok' AND shown_expressions IS NOT NULL)
        GROUP BY u ORDER BY u""").fetchall()
    rows = con.execute("SELECT count(*) FROM audited WHERE status = 'ok' AND "
                       "shown_expressions IS NOT NULL").fetchall()[0][0]
    claimed, shown, both = (sum(r[i] for r in per_unit) for i in (1, 2, 3))
    out = {"rows": rows, "claimed": claimed, "shown": shown, "claimed_and_shown": both,
           "precision": round(both / claimed, 4) if claimed else None,
           "recall": round(both / shown, 4) if shown else None,
           "per_unit": {u: {"claimed": c, "shown": s, "both": b} for u, c, s, b in per_unit}}
    if not rows:
        out["note"] = "no ok row has a landmarked face (cues before version 4, or no video)"
    return out


def _flag_counts(con: duckdb.DuckDBPyConnection, rule_list: list[rules.Rule]) -> dict:
    counted = dict(con.execute(
        "SELECT f, count(*) FROM (SELECT unnest(flags) AS f FROM flags_view) GROUP BY f "
        "ORDER BY 2 DESC").fetchall())
    about = {r.name: {"about": r.about, "excludes": r.exclude} for r in rule_list}
    return {"counts": counted, "rules": about}
