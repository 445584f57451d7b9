"""librosa's frame RMS and onset strength, in numpy: the same numbers (tests/annotator/
test_spectral.py checks them against librosa itself) without importing librosa, whose numba
start-up cost 2.0 s of the first clip in every fresh worker process (each run's, as the engine
actor takes over a warm one), where the whole clip's cues take 20 ms.

Defaults are librosa 0.11's: frames centred by zero padding, a periodic Hann window, a
128-band Slaney mel filter bank up to Nyquist, power in dB with an 80 dB floor below the
peak, and the positive first difference averaged over the bands.
"""

from __future__ import annotations

import functools

import numpy as np

ONSET_FFT = 2048
"""librosa.onset.onset_strength's n_fft."""
MEL_BANDS = 128
"""librosa.feature.melspectrogram's n_mels."""


def frames(wave: np.ndarray, size: int, hop: int) -> np.ndarray:
    """Frames of `size` samples `hop` apart (a read-only view), centred: the wave is padded
    with size // 2 zeros at each end."""
    return np.lib.stride_tricks.sliding_window_view(np.pad(wave, size // 2), size)[::hop]


def rms(wave: np.ndarray, size: int, hop: int) -> np.ndarray:
    """librosa.feature.rms(y=wave, frame_length=size, hop_length=hop, center=True)[0]."""
    return np.sqrt(np.mean(np.abs(frames(wave, size, hop)) ** 2, axis=1))


def onset_strength(wave: np.ndarray, sample_rate: int, hop: int) -> np.ndarray:
    """librosa.onset.onset_strength(y=wave, sr=sample_rate, hop_length=hop)."""
    windowed = hann(ONSET_FFT) * frames(wave, ONSET_FFT, hop)
    spectrum = np.fft.rfft(windowed, axis=1).astype(np.complex64)
    mel = mel_filters(sample_rate, ONSET_FFT) @ (np.abs(spectrum) ** 2).T  # (bands, frames)
    db = 10.0 * np.log10(np.maximum(mel, 1e-10))
    db = np.maximum(db, db.max() - 80.0)
    envelope = np.maximum(0.0, db[:, 1:] - db[:, :-1]).mean(axis=0)
    # librosa's alignment: one frame for the difference, half a window for the centring
    return np.pad(envelope, (1 + ONSET_FFT // (2 * hop), 0))[: db.shape[1]]


@functools.cache
def hann(size: int) -> np.ndarray:
    """scipy.signal.get_window("hann", size) (periodic), as scipy computes it (importing
    scipy.signal cost 0.15 s of a worker's first clip)."""
    return 0.5 + 0.5 * np.cos(np.linspace(-np.pi, np.pi, size + 1)[:-1])


@functools.cache
def mel_filters(sample_rate: int, n_fft: int) -> np.ndarray:
    """librosa.filters.mel(sr=sample_rate, n_fft=n_fft): MEL_BANDS triangles on the Slaney
    mel scale from 0 Hz to Nyquist, each normalised to unit area."""
    fft_hz = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    edges = _mel_to_hz(np.linspace(0.0, _hz_to_mel(sample_rate / 2), MEL_BANDS + 2))
    widths = np.diff(edges)
    ramps = np.subtract.outer(edges, fft_hz)
    rising, falling = -ramps[:-2] / widths[:-1, None], ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.astype(np.float32)


# the Slaney mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above
_HZ_PER_MEL, _LOG_FROM_HZ, _LOG_STEP = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
_LOG_FROM_MEL = _LOG_FROM_HZ / _HZ_PER_MEL


def _hz_to_mel(hz: float) -> float:
    if hz < _LOG_FROM_HZ:
        return hz / _HZ_PER_MEL
    return _LOG_FROM_MEL + np.log(hz / _LOG_FROM_HZ) / _LOG_STEP


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    return np.where(mels >= _LOG_FROM_MEL,
                    _LOG_FROM_HZ * np.exp(_LOG_STEP * (mels - _LOG_FROM_MEL)),
                    _HZ_PER_MEL * mels)
