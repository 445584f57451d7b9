"""The fake engine answers what the schema allows, reproducibly, and fails as told."""

import pytest

from annotator.engines.contract import EngineOptions, Request
from annotator.engines.fake import FakeEngine
from annotator.models import ModelSpec
from annotator.core.schema import answer_model, description_model, json_schema, parse_description
from annotator.settings import EngineSettings, SamplingSettings

SPEC = ModelSpec("none", "fake", "local-0", "text", ())


def engine(model, faults: str = "", max_tokens: int = 2048) -> FakeEngine:
    return FakeEngine(SPEC, EngineOptions(
        schema=json_schema(model), sampling=SamplingSettings(max_tokens=max_tokens),
        compute=EngineSettings(engine="fake", faults=faults)))


@pytest.mark.parametrize("kind", ["full", "coarse"])
@pytest.mark.parametrize("labels", [None, ["anger", "happy", "neutral", "sad"]])
@pytest.mark.parametrize("answer", [False, True])
def test_answers_validate_against_the_run_schema(kind, labels, answer):
    model = description_model(labels, kind)
    model = answer_model(model) if answer else model
    fake = engine(model)
    gens = fake.generate([Request(f"c{i}", f"prompt {i}") for i in range(50)])
    for gen in gens:
        parsed, reason = parse_description(model, gen.text)
        assert parsed is not None, reason
        assert gen.finish_reason == "stop" and gen.token_ids
    assert len({g.text for g in gens}) > 40  # answers depend on the request
    again = engine(model).generate([Request("c0", "prompt 0")])[0]
    assert again.text == gens[0].text  # and are reproducible


def test_faults_fire_at_their_rates_and_per_attempt():
    model = description_model(None)
    fake = engine(model, "invalid=0.2,truncate=0.2,error=0.2")
    first = fake.generate([Request(f"c{i}", "p") for i in range(600)])
    kinds = {"error": sum(bool(g.error) for g in first),
             "truncated": sum(g.finish_reason == "length" for g in first),
             "invalid": sum(not g.error and g.finish_reason == "stop"
                            and parse_description(model, g.text)[0] is None for g in first)}
    # error is drawn first (0.2), then invalid (0.2 of the rest), then truncation
    assert 90 < kinds["error"] < 150 and 70 < kinds["invalid"] < 130
    assert 50 < kinds["truncated"] < 110, kinds
    second = fake.generate([Request(f"c{i}", "p") for i in range(600)])
    assert [g.error for g in second] != [g.error for g in first]  # a retry is a new draw


def test_free_thought_latency_and_budget():
    model = description_model(None)
    fake = engine(model, "latency=0.01", max_tokens=16)
    thought = fake.generate([Request("c", "p", guided=False, max_tokens=512)])[0]
    assert thought.text.startswith("Thinking about clip c") and thought.finish_reason == "stop"
    answer = fake.generate([Request("c", "p")])[0]
    assert answer.finish_reason == "length"  # 16 tokens cannot hold the full schema
