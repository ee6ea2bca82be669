"""keras_clmr.audio: decoding real files of each format, resampling, downmix, typed errors."""

import os

import numpy as np
import pytest
import soundfile

from keras_clmr import audio


def _sine(freq, seconds, rate, channels=1, amplitude=0.5):
    t = np.arange(int(seconds * rate)) / rate
    wave = amplitude * np.sin(2 * np.pi * freq * t)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


def _peak_hz(x, rate):
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.argmax(spectrum) * rate / len(x)


def test_pcm16_wav_at_target_rate_is_exact(tmp_path):
    pcm = np.random.default_rng(0).integers(-32768, 32767, 4000, dtype=np.int16)
    path = tmp_path / "a.wav"
    soundfile.write(path, pcm, 22050, subtype="PCM_16")
    out = audio.load(path)
    assert out.dtype == np.float32 and out.shape == (4000,)
    np.testing.assert_array_equal(out, pcm.astype(np.float32) / 32768)
    np.testing.assert_array_equal(audio.to_int16(out), pcm)


def test_int16_round_trip_is_bit_exact_for_every_value():
    every = np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)
    np.testing.assert_array_equal(audio.to_int16(audio.from_int16(every)), every)
    assert audio.to_int16(np.array([1.0, -1.0, 2.0]))[0] == 32767  # saturates, never wraps
    assert audio.to_int16(np.array([-1.5]))[0] == -32768


@pytest.mark.parametrize(
    "ext,fmt,subtype,rate",
    [
        ("flac", "FLAC", "PCM_16", 44100),
        ("ogg", "OGG", "VORBIS", 32000),
        ("mp3", "MP3", "MPEG_LAYER_III", 16000),
        ("opus", "OGG", "OPUS", 48000),
    ],
)
def test_compressed_stereo_files_decode_to_mono_22050(tmp_path, ext, fmt, subtype, rate):
    path = tmp_path / f"tone.{ext}"
    soundfile.write(path, _sine(440.0, 1.0, rate, channels=2), rate, format=fmt, subtype=subtype)
    out = audio.load(path)
    assert out.ndim == 1 and out.dtype == np.float32
    # Codecs add/trim a few ms of padding; the length is the duration at 22050 Hz within 60 ms.
    assert abs(len(out) - 22050) < 0.06 * 22050
    assert abs(_peak_hz(out, 22050) - 440.0) < 3.0
    rms = np.sqrt(np.mean(out[2000:-2000] ** 2))
    assert abs(rms - 0.5 / np.sqrt(2)) < 0.03
    stereo = audio.load(path, mono=False, sample_rate=None)
    assert stereo.ndim == 2 and stereo.shape[1] == 2


def test_downmix_averages_channels(tmp_path):
    left = np.full(1000, 0.25)
    right = np.full(1000, -0.75)
    path = tmp_path / "s.wav"
    soundfile.write(path, np.stack([left, right], 1), 22050, subtype="FLOAT")
    np.testing.assert_allclose(audio.load(path), -0.25, atol=1e-7)


def test_resampling_preserves_frequency(tmp_path):
    path = tmp_path / "r.wav"
    soundfile.write(path, _sine(1000.0, 0.5, 48000), 48000, subtype="FLOAT")
    out = audio.load(path)
    assert len(out) == 11025
    reference = 0.5 * np.sin(2 * np.pi * 1000.0 * np.arange(11025) / 22050)
    # soxr's filter delay is compensated; away from the edges the tone matches the ideal one.
    np.testing.assert_allclose(out[500:-500], reference[500:-500], atol=2e-3)


def test_missing_file(tmp_path):
    with pytest.raises(audio.AudioFileNotFoundError, match="nope.wav"):
        audio.load(tmp_path / "nope.wav")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.mp3"
    path.write_bytes(b"")
    with pytest.raises(audio.EmptyAudioError, match="empty.mp3.*empty"):
        audio.load(path)


def test_zero_frame_file(tmp_path):
    path = tmp_path / "zero.wav"
    soundfile.write(path, np.zeros(0), 22050)
    with pytest.raises(audio.EmptyAudioError, match="zero samples"):
        audio.load(path)


@pytest.mark.parametrize("name", ["junk.mp3", "junk.wav", "junk.flac"])
def test_corrupt_file(tmp_path, monkeypatch, name):
    monkeypatch.setattr(audio.shutil, "which", lambda _: None)
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(1).bytes(5000))
    with pytest.raises(audio.CorruptAudioError, match=name):
        audio.load(path)


def test_unsupported_format_without_ffmpeg(tmp_path, monkeypatch):
    monkeypatch.setattr(audio.shutil, "which", lambda _: None)
    path = tmp_path / "song.m4a"
    path.write_bytes(b"\x00\x00\x00\x20ftypM4A " + bytes(200))
    with pytest.raises(audio.UnsupportedFormatError, match="song.m4a.*ffmpeg"):
        audio.load(path)


def test_non_finite_samples(tmp_path):
    data = np.zeros(100, np.float32)
    data[10] = np.nan
    path = tmp_path / "nan.wav"
    soundfile.write(path, data, 22050, subtype="FLOAT")
    with pytest.raises(audio.CorruptAudioError, match="non-finite"):
        audio.load(path)


def test_errors_are_audio_errors_and_name_the_file(tmp_path):
    with pytest.raises(audio.AudioError) as info:
        audio.load(tmp_path / "x.flac")
    assert info.value.source.endswith("x.flac") and info.value.reason


def test_load_many_skips_bad_and_short_files(tmp_path):
    good = tmp_path / "good.wav"
    short = tmp_path / "short.wav"
    empty = tmp_path / "empty.wav"
    soundfile.write(good, np.zeros(2000), 22050)
    soundfile.write(short, np.zeros(10), 22050)
    empty.write_bytes(b"")
    clips, skipped = audio.load_many([good, short, empty], min_samples=100)
    assert len(clips) == 1
    assert [os.path.basename(p) for p, _ in skipped] == ["short.wav", "empty.wav"]


def test_duration_from_header(tmp_path):
    path = tmp_path / "d.flac"
    soundfile.write(path, np.zeros(8000), 16000, format="FLAC")
    assert audio.duration(path) == pytest.approx(0.5)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"garbage")
    assert audio.duration(bad) is None


FAKE_FFMPEG = """#!{python}
import sys
import numpy as np

args = sys.argv[1:]
source = args[args.index("-i") + 1]
if "bad" in source:
    sys.stderr.write("Invalid data found when processing input\\n")
    sys.exit(1)
rate, channels = int(args[args.index("-ar") + 1]), int(args[args.index("-ac") + 1])
frames = np.zeros((rate // 10, channels), np.float32)
frames[:, 0] = 0.25
if channels > 1:
    frames[:, 1] = -0.75
sys.stdout.buffer.write(frames.tobytes())
"""

FAKE_FFPROBE = """#!{python}
import sys
print("2" if "stream=channels" in sys.argv else "44100")
"""


@pytest.fixture
def fake_ffmpeg(tmp_path, monkeypatch):
    """ffmpeg/ffprobe stand-ins on PATH that emit a known signal, to test the fallback path."""
    import sys

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("ffmpeg", FAKE_FFMPEG), ("ffprobe", FAKE_FFPROBE)):
        (bin_dir / name).write_text(text.replace("{python}", sys.executable))
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return bin_dir


def test_ffmpeg_fallback_for_formats_soundfile_cannot_read(tmp_path, fake_ffmpeg):
    path = tmp_path / "song.m4a"
    path.write_bytes(b"\x00\x00\x00\x20ftypM4A " + bytes(200))
    mono = audio.load(path)  # ffmpeg decodes at 22050 Hz and downmixes (-ac 1)
    assert mono.shape == (2205,) and np.all(mono == 0.25)
    stereo = audio.load(path, mono=False, sample_rate=None)  # native rate/channels from ffprobe
    assert stereo.shape == (4410, 2)
    np.testing.assert_array_equal(stereo[0], [0.25, -0.75])


def test_ffmpeg_failure_is_a_corrupt_audio_error(tmp_path, fake_ffmpeg):
    path = tmp_path / "bad.m4a"
    path.write_bytes(b"not audio at all" * 10)
    with pytest.raises(
        audio.CorruptAudioError, match="bad.m4a.*ffmpeg could not decode it: Invalid data"
    ):
        audio.load(path)
