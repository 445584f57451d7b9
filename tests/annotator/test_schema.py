import json

import jsonschema

from annotator.core.schema import (AffectiveDescription, description_model, json_schema,
                                   parse_description)

GOOD = {"reasoning": "The voice is soft and slow.", "face": "relaxed", "body": "still",
        "voice": "soft, slow", "cross_modal": "consistent", "primary_emotion": "sad",
        "secondary_emotions": ["neutral"], "valence": -0.4, "arousal": 0.2, "intensity": 0.4,
        "confidence": 0.7, "evidence": [{"claim": "soft voice", "source": "cues",
                                          "detail": "loudness -32 dB"}],
        "summary": "A quiet, sad delivery."}


def test_reasoning_comes_first_and_fields_are_documented():
    schema = json_schema(AffectiveDescription)
    assert list(schema["properties"])[0] == "reasoning"
    assert all(p.get("description") for p in schema["properties"].values())


def test_label_set_constrains_primary_and_secondary():
    model = description_model(["happy", "sad", "neutral"])
    schema = json_schema(model)
    jsonschema.validate(GOOD, schema)
    assert parse_description(model, json.dumps(GOOD))[0]["primary_emotion"] == "sad"
    bad = {**GOOD, "primary_emotion": "joy"}
    parsed, reason = parse_description(model, json.dumps(bad))
    assert parsed is None and "primary_emotion" in reason


def test_ranges_and_truncation_are_invalid():
    model = description_model(None)
    assert parse_description(model, json.dumps({**GOOD, "valence": -1.5}))[0] is None
    parsed, reason = parse_description(model, json.dumps(GOOD)[:-20])
    assert parsed is None and reason


def test_coarse_schema_is_short_and_label_constrained():
    model = description_model(["happy", "sad"], "coarse")
    schema = json_schema(model)
    assert list(schema["properties"]) == ["reasoning", "primary_emotion", "summary"]
    ok = {"reasoning": "Soft, slow voice.", "primary_emotion": "sad", "summary": "Quiet."}
    assert parse_description(model, json.dumps(ok))[0] == ok
    assert parse_description(model, json.dumps({**ok, "primary_emotion": "joy"}))[0] is None


def test_evidence_sources_are_constrained():
    model = description_model(None)
    bad = {**GOOD, "evidence": [{"claim": "x", "source": "vibes", "detail": "y"}]}
    assert parse_description(model, json.dumps(bad))[0] is None


def test_parquet_struct_follows_the_schema():
    from annotator.core.rows import description_type

    names = [f.name for f in description_type()]
    assert names == [n for n in AffectiveDescription.model_fields if n != "reasoning"]
