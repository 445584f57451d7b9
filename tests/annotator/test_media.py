import numpy as np
import pytest

from annotator.core.media import SAMPLE_RATE, MediaError, decode, media_sha256, probe


def dominant_hz(wave: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / SAMPLE_RATE)[np.argmax(spectrum)])


def test_uniform_frames_fps_and_audio(clips):
    media = decode(str(clips["tone_220"]), num_frames=8)
    assert media.frames.shape == (8, 96, 96, 3) and media.frames.dtype == np.uint8
    assert media.duration_s == pytest.approx(1.0, abs=0.05)
    assert media.fps == pytest.approx(8 / media.duration_s)
    # the moving square: frames sampled uniformly show it at increasing x
    centres = [np.flatnonzero(f[40:44, :, :].mean(axis=(0, 2)) > 150).mean()
               for f in media.frames]
    assert centres == sorted(centres) and centres[0] < centres[-1]
    assert media.audio.dtype == np.float32
    assert len(media.audio) == pytest.approx(SAMPLE_RATE, abs=1100)  # one AAC frame
    assert dominant_hz(media.audio) == pytest.approx(220, rel=0.03)


def test_resolution_and_duration_caps(clips):
    media = decode(str(clips["real_astronaut"]), num_frames=4, max_side=64,
                   max_duration_s=0.5)
    assert max(media.frames.shape[1:3]) <= 64
    assert len(media.audio) <= 0.5 * SAMPLE_RATE


def test_real_speech_clip_has_face_pixels_and_voice(clips):
    media = decode(str(clips["real_grace_hopper"]))
    assert media.frames.std() > 20  # a photograph, not a flat frame
    rms = np.sqrt(np.mean(media.audio ** 2))
    assert rms > 0.005  # speech, not silence


def test_missing_streams_are_reported_not_fatal(clips):
    info = probe(str(clips["silent_video"]))
    assert info.has_video and not info.has_audio
    assert decode(str(clips["silent_video"])).audio is None
    audio_only = decode(str(clips["audio_only"]))
    assert audio_only.frames is None and dominant_hz(audio_only.audio) == pytest.approx(
        330, rel=0.03)


def test_separate_audio_file(clips):
    media = decode(str(clips["silent_video"]), str(clips["audio_only"]))
    assert media.frames is not None and media.audio is not None


@pytest.mark.parametrize("name,message", [("corrupt", "cannot open"), ("missing", "not found")])
def test_bad_files_raise_media_error(clips, name, message):
    with pytest.raises(MediaError, match=message):
        decode(str(clips[name]))


def test_media_hash_covers_both_files(clips):
    video_only = media_sha256(str(clips["silent_video"]))
    assert video_only != media_sha256(str(clips["silent_video"]), str(clips["audio_only"]))
    with pytest.raises(MediaError):
        media_sha256(str(clips["missing"]))


def test_a_raw_h264_stream_is_decoded_only_as_far_as_max_duration(tmp_path):
    """No timestamps (a raw .h264): frames are timed by count at the stream's rate, so a
    10-minute stream yields frames of its first seconds and is not decoded whole."""
    import av

    path = tmp_path / "raw.h264"
    with av.open(str(path), "w", format="h264") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for i in range(25 * 600):  # frame i is grey level i // 25: its second, 0..255
            grey = np.full((32, 32, 3), min(i // 25, 255), np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(grey, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    assert probe(str(path)).duration_s == 0  # the stream states no duration
    media = decode(str(path), max_duration_s=2.0, num_frames=4)
    seconds = media.frames.mean(axis=(1, 2, 3))
    assert media.duration_s == 2.0 and np.all(seconds < 2.5), seconds
