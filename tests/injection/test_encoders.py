"""Encoders in every accepted format, and the round trip out and back in."""

import pytest
import torch
from safetensors.torch import save_file

from injection.encoders import EncoderError, clip_tensors, load_encoder
from injection.export import export, load_injected
from injection.model import Projector

FACTORY = "tests.injection.factories:tiny"


@pytest.fixture(scope="module")
def tiny_va(tmp_path_factory):
    from annotator.devtools.tiny_encoders import build_tiny_va_encoder

    return build_tiny_va_encoder(tmp_path_factory.mktemp("va") / "enc")


def features(encoder, clip):
    frames, audio = clip_tensors(str(clip), encoder.preprocess)
    with torch.no_grad():
        return encoder(torch.from_numpy(frames)[None], torch.from_numpy(audio)[None])


def round_trip(encoder, tmp_path, clip):
    torch.manual_seed(0)
    projector = Projector(encoder.branches, 384, 16, 32).eval()
    meta = {"branches": encoder.branches, "text_dim": 384, "dim": 16, "hidden": 32,
            "factory": FACTORY}
    target = export(encoder, projector, meta, torch.zeros(2, 384).numpy(), tmp_path / "out")
    again, projector_again, _ = load_injected(target)
    before, after = features(encoder, clip), features(again, clip)
    assert before.keys() == after.keys()
    for name in before:
        torch.testing.assert_close(before[name], after[name])
    with torch.no_grad():
        torch.testing.assert_close(projector.clip_embedding(before),
                                   projector_again.clip_embedding(after))
    return target


def test_transformers_video_audio_pair_round_trip(tiny_va, tmp_path, clips):
    from transformers import AutoModel, VideoMAEModel, Wav2Vec2Model

    encoder = load_encoder(tiny_va)
    assert encoder.branches == {"video": 32, "audio": 32}
    assert encoder.preprocess.num_frames == 4 and encoder.preprocess.size == 32
    target = round_trip(encoder, tmp_path, clips["real_astronaut"])
    assert isinstance(AutoModel.from_pretrained(target / "video"), VideoMAEModel)
    assert isinstance(AutoModel.from_pretrained(target / "audio"), Wav2Vec2Model)


def test_factory_state_dict_round_trip(tmp_path, clips):
    from tests.injection.factories import tiny

    weights = tmp_path / "w.safetensors"
    save_file(tiny().state_dict(), weights)
    encoder = load_encoder(weights, factory=FACTORY)
    assert encoder.branches == {"clip": 16}
    target = round_trip(encoder, tmp_path, clips["tone_440"])
    assert (target / "encoder.safetensors").is_file()


def test_torch_export_program_round_trip(tmp_path, clips):
    from tests.injection.factories import tiny

    example = (torch.zeros(1, 4, 3, 16, 16), torch.zeros(1, 16_000))
    program = torch.export.export(tiny().eval(), example)
    torch.export.save(program, str(tmp_path / "enc.pt2"))
    encoder = load_encoder(tmp_path / "enc.pt2")
    assert encoder.branches == {"clip": 16} and encoder.preprocess.size == 16
    assert (round_trip(encoder, tmp_path, clips["real_grace_hopper"]) / "encoder.pt2").is_file()


def test_pickles_load_only_as_tensors(tmp_path):
    from tests.injection.factories import tiny

    torch.save(tiny().state_dict(), tmp_path / "plain.pt")
    assert load_encoder(tmp_path / "plain.pt", factory=FACTORY).branches == {"clip": 16}
    torch.save(tiny(), tmp_path / "module.pt")  # a pickled module: needs code to load
    with pytest.raises(EncoderError, match="refused"):
        load_encoder(tmp_path / "module.pt", factory=FACTORY)


def test_bad_encoders_say_what_to_pass(tmp_path):
    save_file({"w": torch.zeros(1)}, tmp_path / "w.safetensors")
    with pytest.raises(EncoderError, match="--factory"):
        load_encoder(tmp_path / "w.safetensors")
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(tmp_path / "bert")
    with pytest.raises(EncoderError, match="factory"):
        load_encoder(tmp_path / "bert")
    with pytest.raises(EncoderError, match="not found"):
        load_encoder(tmp_path / "nothing")
