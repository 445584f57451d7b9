"""The verify-and-refine gate (`run --refine N`): a clip's valid answer is checked at once
against the audit's rules that one row can be checked against (rules.toml's excluding rules
with a `refine` message), and a rule that fires becomes a turn that tells the model what it
claimed against what was measured and asks for a corrected JSON (as MER-Factory's gate
agent and ASID-Verify send outputs back).

The rules are the audit's own: the same DuckDB predicates over the same derived columns,
evaluated here on the rows the engine just answered (one query per engine step, however
many clips it finished), so a rule the gate passes is one the audit passes.
"""

from __future__ import annotations

import json

import pyarrow as pa

from annotator.core.rows import ROW_SCHEMA


class Gate:
    """The audit's refinable rules, evaluated on rows as the engine answers them."""

    def __init__(self, labels: list[str] | None):
        import duckdb

        from annotator.audit.rules import load_rules

        self.labels = labels
        self.rules = [r for r in load_rules() if r.exclude and r.refine]
        self.con = duckdb.connect()
        self.con.execute("SET threads TO 1")  # beside the engine, never in its way
        self.words: set[str] = set()  # the emotion words the derived views were made for

    def check(self, rows: list[dict]) -> list[dict[str, str]]:
        """For each row (ROW_SCHEMA): {rule name: what to tell the model} of the rules that
        fire on it (empty: it passes)."""
        from annotator.audit.rules import derived_view, evaluate, label_words

        table = pa.Table.from_pylist(rows, schema=ROW_SCHEMA)
        table = table.append_column("row_id", pa.array(range(len(rows)), pa.int64()))
        words = label_words(table)
        if words <= self.words:  # the views stand, only their rows change: 50 -> 20 ms
            self.con.register("rows_in", table)
        else:
            self.words |= words
            derived_view(self.con, table, self.labels, self.words)
        hits = evaluate(self.con, self.rules).sort_by("row_id").to_pylist()
        return [{r.name: r.told(json.loads(hit[r.name])) for r in self.rules
                 if hit[r.name] is not None} for hit in hits]


def changed_fields(before: dict, after: dict) -> list[str]:
    """The description fields a refinement changed."""
    return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
