import pytest

from annotator.core.emotions import label_sets
from prompts import ANSWER, ONE_PASS, Phase, PromptError, load_template, render, shipped

LABELS = {**label_sets(), "open": None}


def context(modalities, labels, has_audio=True, phase="one-pass"):
    return {"clip": {"clip_id": "c1", "label": "sad", "dataset": "CREMA-D", "speaker": "1001"},
            "media": {"has_video": True, "has_audio": has_audio, "duration_s": 2.5,
                      "source_fps": 30.0, "width": 480, "height": 360, "num_frames": 8},
            "modalities": modalities, "labels": labels, "cues": None, "examples": [],
            "phase": phase}


def every_phase():
    """(template, phase) for each shipped template and each phase it renders."""
    return [(name, phase) for name in shipped()
            for phase in (ONE_PASS, *(p.name for p in load_template(name).phases), ANSWER)]


@pytest.mark.parametrize(("name", "phase"), every_phase())
@pytest.mark.parametrize("modalities", [["video", "audio"], []])
@pytest.mark.parametrize("labels", LABELS.values(), ids=LABELS.keys())
def test_every_shipped_template_renders(name, modalities, labels, phase):
    template = load_template(name)
    text = render(template, context(modalities, labels, phase=phase))
    shown = text.split("one of:")[0].lower().replace("sadness", "")
    assert "sad" not in shown  # the manifest label is never shown
    free = phase not in (ONE_PASS, ANSWER)
    if labels and phase in (ONE_PASS, ANSWER):
        assert ", ".join(labels) in text
    # the free turns ask for prose; the answer turn asks for the JSON without reasoning
    assert ("Do not write JSON yet" in text) == free
    if phase == ANSWER:
        assert "JSON" in text and "reasoning" not in text.split("JSON")[1].split(".")[0]
    elif phase in (ONE_PASS, template.phases[0].name):
        assert "clip" in text
    assert template.two_phase
    assert template.version != "unversioned" and len(template.sha256) == 64


def test_a_chain_of_phases_is_declared_in_the_header(tmp_path):
    chain = load_template("describe_then_fuse")
    assert chain.phases == (Phase("face", "video", 128), Phase("voice", "audio", 128),
                            Phase("fuse", "text", 160))
    bad = tmp_path / "bad.j2"
    for header, error in [("phases=face:eyes", "MEDIA is one of video, audio, clip, text"),
                          ("phases=face,face", "names a phase twice"),
                          ("phases=answer", "not one-pass, think, answer"),
                          ("phase=face", "its header has phase; it may have")]:
        bad.write_text(f"{{#- vaemo-template name=bad version=1 {header} -#}}{{{{ phase }}}}")
        with pytest.raises(PromptError, match=error):
            load_template(str(bad))
    bad.write_text("{#- vaemo-template name=bad version=1 phases=face:video -#}Same each turn")
    with pytest.raises(PromptError, match="never reads `phase`"):
        load_template(str(bad))


def test_a_template_without_phases_refuses_two_phase_generation(tmp_path):
    plain = tmp_path / "plain.j2"
    plain.write_text("Describe the clip as JSON.")
    template = load_template(str(plain))
    assert not template.two_phase
    assert render(template, context([], None)) == "Describe the clip as JSON."
    with pytest.raises(PromptError, match="--generation one-pass"):
        render(template, context([], None, phase="think"))


def test_label_sets_are_the_benchmarks_own():
    sets = label_sets()
    assert len(sets["crema-d"]) == 6 and len(sets["ravdess"]) == 8 and len(sets["dfew"]) == 7
    assert len(sets["mafw"]) == 11 and "worried" in sets["mer2023"]


def test_run_config_resolves_a_named_label_set(tmp_path):
    from annotator.config import RunConfig

    config = RunConfig(manifest=tmp_path / "m.csv", out=tmp_path, labels="MAFW")
    assert config.label_set(["x"]) == label_sets()["mafw"]
    assert RunConfig(manifest=tmp_path, out=tmp_path, labels="a, b").label_set([]) == ["a", "b"]
    assert RunConfig(manifest=tmp_path, out=tmp_path, labels="open").label_set(["x"]) is None
    assert RunConfig(manifest=tmp_path, out=tmp_path).label_set(["b", "a", "b"]) == ["a", "b"]


def test_cues_are_listed_when_measured():
    from annotator.core.cues import for_template

    cues = for_template({"version": "1", "audio": None, "video": {
        "num_frames": 8, "face_frames_fraction": 0.5, "frames_without_face": [0, 1],
        "max_faces": 1, "face_area_fraction": 0.1, "face_centre_x": 0.5, "face_centre_y": 0.4,
        "motion_energy": 0.02, "brightness": 0.5}})
    for name in shipped():
        text = render(load_template(name), {**context(["video", "audio"], None), "cues": cues})
        assert "video.face_frames_fraction: 0.5" in text
        assert "voice: not measured (no stream)" in text


def test_no_audio_is_said():
    text = render(load_template("describe_av"), context(["video", "audio"], None, False))
    assert "no audio" in text


def test_hostile_template_is_refused(tmp_path):
    hostile = tmp_path / "evil.j2"
    hostile.write_text("{{ ''.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(PromptError, match="unsafe"):
        render(load_template(str(hostile)), context([], None))


def test_missing_variable_is_an_error(tmp_path):
    typo = tmp_path / "typo.j2"
    typo.write_text("{{ clip.labell }}")
    with pytest.raises(PromptError, match="labell"):
        render(load_template(str(typo)), context([], None))


def test_unknown_template_lists_the_shipped_ones():
    with pytest.raises(PromptError, match="describe_av"):
        load_template("nope")


@pytest.mark.parametrize("name", shipped())
@pytest.mark.parametrize("phase", ["one-pass", "answer"])
def test_templates_name_exactly_the_schema_fields(name, phase):
    """The fields a template asks for are the schema's (annotator/core/schema.py): a field
    added to the schema, or a template that names one the schema lacks, fails here."""
    from annotator.core.schema import SCHEMAS, field_list

    template = load_template(name)
    text = render(template, context(["video", "audio"], None, phase=phase))
    if template.schema == "full":
        assert field_list("full") in text
    for field in SCHEMAS[template.schema].model_fields:
        if field != "reasoning" or phase == "one-pass":
            assert field in text, f"{name} ({phase}) never names {field}"


def test_templates_get_the_field_list_and_a_wrong_one_is_caught(tmp_path):
    from annotator.core.schema import field_list

    own = tmp_path / "own.j2"
    own.write_text("Answer with one JSON object with the fields reasoning, {{ fields }}.")
    text = render(load_template(str(own)), context([], None))
    assert text.endswith(f"reasoning, {field_list()}.")
    assert "evidence (up to 4 claims, each with its source: face, body, voice, cues or " \
           "metadata, and the detail it rests on) and summary" in text
    stale = field_list().replace("intensity (0 to 1), ", "")  # as a template written earlier
    assert stale not in text
