"""What a person watching a run sees: the dry-run plan, live progress, the final summary."""

from __future__ import annotations

import time
from collections import Counter

import pyarrow as pa
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table


class Tracker:
    """Counts rows as they are committed and renders clips/s, output tokens/s and ETA."""

    def __init__(self, console: Console, total: int, cached: int,
                 prices: tuple[float, float] | None = None):
        # prices per million prompt and output tokens (a served model): the cost so far is
        # shown and recorded
        self.console, self.total, self.cached, self.prices = console, total, cached, prices
        self.done = self.failed = self.tokens = self.prompt_tokens = 0
        self.started = time.perf_counter()
        self._progress = Progress(
            TextColumn("[bold]annotate"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("eta"),
            TimeRemainingColumn(), console=console, transient=False,
            # a display that moves once a second needs no more; off a terminal it is shown
            # once, at the end (at rich's 10 per second, rendering it was a sixth of the
            # driver's CPU beside the engine)
            refresh_per_second=2, auto_refresh=console.is_terminal)
        self._task = self._progress.add_task("annotate", total=total, stats="")

    def __enter__(self):
        self._progress.start()
        return self

    def __exit__(self, *exc):
        self._progress.stop()

    def add(self, failed: int = 0, ok: int = 0, tokens: int = 0, prompt_tokens: int = 0
            ) -> None:
        self.done += failed + ok
        self.failed += failed
        self.tokens += tokens
        self.prompt_tokens += prompt_tokens
        r = self.rates()
        cost = f" ${r['cost_usd']:.4f}" if self.prices else ""
        self._progress.update(self._task, completed=self.done, stats=(
            f"ok {self.done - self.failed} failed {self.failed} | "
            f"{r['clips_per_s']:.2f} clips/s {r['output_tokens_per_s']:.0f} tok/s{cost}"))

    def add_rows(self, batch: pa.Table) -> None:
        status = batch["status"].to_pylist()
        self.add(failed=status.count("failed"), ok=status.count("ok"),
                 tokens=sum(batch["num_output_tokens"].to_pylist()),
                 prompt_tokens=sum(batch["num_input_tokens"].to_pylist()))

    def rates(self) -> dict:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        rates = {"clips_per_s": round(self.done / elapsed, 3),
                 "output_tokens_per_s": round(self.tokens / elapsed, 1),
                 "output_tokens": self.tokens, "prompt_tokens": self.prompt_tokens,
                 "elapsed_s": round(elapsed, 2)}
        if self.prices:  # what the last answer of each clip cost (retries are not counted)
            rates["cost_usd"] = round((self.prompt_tokens * self.prices[0]
                                       + self.tokens * self.prices[1]) / 1e6, 6)
        return rates


def print_plan(console: Console, resolved, plan: pa.Table, cached: pa.Table,
               pending: pa.Table) -> None:
    ctx, config = resolved.ctx, resolved.config
    media_errors = sum(1 for k in pending["error_kind"].to_pylist() if k)
    prompt_tokens = sum(pending["prompt_chars"].to_pylist()) // 4
    for line in (
        f"[bold]plan[/bold] for {config.manifest} -> {config.out}",
        f"model      {ctx.spec.name} ({ctx.spec.revision}), family {ctx.spec.family}, "
        f"modalities: {', '.join(ctx.spec.modalities) or 'text only'}",
        f"device     {resolved.device}; engine {ctx.engine_key}",
        f"template   {ctx.template.tag} ({ctx.template.origin}) "
        f"sha256 {ctx.template.sha256[:12]}",
        f"labels     {', '.join(ctx.labels) if ctx.labels else 'open vocabulary'}",
        f"sampling   {ctx.sampling.to_json()}",
    ):
        console.print(line, soft_wrap=True)
    strata = Table("stratum", "selected", "cached", title="selected clips per stratum")
    selected = Counter(plan["stratum"].to_pylist())
    hits = Counter(cached["stratum"].to_pylist())
    for name, n in sorted(selected.items()):
        strata.add_row(name, str(n), str(hits.get(name, 0)))
    console.print(strata)
    for line in (
        f"clips      {len(plan)} selected, {len(cached)} cached, {len(pending)} to compute "
        f"({media_errors} will fail before the engine: missing/unreadable media)",
        f"tokens     ~{prompt_tokens} prompt text tokens (+ media tokens), up to "
        f"{(len(pending) - media_errors) * ctx.sampling.max_tokens} output tokens",
    ):
        console.print(line, soft_wrap=True)


def print_summary(console: Console, summary: dict) -> None:
    c, t = summary["counts"], summary["throughput"]
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(c["failed_by_kind"].items())) or "none"
    console.print(
        f"[bold]done[/bold] {c['rows']}/{c['selected']} clips: ok {c['ok']}, failed {c['failed']} "
        f"({kinds}); {c['cached']} cached, {c['computed_now']} computed in "
        f"{summary['wall_s']} s ({t['clips_per_s']} clips/s, {t['output_tokens_per_s']} tok/s"
        f"{', about $' + format(t['cost_usd'], '.4f') if 'cost_usd' in t else ''}); "
        f"engine {'started' if summary['engine'].get('started') else 'not started'}",
        soft_wrap=True)
    for stream, clips in c.get("media_not_received", {}).items():
        if clips > MEDIA_NOT_RECEIVED_WARN_AT:
            console.print(f"[yellow]warning[/yellow] {clips} clips have {stream} that reached "
                          f"the model as no {stream} tokens: the engine or its processor "
                          "dropped it (the audit flags each: media_not_received); check the "
                          "engine's version against the model's", soft_wrap=True)


MEDIA_NOT_RECEIVED_WARN_AT = 2
"""More clips of a run than this with a stream that never reached the model: it warns once."""
