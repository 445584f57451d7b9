"""The cues' RMS and onset strength against librosa, the reference they reimplement: real read
speech and synthetic edge cases (noise, silence, a tone, clips shorter than the FFT)."""

import warnings

import numpy as np
import pytest

from annotator.core import spectral
from annotator.core.cues import FRAME, HOP, pick_onsets
from annotator.core.media import SAMPLE_RATE
from annotator.demo import read_wav, speech_files
from tests.builders.imports import imported_after


def _waves() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    waves = {f"speech{i}": read_wav(path) for i, path in enumerate(speech_files()[:6])}
    waves.update(
        noise=rng.normal(0, 0.1, 3 * SAMPLE_RATE),
        silence=np.zeros(SAMPLE_RATE),
        tone=0.3 * np.sin(np.arange(40_000) * 2 * np.pi * 220 / SAMPLE_RATE),
        shorter_than_the_fft=rng.normal(0, 1e-4, 1500),
        one_hop=np.full(HOP, 0.2))
    return {name: np.asarray(wave, np.float32) for name, wave in waves.items()}


WAVES = _waves()


@pytest.mark.parametrize("name", WAVES)
def test_rms_and_onset_strength_are_librosas(name):
    librosa = pytest.importorskip("librosa")
    wave = WAVES[name]
    expected = librosa.feature.rms(y=wave, frame_length=FRAME, hop_length=HOP, center=True)[0]
    np.testing.assert_allclose(spectral.rms(wave, FRAME, HOP), expected, rtol=1e-6, atol=1e-9)
    with warnings.catch_warnings():  # librosa warns on clips shorter than its FFT
        warnings.simplefilter("ignore", UserWarning)
        envelope = librosa.onset.onset_strength(y=wave, sr=SAMPLE_RATE, hop_length=HOP)
    ours = spectral.onset_strength(wave, SAMPLE_RATE, HOP)
    assert ours.shape == envelope.shape and ours.dtype == envelope.dtype
    # float32 throughout: differences of a few units in the last place of values up to ~20
    np.testing.assert_allclose(ours, envelope, atol=2e-5)
    assert np.array_equal(pick_onsets(ours, SAMPLE_RATE), pick_onsets(envelope, SAMPLE_RATE))


def test_the_mel_filter_bank_is_librosas():
    librosa = pytest.importorskip("librosa")
    expected = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=spectral.ONSET_FFT)
    np.testing.assert_allclose(spectral.mel_filters(SAMPLE_RATE, spectral.ONSET_FFT), expected,
                               rtol=1e-5, atol=1e-9)


def test_the_window_is_scipys():
    from scipy.signal import get_window

    assert np.array_equal(spectral.hann(spectral.ONSET_FFT),
                          get_window("hann", spectral.ONSET_FFT, fftbins=True))


def test_measuring_a_clips_voice_does_not_import_librosa():
    """librosa's numba start-up cost 2 s of every fresh worker's first clip."""
    code = ("import numpy as np\n"
            "from annotator.core.cues import audio_cues\n"
            "audio_cues(np.random.default_rng(0).normal(0, 0.1, 32000).astype(np.float32))")
    assert imported_after(code, ("librosa", "numba")) == []
