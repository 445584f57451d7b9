"""Audit rules as data: a TOML file of DuckDB predicates, evaluated over all rows at once.

The shipped rules (annotator/audit/rules.toml) check grounding against the measured cues and
internal consistency; its header documents the columns a rule can use. A user passes their own
file with `--rules`; a rule that does not parse or names an unknown column fails with the rule's
name and DuckDB's reason, before anything is written.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import duckdb
import pyarrow as pa

from annotator.core.emotions import emotion_properties, label_mapping
from annotator.core.expression import claimed_sql, shown_sql
from annotator.core.errors import RulesError

# Spans from a negation to the next punctuation are not claims: "not loud, but tense" claims
# tension only. Crude, but it keeps "no audio"/"not observable" from reading as voice claims.
NEGATION = r"\b(not|no|never|without|cannot|can't|isn't|wasn't|nor|none|lacks?)\b[^.,;:!?]*"



@dataclass(frozen=True)
class Rule:
    name: str
    about: str
    where: str
    values: tuple[str, ...] = ()
    exclude: bool = True
    refine: str = ""
    """What `run --refine` tells the model when the rule fires ({value} as measured)."""

    def told(self, values: dict) -> str:
        """The refine message with the row's measured values in place."""
        return re.sub(r"\{([\w.]+)\}", lambda m: _shown(values.get(m.group(1))), self.refine)


def _shown(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "none"
    return "none" if value is None else str(value)


def load_rules(path: str | Path | None = None) -> list[Rule]:
    """The rules in `path` (default: the shipped file), with {word} patterns substituted."""
    if path is None:
        source, origin = resources.files(__package__).joinpath("rules.toml").read_text(), \
            "annotator/audit/rules.toml"
    else:
        path = Path(path)
        if not path.is_file():
            raise RulesError(f"rules file {path} not found")
        source, origin = path.read_text(), str(path)
    try:
        data = tomllib.loads(source)
    except tomllib.TOMLDecodeError as err:
        raise RulesError(f"rules file {origin} is not valid TOML: {err}") from err
    words = data.get("words", {})

    def expand(match: re.Match) -> str:
        name = match.group(1)
        return words[name].replace("'", "''") if name in words else match.group(0)

    rules, seen = [], set()
    for i, raw in enumerate(data.get("rule", [])):
        missing = {"name", "where"} - set(raw)
        if missing:
            raise RulesError(f"rules file {origin}: rule #{i + 1} lacks {sorted(missing)}")
        if raw["name"] in seen or not re.fullmatch(r"[a-z][a-z0-9_]*", raw["name"]):
            raise RulesError(f"rules file {origin}: rule name {raw['name']!r} must be unique "
                             "and snake_case")
        seen.add(raw["name"])
        rules.append(Rule(raw["name"], raw.get("about", ""),
                          re.sub(r"\{(\w+)\}", expand, raw["where"]),
                          tuple(raw.get("values", ())), bool(raw.get("exclude", True)),
                          raw.get("refine", "")))
    if not rules:
        raise RulesError(f"rules file {origin} has no [[rule]] entries")
    return rules


def label_words(rows: pa.Table) -> set[str]:
    """The distinct emotion words of `rows` (answers, labels, hints): a few dozen, not one
    per row."""
    primaries = rows["description"].combine_chunks().field("primary_emotion").to_pylist()
    secondaries = rows["description"].combine_chunks().field("secondary_emotions").to_pylist()
    return {w for w in primaries if w} | {w for ws in secondaries if ws for w in ws} | \
        {w for w in rows["label"].to_pylist() if w} | \
        {w for w in rows["label_hint"].to_pylist() if w}


def derived_view(con: duckdb.DuckDBPyConnection, rows: pa.Table, labels: list[str] | None,
                 words: set[str] | None = None) -> None:
    """Register `audited`: the rows plus the derived columns rules can use (see rules.toml).
    Its lexicon holds `words` (default: the rows' `label_words`); while later rows use no
    other word, registering them as `rows_in` is enough (as the refine gate does)."""
    words = sorted(label_words(rows) if words is None else words)
    mapped = label_mapping(words, labels)
    properties = emotion_properties(words)
    lexicon = pa.table({
        "word": words, "mapped": [mapped[w] for w in words],
        "valence": [properties[w][0] for w in words],
        "arousal": [properties[w][1] for w in words]})
    con.register("rows_in", rows)
    con.register("lexicon", lexicon)
    valence_map = "MAP {" + ", ".join(
        f"'{w.replace(chr(39), chr(39) * 2)}': '{properties[w][0]}'"
        for w in words if properties[w][0]) + "}" if any(
        properties[w][0] for w in words) else "MAP {}::MAP(VARCHAR, VARCHAR)"
    negation = NEGATION.replace("'", "''")
    con.execute(f"""
        CREATE OR REPLACE TEMP MACRO said(t) AS
            regexp_replace(lower(coalesce(t, '')), '{negation}', '', 'g');
        CREATE OR REPLACE TEMP MACRO words(t) AS list_filter(list_distinct(string_split(
            regexp_replace(lower(coalesce(t, '')), '[^a-z0-9]+', ' ', 'g'), ' ')),
            lambda w: w <> '');
        CREATE OR REPLACE TEMP VIEW with_samples AS
        SELECT r.*,
               said(r.description.face) AS said_face,
               said(r.description.body) AS said_body,
               said(r.description.voice) AS said_voice,
               coalesce(list_transform(r.description.evidence, lambda e: e.source), [])
                   AS evidence_sources,
               p.mapped AS primary_label, t.mapped AS true_label, h.mapped AS hint_label,
               p.valence AS primary_valence, p.arousal AS primary_arousal,
               coalesce(list_transform(r.description.secondary_emotions,
                                       lambda x: ({valence_map})[x]), []) AS secondary_valences,
               list_filter(coalesce(r.samples, []), lambda x: x IS NOT NULL) AS valid_samples,
               {claimed_sql("said(r.description.face)")} AS claimed_expressions,
               {shown_sql("r.cues.face")} AS shown_expressions
        FROM rows_in r
        LEFT JOIN lexicon p ON p.word = r.description.primary_emotion
        LEFT JOIN lexicon t ON t.word = r.label
        LEFT JOIN lexicon h ON h.word = r.label_hint;
        CREATE OR REPLACE TEMP VIEW audited AS
        SELECT *,
               CASE WHEN len(valid_samples) > 0 THEN
                   len(list_filter(sample_labels, lambda x: x = list_aggregate(sample_labels,
                       'mode'))) / len(sample_labels) END AS self_agreement,
               CASE WHEN len(valid_samples) > 0 THEN list_aggregate(list_concat(
                   [description.valence], list_transform(valid_samples, lambda x: x.valence)),
                   'stddev_pop') END AS valence_spread,
               CASE WHEN len(valid_samples) > 0 THEN 1 - list_avg(list_transform(
                   valid_samples, lambda x: len(list_intersect(words(x.summary),
                       words(description.summary)))
                   / greatest(len(list_distinct(list_concat(words(x.summary),
                       words(description.summary)))), 1))) END AS summary_dispersion
        FROM (SELECT *, list_concat([description.primary_emotion],
                     list_transform(valid_samples, lambda x: x.primary_emotion)) AS sample_labels
              FROM with_samples)
    """)


def evaluate(con: duckdb.DuckDBPyConnection, rules: list[Rule]) -> pa.Table:
    """One row per audited row: row_id and, per rule, NULL or the JSON of its `values`.

    Rules apply to ok rows only; a failed row has no description to check."""
    columns = []
    for rule in rules:
        values = ", ".join(f"{_quote(v)} := {v}" for v in rule.values) or "flagged := true"
        columns.append(f"CASE WHEN status = 'ok' AND coalesce(({rule.where}), false) "
                       f"THEN to_json(struct_pack({values}))::VARCHAR END AS {rule.name}")
    sql = f"SELECT row_id, {', '.join(columns)} FROM audited"
    try:
        return con.sql(sql).to_arrow_table()
    except duckdb.Error:
        for rule in rules:  # find the rule to blame, so the message can name it
            try:
                con.execute(f"SELECT ({rule.where}), "
                            f"{', '.join(rule.values) or 'true'} FROM audited LIMIT 0")
            except duckdb.Error as err:
                raise RulesError(f"rule {rule.name!r} cannot be evaluated: "
                                 f"{str(err).splitlines()[0]}; the columns a rule can use are "
                                 "listed in annotator/audit/rules.toml") from err
        raise


def _quote(expression: str) -> str:
    """A struct field name for a value expression, e.g. cues.audio.loudness_db."""
    return '"' + expression.replace('"', "") + '"'
