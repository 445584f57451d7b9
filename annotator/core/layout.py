"""Where things live on disk: the names of a run folder's and of an injection folder's files,
spelled once.

A run folder (`vaemo-annotate run --out OUT`, `RunFolder`):

    OUT/descriptions/*.parquet   the rows (store.py)
    OUT/subset.parquet           the selected clips and their strata
    OUT/run.json                 configuration, versions, counts, timings
    OUT/README.md                the dataset card
    OUT/audit/metrics.json       the audit's numbers
    OUT/audit/flags.parquet      the audit's verdict per clip
    OUT/audit/index.html         the audit's report
    OUT/quarantine/              files found unreadable in descriptions/, each with its reason
    OUT/.lock                    held by the one process writing the folder

An injection folder (`vaemo-inject train --out OUT`, `InjectionFolder`):

    OUT/checkpoints/step-NNNNNN/ projector, trained encoder blocks, optimizer state, config
    OUT/checkpoints/last         the name of the newest complete checkpoint
    OUT/metrics.jsonl            one line per logged step (losses, rates)
    OUT/cache/                   features and text embeddings, by media hash and encoder id
    OUT/encoder/                 the injected encoder, in the format it came in
    OUT/train.json, eval.json    the training summary; the evaluation before and after
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunFolder:
    """The files of one `vaemo-annotate run` output folder."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def descriptions(self) -> Path:
        return self.root / "descriptions"

    @property
    def subset(self) -> Path:
        return self.root / "subset.parquet"

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def card(self) -> Path:
        return self.root / "README.md"

    @property
    def audit(self) -> Path:
        return self.root / "audit"

    @property
    def metrics(self) -> Path:
        return self.audit / "metrics.json"

    @property
    def flags(self) -> Path:
        return self.audit / "flags.parquet"

    @property
    def report(self) -> Path:
        return self.audit / "index.html"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    @property
    def plan_index(self) -> Path:
        """clip_id -> (fingerprint, cache key) of its last plan: a re-run whose clips and
        settings did not change finds its cache hits without planning again."""
        return self.root / "plan_index.parquet"

    @property
    def engine_stats(self) -> Path:
        """Where each engine actor leaves its timing (start, busy, idle) for the driver."""
        return self.root / ".engine-stats"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def batch_requests(self) -> Path:
        """`export-requests`: the exported clips' requests, OpenAI Batch JSONL."""
        return self.root / "batch" / "requests.jsonl"

    @property
    def batch_plan(self) -> Path:
        """`export-requests`: the exported clips' prepared plans (no media), what
        `import-results` builds their rows from."""
        return self.root / "batch" / "plan.parquet"

    @property
    def batch_export(self) -> Path:
        """`export-requests`: the run's settings and run id, as `import-results` needs them."""
        return self.root / "batch" / "export.json"


@dataclass(frozen=True)
class InjectionFolder:
    """The files of one `vaemo-inject train` output folder."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        """Holds the name of the newest complete checkpoint folder."""
        return self.checkpoints / "last"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step-{step:06d}"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def encoder(self) -> Path:
        """The exported (injected) encoder."""
        return self.root / "encoder"

    @property
    def train_json(self) -> Path:
        return self.root / "train.json"

    @property
    def eval_json(self) -> Path:
        return self.root / "eval.json"
