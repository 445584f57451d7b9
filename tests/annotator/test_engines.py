"""Real engines on the tiny random Qwen2.5-Omni: media reach the model, and vLLM agrees with
the transformers reference implementation on teacher-forced log-probabilities."""

import threading
from dataclasses import replace

import numpy as np
import pytest

from annotator.chat import build_prompt
from annotator.engines.factory import create_engine
from annotator.engines.contract import EngineOptions, Request
from annotator.core.media import decode
from annotator.models import describe_model
from annotator.core.schema import description_model, json_schema, parse_description
from annotator.settings import EngineSettings, SamplingSettings

pytestmark = pytest.mark.slow
LABELS = ["anger", "happy", "neutral", "sad"]


@pytest.fixture(scope="module")
def spec(tiny_omni):
    return describe_model(str(tiny_omni))


@pytest.fixture(scope="module")
def options():
    return EngineOptions(schema=json_schema(description_model(LABELS)),
                         sampling=SamplingSettings(max_tokens=2048, generation="one-pass"),
                         compute=EngineSettings(dtype="float32"), device="cpu")


@pytest.fixture(scope="module")
def vllm_engine(spec, options):
    return create_engine("vllm", spec, options)


@pytest.fixture(scope="module")
def hf_engine(spec, options):
    return create_engine("transformers", spec, options)


def request(engine, spec, clip, video=True, audio=True, frames=None, wave=None):
    media = decode(str(clip))
    frames = (frames if frames is not None else media.frames) if video else None
    wave = (wave if wave is not None else media.audio) if audio else None
    prompt = build_prompt(engine.tokenizer, spec, "Describe the emotion.", frames is not None,
                          wave is not None)
    return Request("c", prompt, frames, media.fps if frames is not None else None, wave)


def test_model_modalities_come_from_config(spec):
    assert spec.family == "omni" and spec.modalities == ("video", "audio")


def test_prompt_carries_the_expected_placeholder_counts(vllm_engine, hf_engine, spec, clips):
    req = request(vllm_engine, spec, clips["real_astronaut"])
    ids = vllm_engine.generate([req])[0].prompt_token_ids
    tok = vllm_engine.tokenizer
    # expected counts from the model's own processor (grid and audio feature lengths)
    encoded = hf_engine._encode(req)
    t, h, w = encoded["video_grid_thw"][0].tolist()
    expected_video = t * h * w // 4  # 2x2 spatial merge
    mel = int(encoded["feature_attention_mask"].sum())
    expected_audio = ((mel - 1) // 2 + 1 - 2) // 2 + 1
    assert ids.count(tok.convert_tokens_to_ids("<|VIDEO|>")) == expected_video
    assert ids.count(tok.convert_tokens_to_ids("<|AUDIO|>")) == expected_audio
    assert expected_video > 0 and expected_audio > 0


def test_changing_only_video_or_only_audio_moves_first_token_logprobs(vllm_engine, spec,
                                                                      clips):
    base = request(vllm_engine, spec, clips["tone_220"])
    other = decode(str(clips["real_grace_hopper"]), max_side=96)
    other_audio = decode(str(clips["tone_440"])).audio
    new_video = request(vllm_engine, spec, clips["tone_220"],
                        frames=other.frames[:, :96, :96])
    new_audio = request(vllm_engine, spec, clips["tone_220"], wave=other_audio)
    token = [vllm_engine.tokenizer.convert_tokens_to_ids("{")]
    score = {name: vllm_engine.score(r, token)[0]
             for name, r in [("base", base), ("video", new_video), ("audio", new_audio)]}
    assert vllm_engine.score(base, token)[0] == score["base"]  # deterministic
    assert abs(score["video"] - score["base"]) > 1e-4
    assert abs(score["audio"] - score["base"]) > 1e-4


@pytest.mark.parametrize("video,audio,tolerance", [
    (False, False, 1e-4), (True, False, 1e-4), (False, True, 1e-4),
    # audio interleaved in video: measured 5e-3 (see README, "engine parity")
    (True, True, 1e-2)])
def test_vllm_matches_transformers_teacher_forced(vllm_engine, hf_engine, spec, clips, video,
                                                  audio, tolerance):
    req = request(vllm_engine, spec, clips["real_astronaut"], video=video, audio=audio)
    generated = vllm_engine.generate([req])[0]
    assert parse_description(description_model(LABELS), generated.text)[0] is not None
    continuation = generated.token_ids[:40]
    ours = np.array(vllm_engine.score(req, continuation))
    reference = np.array(hf_engine.score(req, continuation))
    assert generated.prompt_token_ids == hf_engine._encode(req)["input_ids"][0].tolist()
    assert np.abs(ours - reference).max() < tolerance


def test_transformers_engine_generates_schema_valid_json(hf_engine, spec, clips):
    gen = hf_engine.generate([request(hf_engine, spec, clips["tone_440"])])[0]
    assert gen.error == "" and gen.finish_reason == "stop"
    parsed, reason = parse_description(description_model(LABELS), gen.text)
    assert parsed is not None, reason
    assert parsed["primary_emotion"] in LABELS


def test_a_bad_request_fails_alone(vllm_engine, spec, clips):
    good = request(vllm_engine, spec, clips["tone_220"])
    too_long = good.prompt + " calm" * 9000  # past the model's 8192-token context
    bad = Request("bad", too_long, good.frames, good.fps, good.audio)
    gens = vllm_engine.generate([good, bad])
    assert gens[0].error == "" and gens[1].error


def test_requests_are_rendered_off_the_stepping_thread_in_submit_order(vllm_engine, spec,
                                                                         clips, monkeypatch):
    renderer, seen = vllm_engine.llm.renderer, []
    render = renderer.render_cmpl

    def recorded(prompts, *args, **kwargs):
        seen.append((threading.current_thread(), prompts[0]["prompt"]))
        return render(prompts, *args, **kwargs)

    monkeypatch.setattr(renderer, "render_cmpl", recorded)
    reqs = [request(vllm_engine, spec, clips[name]) for name in ("tone_220", "tone_440")]
    reqs[1].prompt += " Be brief."
    vllm_engine.generate(reqs)
    assert [p for _, p in seen] == [r.prompt for r in reqs]
    assert all(t is not threading.current_thread() for t, _ in seen)


def test_same_tokens_as_vllms_own_generate(vllm_engine, spec, clips):
    """Our path (render thread, step API) against `LLM.generate` on the same engine."""
    reqs = [request(vllm_engine, spec, clips[name]) for name in ("real_astronaut", "tone_440")]
    for r in reqs:
        r.max_tokens = 24
    ours = vllm_engine.generate(reqs)
    theirs = vllm_engine.llm.generate([vllm_engine.inputs(r) for r in reqs],
                                      [vllm_engine.sampling_params(r) for r in reqs],
                                      use_tqdm=False)
    for gen, out in zip(ours, theirs):
        assert gen.prompt_token_ids == list(out.prompt_token_ids)
        assert gen.token_ids == list(out.outputs[0].token_ids)


def test_clips_sharing_a_track_are_processed_as_their_own_with_the_media_cache_on(
        vllm_engine, spec, options, clips):
    """vLLM's processor cache (on for later turns and samples) keys each item by its content;
    with the audio riding in the video, a clip whose audio track (or frames) another clip
    already had found one item cached and not the other, and failed or was laid out for the
    other clip's audio. Each clip must score as on an engine without the cache."""
    cached = create_engine("vllm", spec, replace(options, compute=EngineSettings(
        dtype="float32", media_cache_gib=0.5)))
    base = request(vllm_engine, spec, clips["tone_220"])
    other = decode(str(clips["tone_440"]))
    requests = [
        base,
        request(vllm_engine, spec, clips["tone_440"], wave=base.audio),  # its audio, new video
        request(vllm_engine, spec, clips["tone_220"], wave=other.audio[:len(base.audio) // 2]),
        base,  # a later turn of the first clip
    ]
    token = [vllm_engine.tokenizer.convert_tokens_to_ids("{")]
    for r in requests:
        assert cached.score(r, token) == pytest.approx(vllm_engine.score(r, token), abs=1e-5)
