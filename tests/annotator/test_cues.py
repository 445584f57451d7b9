"""Cue values against known properties of synthetic and real media (tolerances stated)."""

import numpy as np
import pytest

from annotator.core import cues
from annotator.core.cues import audio_cues, video_cues
from annotator.demo import moving_portrait, portraits, read_wav, speech_files
from annotator.core.media import SAMPLE_RATE, decode
from tests.conftest import pattern_frames, tone


def test_tone_pitch_within_3_percent_through_a_real_aac_clip(clips):
    cues = audio_cues(decode(str(clips["tone_220"])).audio)
    assert cues["f0_median_hz"] == pytest.approx(220, rel=0.03)
    assert cues["voiced_fraction"] > 0.8
    assert cues["f0_range_semitones"] < 0.5  # a steady tone does not move


def test_octave_apart_tones_are_an_octave_apart():
    low, high = audio_cues(tone(150, 1.0))["f0_median_hz"], audio_cues(tone(300, 1.0))[
        "f0_median_hz"]
    assert high / low == pytest.approx(2.0, rel=0.03)


def test_silence_has_no_voice_no_activity():
    cues = audio_cues(np.zeros(2 * SAMPLE_RATE, np.float32))
    assert cues["voiced_fraction"] == 0 and cues["active_fraction"] == 0
    assert cues["f0_median_hz"] is None and cues["loudness_db"] is None


def test_loudness_tracks_amplitude_and_pauses_are_found():
    quiet, loud = audio_cues(tone(200, 1.0, 0.05)), audio_cues(tone(200, 1.0, 0.4))
    assert loud["loudness_db"] - quiet["loudness_db"] == pytest.approx(20 * np.log10(8), abs=0.5)
    gap = np.concatenate([tone(200, 0.6), np.zeros(SAMPLE_RATE // 2, np.float32),
                          tone(200, 0.6)])
    cues = audio_cues(gap)
    assert cues["pause_count"] == 1
    assert cues["pause_total_s"] == pytest.approx(0.5, abs=0.1)


def test_real_read_speech_looks_like_speech():
    wave = read_wav(speech_files()[0])  # LibriVox read speech
    cues = audio_cues(wave)
    assert 0.3 < cues["voiced_fraction"] < 0.95  # consonants and gaps are unvoiced
    assert 60 < cues["f0_median_hz"] < 300  # a human speaking voice
    assert cues["f0_range_semitones"] > 2  # intonation moves
    assert cues["onset_rate_per_s"] > 1  # syllables


@pytest.mark.parametrize("name", ["astronaut", "grace_hopper"])
def test_real_portrait_clip_has_a_face_in_most_frames(name):
    cues = video_cues(moving_portrait(portraits()[name], 8, side=224))
    assert cues["face_frames_fraction"] >= 0.75
    assert 0.01 < cues["face_area_fraction"] < 0.6
    assert cues["motion_energy"] > 0.01  # the pan and zoom move


def test_blank_clip_has_no_face_and_no_motion():
    cues = video_cues(np.full((8, 112, 112, 3), 128, np.uint8))
    assert cues["face_frames_fraction"] == 0 and cues["frames_without_face"] == list(range(8))
    assert cues["motion_energy"] == 0 and cues["brightness"] == pytest.approx(128 / 255, abs=0.01)


def test_moving_pattern_has_motion_but_no_face():
    cues = video_cues(pattern_frames(8))
    assert cues["motion_energy"] > 0.005 and cues["max_faces"] == 0


@pytest.mark.parametrize("name", ["astronaut", "grace_hopper"])
def test_followed_faces_match_a_full_search_of_every_frame(name, monkeypatch):
    import annotator.core.cues as cues_module

    frames = moving_portrait(portraits()[name], 8, side=224)
    followed = video_cues(frames)
    monkeypatch.setattr(cues_module, "FULL_SEARCH_EVERY", 1)  # version 2: every frame searched
    searched = video_cues(frames)
    assert followed["frames_without_face"] == searched["frames_without_face"]
    assert followed["max_faces"] == searched["max_faces"]
    # the same face, boxed by a search of a window instead of the frame: a few pixels apart
    assert followed["face_centre_x"] == pytest.approx(searched["face_centre_x"], abs=0.03)
    assert followed["face_centre_y"] == pytest.approx(searched["face_centre_y"], abs=0.03)
    assert followed["face_area_fraction"] == pytest.approx(searched["face_area_fraction"],
                                                           rel=0.2)


def test_a_face_that_leaves_is_not_followed_into_empty_frames():
    frames = moving_portrait(portraits()["astronaut"], 8, side=224)
    frames[3:] = 128  # the face is gone from frame 3 on, between two full searches
    cues = video_cues(frames)
    assert cues["frames_without_face"] == [3, 4, 5, 6, 7]


def test_cue_names_are_declared_once_and_everything_follows_them():
    """What the measurements return, the Parquet type, the synthetic runs' cues and the
    audit's rules all use the declaration in cues.py (a cue added or renamed in one place
    only fails here)."""
    import re
    from pathlib import Path

    import pyarrow as pa

    from annotator.core.rows import ROW_SCHEMA

    measured = cues.measure(np.zeros((2, 64, 64, 3), np.uint8), tone(220, 1.0))
    for stream, declared in cues.STREAMS.items():
        assert list(measured[stream]) == [c.name for c in declared], stream
    assert list(cues.audio_cues(np.zeros(10, np.float32))) == [c.name for c in cues.AUDIO]
    assert pa.array([cues.typical(), measured], cues.arrow_type()).to_pylist()[1] == measured
    assert ROW_SCHEMA.field("cues").type == cues.arrow_type()
    rules = (Path(cues.__file__).parents[1] / "audit" / "rules.toml").read_text()
    named = set(re.findall(r"cues\.(audio|video)\.(\w+)", rules))
    assert named and all(n in {c.name for c in cues.STREAMS[s]} for s, n in named), named
