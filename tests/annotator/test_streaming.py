"""The streaming engine stage: each clip's next request goes in the moment its previous one
ends, batches in flight never wait on each other, and rows are what batch generation gives."""

import threading

import pyarrow as pa
import pytest

from annotator.config import RunConfig
from annotator.engines.factory import create_engine
from annotator.pipeline import plan_clips
from annotator.resolve import resolve
from annotator.core.schema import answer_model, description_model
from annotator.stages.generate import Batch, EngineWorker, Scheduler, request_for
from annotator.stages.prepare import prepare_batch
from tests.conftest import write_manifest

NAMES = ("real_astronaut", "real_grace_hopper", "tone_220", "tone_440", "silent_video")


def prepared(tmp_path, clips, model, **settings) -> tuple:
    manifest = write_manifest(tmp_path / "m.csv", [
        {"path": str(clips[n]), "clip_id": n, "label": "sad"} for n in NAMES])
    config = RunConfig(manifest=manifest, out=tmp_path / "out", model=str(model),
                       labels="happy,sad", **settings)
    resolved = resolve(config, "cpu")
    rows = prepare_batch(plan_clips(resolved), ctx=resolved.ctx).to_pylist()
    return resolved, {r["clip_id"]: r for r in rows}


class Stepwise:
    """A test engine around the fake one: each request takes a set number of steps (by
    clip), and every submit and finish is logged in order."""

    def __init__(self, inner, steps: dict[str, int]):
        self.inner, self.steps, self.live, self.log = inner, steps, {}, []

    def submit(self, key, request):
        self.live[key] = [request, self.steps.get(request.clip_id, 1)]
        self.log.append(("submit", request.clip_id, "answer" if request.guided else "thought"))

    def step(self):
        done = []
        for key, entry in list(self.live.items()):
            entry[1] -= 1
            if entry[1] <= 0:
                del self.live[key]
                done.append((key, self.inner.generate([entry[0]])[0]))
                self.log.append(("done", entry[0].clip_id,
                                 "answer" if entry[0].guided else "thought"))
        return done

    def busy(self):
        return bool(self.live)


def test_no_clip_or_batch_waits_for_a_slow_one(tmp_path, clips, tiny_omni):
    resolved, rows = prepared(tmp_path, clips, tiny_omni, engine="fake",
                              generation="two-phase")
    ctx = resolved.ctx
    engine = Stepwise(create_engine("fake", ctx.spec, ctx.options),
                      {"real_astronaut": 20})
    scheduler = Scheduler(engine, ctx, answer_model(description_model(ctx.labels,
                                                                      ctx.template.schema)))
    first = Batch([dict(rows["real_astronaut"]), dict(rows["tone_220"])])
    second = Batch([dict(rows["tone_440"]), dict(rows["real_grace_hopper"])])
    scheduler.add(first)
    scheduler.add(second)
    finished_order = []
    while engine.busy():
        for key, generation in engine.step():
            scheduler.finished(key, generation)
        for name, batch in (("first", first), ("second", second)):
            if batch.done.is_set() and name not in finished_order:
                finished_order.append(name)
    assert finished_order == ["second", "first"]  # the slow clip held back its batch only
    log = engine.log
    slow_thought_done = log.index(("done", "real_astronaut", "thought"))
    # the fast clips' answers went in as soon as their thoughts ended, long before
    for clip in ("tone_220", "tone_440", "real_grace_hopper"):
        assert log.index(("submit", clip, "answer")) < slow_thought_done
    assert first.table.column("status").to_pylist() == ["ok", "ok"]
    assert second.table.column("status").to_pylist() == ["ok", "ok"]


def test_the_gate_waits_between_queries_while_the_engine_works_and_never_when_idle(
        tmp_path, clips, tiny_omni, monkeypatch):
    """The gate's query costs the same for one row as for many: while the engine is busy it
    runs at most every GATE_EVERY_S over every answer since; an idle engine never waits."""
    from annotator.core.schema import enforced_model
    from annotator.stages import generate

    resolved, rows = prepared(tmp_path, clips, tiny_omni, engine="fake",
                              generation="one-pass", refine=1)
    ctx = resolved.ctx
    model = enforced_model(tuple(ctx.labels), ctx.template.schema, ctx.two_phase)

    def busy_at_each_query(every: float) -> list[bool]:
        monkeypatch.setattr(generate, "GATE_EVERY_S", every)
        engine = Stepwise(create_engine("fake", ctx.spec, ctx.options),
                          {"real_astronaut": 6})  # works on while the others answer
        scheduler = Scheduler(engine, ctx, model)
        busy, query = [], scheduler.gate.check
        scheduler.gate.check = lambda rows: busy.append(engine.busy()) or query(rows)
        scheduler.checked_at = generate.time.perf_counter()  # as if it had just queried
        batch = Batch([dict(rows[n]) for n in ("real_astronaut", "tone_220", "tone_440")])
        scheduler.add(batch)
        while engine.busy() or scheduler.to_check:
            for key, generation in engine.step():
                scheduler.finished(key, generation)
            scheduler.check(engine.busy())
        assert batch.done.is_set() and busy
        return busy

    assert not any(busy_at_each_query(3600.0))  # held back while busy, never lost
    assert any(busy_at_each_query(0.0))  # without the wait: queries beside a busy engine


@pytest.mark.slow
def test_streamed_vllm_rows_equal_batch_generation(tmp_path, clips, tiny_omni):
    """Greedy rows through the streaming worker, two batches from two threads at once, equal
    `generate` on the same requests all at once (one-pass, so each row is one request)."""
    resolved, rows = prepared(tmp_path, clips, tiny_omni, generation="one-pass",
                              max_tokens=48, retries=0, dtype="float32")
    worker = EngineWorker(resolved.ctx, torch_threads=1)
    names = list(rows)
    expected = worker.engine.generate([request_for(rows[n], resolved.ctx) for n in names])
    halves = [names[:2], names[2:]]
    tables: dict[int, pa.Table] = {}

    def call(i):
        tables[i] = worker(pa.Table.from_pylist([rows[n] for n in halves[i]]))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    got = {}
    for i in range(2):
        for row in tables[i].to_pylist():
            got[row["clip_id"]] = row
    for name, generation in zip(names, expected):
        assert got[name]["raw_output"] == generation.text
        assert got[name]["num_output_tokens"] == len(generation.token_ids)
