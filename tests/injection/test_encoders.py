"""Encoders in every accepted format, and the round trip out and back in."""

import pytest
import torch
from safetensors.torch import save_file

from injection.encoders.va import EncoderError, load_encoder
from injection.training.export import export, load_injected
from injection.training.model import Projector
from tests.injection.conftest import clip_features

FACTORY = "tests.injection.factories:tiny"


@pytest.fixture(scope="module")
def tiny_va(tmp_path_factory):
    from tests.builders.tiny_encoders import build_tiny_va_encoder

    return build_tiny_va_encoder(tmp_path_factory.mktemp("va") / "enc")


def features(encoder, clip):
    return clip_features(encoder, clip)


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


class _Payload:
    """Unpickling this creates a folder: proof that code from the file ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.mkdir, (self.marker,)


def _planted(tmp_path, kind: str) -> tuple:
    """A valid .pt2 whose sample inputs, or one weight marked use_pickle, carry a payload."""
    import io
    import json
    import zipfile

    from tests.injection.factories import tiny

    example = (torch.zeros(1, 4, 3, 16, 16), torch.zeros(1, 8000))
    clean = tmp_path / "clean.pt2"
    torch.export.save(torch.export.export(tiny().eval(), example), str(clean))
    marker = tmp_path / f"ran-{kind}"
    evil = io.BytesIO()
    torch.save((_Payload(marker),) if kind == "sample_inputs" else _Payload(marker), evil)
    planted = tmp_path / f"{kind}.pt2"
    with zipfile.ZipFile(clean) as src, zipfile.ZipFile(planted, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if kind == "sample_inputs" and "sample_inputs/" in info.filename:
                data = evil.getvalue()
            if kind == "use_pickle" and info.filename.endswith("model_weights_config.json"):
                config = json.loads(data)
                first = next(iter(config["config"].values()))
                first["use_pickle"] = True
                target = first["path_name"]
                data = json.dumps(config).encode()
            dst.writestr(info, data)
    if kind == "use_pickle":  # second pass: the marked weight's bytes become the payload
        rewritten = tmp_path / "use_pickle2.pt2"
        with zipfile.ZipFile(planted) as src, zipfile.ZipFile(rewritten, "w") as dst:
            for info in src.infolist():
                data = src.read(info.filename)
                if info.filename.endswith(f"data/weights/{target}"):
                    data = evil.getvalue()
                dst.writestr(info, data)
        planted = rewritten
    return planted, marker


@pytest.mark.parametrize("kind", ["sample_inputs", "use_pickle"])
def test_pickled_payloads_in_a_pt2_never_run(tmp_path, kind):
    planted, marker = _planted(tmp_path, kind)
    with pytest.raises(EncoderError, match="--trust-remote-code"):
        load_encoder(planted)
    assert not marker.exists(), "the payload ran"
    with pytest.raises(Exception):  # noqa: B017 - trusted: torch unpickles (and it runs)
        load_encoder(planted, trust_remote_code=True)
    assert marker.exists()  # proves the planted payload is live, so the refusal matters


def test_a_bin_only_folder_exports_its_weights_and_names_them_in_its_id(tmp_path, clips):
    """`pytorch_model.bin` without safetensors: its bytes are in the encoder id (so caches
    follow them) and the export carries them."""
    from transformers import AutoModel

    from tests.builders.tiny_encoders import build_tiny_architecture

    folder = build_tiny_architecture("wav2vec2_layer_norm", tmp_path / "enc")
    model = AutoModel.from_pretrained(folder)
    for f in folder.glob("*.safetensors"):
        f.unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")  # the older format
    encoder = load_encoder(folder)
    target = round_trip(encoder, tmp_path, clips["real_astronaut"])
    assert (target / "pytorch_model.bin").is_file()
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    assert load_encoder(folder).id != encoder.id


def _damaged(tiny_va, tmp_path, how: str):
    """A copy of the tiny encoder's audio branch, damaged one way."""
    import json
    import pickle
    import shutil
    import struct

    folder = tmp_path / how
    shutil.copytree(tiny_va / "audio", folder)
    weights = folder / "model.safetensors"
    if how == "code_pickle":  # weights as a pickle whose loading would run code
        weights.unlink()
        (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(tmp_path / "ran")))
    elif how == "truncated":
        weights.write_bytes(weights.read_bytes()[:100])
    elif how == "huge_header":
        weights.write_bytes(struct.pack("<Q", 2**40) + b"{" * 64)
    elif how == "unknown_type":
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "model_type": "no-such"}))
    return folder


@pytest.mark.parametrize("how", ["code_pickle", "truncated", "huge_header", "unknown_type"])
def test_encoder_folders_that_are_not_encoders_are_one_line_each(tiny_va, tmp_path, how):
    folder = _damaged(tiny_va, tmp_path, how)
    with pytest.raises(EncoderError) as caught:
        load_encoder(folder)
    message = str(caught.value)
    assert str(folder) in message and "\n" not in message, message
    assert not (tmp_path / "ran").exists(), "the pickle's code ran"
    if how == "unknown_type":
        assert "supported: video:" in message and "--factory" in message
    else:
        assert "weights cannot be loaded" in message and "model.safetensors" in message
