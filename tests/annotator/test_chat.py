"""Chat frames: the model's chat template rendered once with slots for the texts gives, filled,
what the tokenizer renders itself, and lets Ray's plan and prepare tasks run without it."""

import dataclasses
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from annotator.chat import (build_prompt, chat_frames, clip_kinds, conversation_prompt,
                            load_tokenizer, reply_slot, turn_shapes)
from annotator.chat_template import chat_template
from annotator.config import RunConfig
from annotator.core.errors import PromptError
from annotator.models import describe_model
from annotator.resolve import resolve
from annotator.stages import plan, prepare
from annotator.stages.context import with_chat
from tests.builders.imports import imported_after
from tests.conftest import write_manifest

TEXTS = [("Describe the clip.", None),
         ("Cues: {'f0_median_hz': 221.0}\n\nSay \"how\" & <why>.", "Now the JSON {{ }}."),
         ("  A turn that starts with spaces", "and a follow-up\nover two lines")]

LLAMA_STYLE = ("{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + "
               "message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + "
               "'<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
               "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")


def with_template(tiny_omni, folder, template: str):
    """A copy of the tiny model whose chat template is `template` (a text model's)."""
    model = shutil.copytree(tiny_omni, folder)
    (model / "chat_template.jinja").write_text(template)
    return dataclasses.replace(describe_model(str(model)), family="text", modalities=())


CONVERSATIONS = {"one-pass": ("clip",), "two-phase": ("clip", "text"),
                 "chain": ("video", "audio", "text", "text"),
                 "voice first": ("audio", "clip", "text")}


@pytest.mark.parametrize("family", ["omni", "text"])
@pytest.mark.parametrize("turn_media", CONVERSATIONS.values(), ids=CONVERSATIONS.keys())
def test_filled_frames_are_what_the_tokenizer_renders(tiny_omni, family, turn_media):
    """Every turn of every kind of clip: the frame, filled, is the tokenizer's rendering of
    the same conversation (the replies still slots)."""
    spec = describe_model(str(tiny_omni))
    if family == "text":
        spec = dataclasses.replace(spec, family="text", modalities=())
    assert_frames_are_the_tokenizers(spec, turn_media)


def assert_frames_are_the_tokenizers(spec, turn_media: tuple[str, ...]) -> None:
    """Every turn of every kind of clip `spec` takes: its frame, filled, equals the
    tokenizer's rendering (the replies still slots)."""
    frames, tokenizer = chat_frames(spec, turn_media), load_tokenizer(spec.path)
    texts = [text for pair in TEXTS for text in pair if text] * 2
    for kind in clip_kinds(spec):
        shapes = turn_shapes(spec, turn_media, *kind)
        for n in range(1, len(shapes) + 1):
            replies = [reply_slot(i) for i in range(n - 1)]
            expected = conversation_prompt(tokenizer, spec, list(zip(shapes, texts))[:n],
                                           replies)
            assert frames.fill(shapes[:n], texts[:n]) == expected
            assert all(expected.count(r) == 1 for r in replies)


def test_a_chain_shows_each_stream_once_in_the_turn_that_asks_for_it(tiny_omni):
    spec = describe_model(str(tiny_omni))
    chain = ("video", "audio", "text", "text")
    assert turn_shapes(spec, chain, True, True) == ("video", "audio", "text", "text")
    assert turn_shapes(spec, chain, False, True) == ("text", "audio", "text", "text")
    assert turn_shapes(spec, ("clip", "text"), True, True) == ("video+audio", "text")
    assert turn_shapes(spec, ("audio", "clip"), True, True) == ("audio", "video")
    text_model = dataclasses.replace(spec, family="text", modalities=())
    assert turn_shapes(text_model, chain, True, True) == ("text",) * 4
    prompt = chat_frames(spec, chain).fill(("video", "audio"), ["Face?", "Voice?"])
    face, voice = prompt.split("Face?")
    assert "<|VIDEO|>" in face and "<|AUDIO|>" not in face
    assert "<|AUDIO|>" in voice and "<|VIDEO|>" not in voice and reply_slot(0) in voice


def test_a_template_that_trims_its_turns_still_gets_frames(tiny_omni, tmp_path):
    """Prompts are rendered stripped, so a template that trims each turn (Llama 3's) writes
    them as given."""
    spec = with_template(tiny_omni, tmp_path / "llama", LLAMA_STYLE)
    tokenizer = load_tokenizer(spec.path)
    for user, followup in TEXTS[:2]:
        texts = [user] if followup is None else [user, followup]
        assert chat_frames(spec).fill(("text",) * len(texts), texts) == build_prompt(
            tokenizer, spec, user, False, False, followup)


def test_special_tokens_reach_the_template_as_the_tokenizer_gives_them(tiny_omni, tmp_path):
    """A template that writes bos_token (an AddedToken's dict in tokenizer_config.json) is
    rendered without transformers, and as the tokenizer renders it."""
    spec = with_template(tiny_omni, tmp_path / "bos", LLAMA_STYLE)
    config_file = Path(spec.path) / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["bos_token"] = {"__type": "AddedToken", "content": "<|im_start|>", "lstrip": False,
                           "normalized": False, "rstrip": False, "single_word": False,
                           "special": True}
    config_file.write_text(json.dumps(config))
    assert chat_template(spec.path) is not None
    prompt = chat_frames(spec).fill(("text",), ["Describe the clip."])
    assert prompt.startswith("<|im_start|>") and prompt == build_prompt(
        load_tokenizer(spec.path), spec, "Describe the clip.", False, False)


def test_a_template_kept_in_a_way_it_does_not_read_goes_to_the_tokenizer(tiny_omni, tmp_path):
    """Named templates, a token the template writes that tokenizer_config.json does not name
    (the tokenizer's class may give it), or a legacy special_tokens_map.json: the tokenizer
    renders the frames, the same frames."""
    named = with_template(tiny_omni, tmp_path / "named", LLAMA_STYLE)
    (Path(named.path) / "additional_chat_templates").mkdir()
    (Path(named.path) / "additional_chat_templates" / "tool_use.jinja").write_text(LLAMA_STYLE)
    legacy = with_template(tiny_omni, tmp_path / "legacy", LLAMA_STYLE)
    (Path(legacy.path) / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<|im_start|>"}))
    unnamed = with_template(tiny_omni, tmp_path / "unnamed", LLAMA_STYLE)  # no bos_token
    for spec in (named, legacy, unnamed):
        assert chat_template(spec.path) is None
        assert chat_frames(spec).fill(("text",), ["Describe the clip."]) == build_prompt(
            load_tokenizer(spec.path), spec, "Describe the clip.", False, False)


def test_the_driver_makes_its_frames_without_transformers(tiny_omni):
    """Planning a run renders the chat template once: loading the tokenizer for it took 8.6 s
    of a cold run (transformers and torch imported)."""
    code = ("from annotator.chat import chat_frames\n"
            "from annotator.models import describe_model\n"
            f"frames = chat_frames(describe_model({str(tiny_omni)!r}), ('clip', 'text'))\n"
            "assert frames.frames and not frames.errors")
    assert imported_after(code, ("transformers", "torch")) == []


def test_a_template_that_rewrites_its_turns_fails_each_clip_with_the_reason(tiny_omni,
                                                                           tmp_path):
    spec = with_template(tiny_omni, tmp_path / "upper", LLAMA_STYLE.replace("trim", "upper"))
    with pytest.raises(PromptError, match="changes the text it is given"):
        chat_frames(spec).fill(("text",), ["Describe the clip."])


def test_ray_tasks_plan_and_prepare_without_transformers(tmp_path, clips, tiny_omni):
    """The driver's chat frames travel in the context: a fresh process (a Ray worker) plans
    and prepares the same rows as the driver and never imports transformers or torch (3.6 s
    of CPU and torch's memory in every worker, measured)."""
    manifest = write_manifest(tmp_path / "m.csv", [
        {"path": str(clips["tone_220"]), "label": "sad"},
        {"path": str(clips["audio_only"]), "label": "sad"}])
    resolved = resolve(RunConfig(manifest=manifest, out=tmp_path, model=str(tiny_omni),
                                 generation="two-phase"), "cpu")
    planned = plan.plan_table(resolved.chosen, resolved.ctx)
    expected = prepare.prepare_batch(planned, ctx=resolved.ctx)
    (tmp_path / "task.pkl").write_bytes(pickle.dumps((with_chat(resolved.ctx),
                                                      resolved.chosen)))
    worker = (
        "import pickle, sys\n"
        "from annotator.stages import plan, prepare\n"
        f"ctx, chosen = pickle.loads(open({str(tmp_path / 'task.pkl')!r}, 'rb').read())\n"
        "planned = plan.plan_batch(chosen, ctx=ctx)\n"
        "prepared = prepare.prepare_batch(planned, ctx=ctx)\n"
        "loaded = [m for m in ('transformers', 'torch') if m in sys.modules]\n"
        f"open({str(tmp_path / 'out.pkl')!r}, 'wb').write("
        "pickle.dumps((planned, prepared, loaded)))\n")
    subprocess.run([sys.executable, "-c", worker], check=True, timeout=300)
    in_worker, prepared, loaded = pickle.loads((tmp_path / "out.pkl").read_bytes())
    assert loaded == []
    assert in_worker.to_pylist() == planned.to_pylist()
    assert prepared.drop_columns(["prepared_on"]).to_pylist() == \
        expected.drop_columns(["prepared_on"]).to_pylist()
    assert prepared["later_prompts"][0].as_py()[0].count(reply_slot(0)) == 1
