"""Real transformers architectures (random weights from their configs): batched features equal
one clip at a time, pooling covers the clip and not its padding, and each architecture
injects, evaluates, exports and reloads with its own class through the CLI."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests.builders.synthetic_runs import write_synthetic_run
from tests.builders.tiny_encoders import build_tiny_architecture
from injection.cli import app
from injection.encoders.va import load_encoder
from injection.encoders.preprocess import clip_tensors
from injection.training.loader import extract

runner = CliRunner()
MIXED = ("real_astronaut", "tone_220", "silent_video", "real_grace_hopper", "tone_440")
"""Clips of different lengths (2 s speech, 1 s tones, a silent video)."""
CLASSES = {"videomae": "VideoMAEModel", "clip_vision": "CLIPVisionModel",
           "wav2vec2": "Wav2Vec2Model", "wav2vec2_layer_norm": "Wav2Vec2Model",
           "hubert": "HubertModel", "whisper": "WhisperModel", "ast": "ASTModel"}


@pytest.fixture(scope="module")
def media(clips):
    return [(str(clips[name]), None) for name in MIXED]


@pytest.mark.parametrize("name", [*CLASSES, "clip_vision+whisper"])
def test_batched_features_equal_one_clip_at_a_time(name, media, tmp_path):
    encoder = load_encoder(build_tiny_architecture(name, tmp_path / name))
    batched = extract(encoder, media, batch_size=len(media), workers=0)
    alone = np.concatenate([extract(encoder, [m], batch_size=1, workers=0) for m in media])
    assert batched.shape == (len(media), sum(encoder.branches.values()))
    np.testing.assert_allclose(batched, alone, atol=1e-5, rtol=1e-4)


def test_loader_workers_give_the_same_features(media, tmp_path):
    encoder = load_encoder(build_tiny_architecture("videomae+wav2vec2", tmp_path / "pair"))
    np.testing.assert_array_equal(extract(encoder, media, batch_size=2, workers=2),
                                  extract(encoder, media, batch_size=2, workers=0))


def test_whisper_averages_the_clip_not_its_30_s_of_padding(clips, tmp_path):
    """Reference: Whisper's own extractor and encoder, by hand, over the frames a 1 s clip
    covers (16000 samples / 160 hop / stride 2 = 50 of 1500)."""
    from transformers import WhisperFeatureExtractor, WhisperModel

    folder = build_tiny_architecture("whisper", tmp_path / "whisper")
    encoder = load_encoder(folder)
    path = str(clips["tone_220"])
    _, audio = clip_tensors(path, encoder.preprocess)
    mel = WhisperFeatureExtractor.from_pretrained(folder)(
        audio, sampling_rate=16_000, return_tensors="pt").input_features
    with torch.no_grad():
        hidden = WhisperModel.from_pretrained(folder).encoder(mel).last_hidden_state[0]
    frames = int(np.ceil(len(audio) / 320))
    assert frames == 50
    expected = hidden[:frames].mean(0).numpy()
    got = extract(encoder, [(path, None)], workers=0)[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.abs(got - hidden.mean(0).numpy()).max() > 1e-3  # padding would have moved it


def test_a_pt2_longer_audio_is_windowed_not_cropped(clips, tmp_path):
    from tests.injection.factories import tiny

    module = tiny().eval()
    example = (torch.zeros(1, 4, 3, 16, 16), torch.zeros(1, 6_000))
    torch.export.save(torch.export.export(module, example), str(tmp_path / "enc.pt2"))
    encoder = load_encoder(tmp_path / "enc.pt2")
    frames, audio = clip_tensors(str(clips["real_astronaut"]), encoder.preprocess)
    assert len(audio) == 16_000  # 1 s: windows at 0 and 6000, the last one ending at its end
    starts = [0, 6_000, 10_000]
    with torch.no_grad():
        windows = torch.stack([torch.from_numpy(audio[s:s + 6_000]) for s in starts])
        expected = module(torch.from_numpy(frames)[None].expand(3, -1, -1, -1, -1), windows)
    got = extract(encoder, [(str(clips["real_astronaut"]), None)], workers=0)[0]
    np.testing.assert_allclose(got, expected.mean(0).numpy(), atol=1e-5)


def test_unsupported_architectures_say_what_is_supported(tmp_path):
    from transformers import BertConfig, BertModel, CLIPConfig, CLIPModel

    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(tmp_path / "bert")
    with pytest.raises(Exception, match="not a supported encoder.*frames.*clip_vision_model"):
        load_encoder(tmp_path / "bert")
    small = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 32}
    CLIPModel(CLIPConfig(text_config=small, vision_config={**small, "image_size": 32,
                                                           "patch_size": 16},
                         projection_dim=16)).save_pretrained(tmp_path / "clip")
    with pytest.raises(Exception, match="save its vision tower"):
        load_encoder(tmp_path / "clip")


ROUND_TRIPS = [("videomae", "lora"), ("clip_vision", "blocks"), ("ast", "heads"),
               ("wav2vec2", "blocks"), ("hubert", "heads"), ("whisper", "lora"),
               ("clip_vision+wav2vec2_layer_norm", "heads")]


@pytest.mark.slow
@pytest.mark.parametrize("name,mode", ROUND_TRIPS)
def test_inject_eval_export_reload_with_its_own_class(name, mode, clips, tmp_path):
    from transformers import AutoModel

    from injection.commands import restore
    from injection.training.export import load_injected

    paths = [str(clips[n]) for n in MIXED]
    run = write_synthetic_run(tmp_path / "run", 10, media=paths, planted=False)
    folder = build_tiny_architecture(name, tmp_path / "enc")
    out = tmp_path / "inj"
    args = ["train", "--descriptions", str(run), "--encoder", str(folder), "--out", str(out),
            "--mode", mode, "--steps", "3", "--batch-size", "4", "--encoder-lr", "5e-2",
            "--workers", "0", "--hidden", "0", "--dim", "16"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["eval", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "eval.json").read_text())["after"]["clip_to_text"]

    exported, _, meta = load_injected(out / "encoder")
    for branch, sub in (("video", "video"), ("audio", "audio")):
        target = out / "encoder" / sub if "+" in name else out / "encoder"
        if branch in exported.branches:
            part = name.split("+")[0 if branch == "video" else -1]
            assert type(AutoModel.from_pretrained(target)).__name__ == CLASSES[part]
    _, prep, _, _ = restore(out, lambda *_: None)  # the trainer's encoder and caches
    media = prep.corpus.media
    again = extract(exported, media, workers=0)
    if mode == "heads":  # what the trainer saw: the cached features of the original
        seen = np.concatenate([np.asarray(v) for v in prep.features.va.values()], 1)
    else:  # the tuned encoder, restored from its checkpoint and folded back
        seen = extract(prep.encoder, media, workers=0)
        original = extract(load_encoder(folder), media, workers=0)
        assert np.abs(again - original).max() > 1e-4
    np.testing.assert_allclose(again, seen, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("route", ["factory", "pt2"])
def test_custom_encoders_train_eval_export_and_reload(route, clips, tmp_path):
    """The factory and torch.export routes through the CLI, export included (both crashed
    after training once: LoRA merging assumed a transformers encoder)."""
    from safetensors.torch import save_file

    from injection.commands import restore
    from injection.training.export import load_injected
    from tests.injection.factories import tiny

    paths = [str(clips[n]) for n in MIXED]
    run = write_synthetic_run(tmp_path / "run", 10, media=paths, planted=False)
    if route == "factory":
        encoder = tmp_path / "w.safetensors"
        save_file(tiny().state_dict(), encoder)
        extra = ["--factory", "tests.injection.factories:tiny"]
    else:
        encoder = tmp_path / "enc.pt2"
        example = (torch.zeros(1, 4, 3, 16, 16), torch.zeros(1, 16_000))
        torch.export.save(torch.export.export(tiny().eval(), example), str(encoder))
        extra = []
    out = tmp_path / "inj"
    result = runner.invoke(app, ["train", "--descriptions", str(run), "--encoder", str(encoder),
                                 "--out", str(out), "--steps", "3", "--batch-size", "4",
                                 "--workers", "0", *extra])
    assert result.exit_code == 0, result.output
    for command in ("eval", "export"):
        result = runner.invoke(app, [command, str(out)])
        assert result.exit_code == 0, result.output
    exported, projector, meta = load_injected(out / "encoder")
    assert meta["format"] == {"factory": "factory", "pt2": "export"}[route]
    _, prep, _, _ = restore(out, lambda *_: None)
    np.testing.assert_allclose(extract(exported, prep.corpus.media, workers=0),
                               np.asarray(prep.features.va["clip"]), atol=1e-5)
