"""Chat frames: the model's chat template rendered once with slots for the texts gives, filled,
what the tokenizer renders itself, and lets Ray's plan and prepare tasks run without it."""

import dataclasses
import pickle
import shutil
import subprocess
import sys

import pytest

from annotator.chat import (THOUGHT_SLOT, build_prompt, chat_frames, load_tokenizer,
                            shape_of)
from annotator.config import RunConfig
from annotator.core.errors import PromptError
from annotator.models import describe_model
from annotator.resolve import resolve
from annotator.stages import plan, prepare
from annotator.stages.context import with_chat
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


@pytest.mark.parametrize("family", ["omni", "text"])
def test_filled_frames_are_what_the_tokenizer_renders(tiny_omni, family):
    spec = describe_model(str(tiny_omni))
    if family == "text":
        spec = dataclasses.replace(spec, family="text", modalities=())
    frames, tokenizer = chat_frames(spec), load_tokenizer(spec.path)
    for video, audio in [(True, True), (True, False), (False, True), (False, False)]:
        for user, followup in TEXTS:
            expected = build_prompt(tokenizer, spec, user, video, audio, followup)
            assert frames.fill(shape_of(spec, video, audio), user, followup) == expected
    assert frames.fill("text", "a", "b").count(THOUGHT_SLOT) == 1


def test_a_template_that_trims_its_turns_still_gets_frames(tiny_omni, tmp_path):
    """Prompts are rendered stripped, so a template that trims each turn (Llama 3's) writes
    them as given."""
    spec = with_template(tiny_omni, tmp_path / "llama", LLAMA_STYLE)
    tokenizer = load_tokenizer(spec.path)
    for user, followup in TEXTS[:2]:
        assert chat_frames(spec).fill("text", user, followup) == build_prompt(
            tokenizer, spec, user, False, False, followup)


def test_a_template_that_rewrites_its_turns_fails_each_clip_with_the_reason(tiny_omni,
                                                                           tmp_path):
    spec = with_template(tiny_omni, tmp_path / "upper", LLAMA_STYLE.replace("trim", "upper"))
    with pytest.raises(PromptError, match="changes the text it is given"):
        chat_frames(spec).fill("text", "Describe the clip.")


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
    assert prepared["answer_prompt"][0].as_py().count(THOUGHT_SLOT) == 1
