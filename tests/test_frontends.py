"""LogMelSpectrogram against a float64 numpy implementation of torchaudio's definition."""

import math

import keras
import numpy as np
import pytest

from keras_clmr.layers.frontends import LogMelSpectrogram


def reference_filterbank(n_freqs, n_mels, sample_rate):
    """torchaudio melscale_fbanks(norm=None, mel_scale="htk"), written filter by filter."""

    def to_mel(f):
        return 2595.0 * math.log10(1.0 + f / 700.0)

    def to_hz(m):
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    freqs = np.linspace(0.0, sample_rate // 2, n_freqs)
    top = to_mel(sample_rate // 2)
    edges = [to_hz(top * i / (n_mels + 1)) for i in range(n_mels + 2)]
    fb = np.zeros((n_freqs, n_mels))
    for m in range(n_mels):
        lower, centre, upper = edges[m], edges[m + 1], edges[m + 2]
        for k, f in enumerate(freqs):
            if lower < f <= centre:
                fb[k, m] = (f - lower) / (centre - lower)
            elif centre < f < upper:
                fb[k, m] = (upper - f) / (upper - centre)
    return fb


def reference_log_mel(audio, n_fft=256, hop=128, n_mels=128, sample_rate=16000):
    audio = np.asarray(audio, np.float64)
    pad = n_fft // 2
    x = np.pad(audio, ((0, 0), (pad, pad)), mode="reflect")
    n_frames = 1 + (x.shape[1] - n_fft) // hop
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    frames = np.stack([x[:, t * hop : t * hop + n_fft] for t in range(n_frames)], axis=1) * window
    power = np.abs(np.fft.rfft(frames, axis=-1)) ** 2
    mel = power @ reference_filterbank(n_fft // 2 + 1, n_mels, sample_rate)
    return np.transpose(10.0 * np.log10(np.maximum(mel, 1e-10)), (0, 2, 1))


@pytest.mark.multibackend
def test_random_audio_matches_reference_full_size():
    audio = np.random.default_rng(0).uniform(-1, 1, (2, 59049)).astype("float32")
    out = keras.ops.convert_to_numpy(LogMelSpectrogram()(audio))
    assert out.shape == (2, 128, 462)
    ref = reference_log_mel(audio)
    assert np.abs(out - ref).max() <= 1e-3
    # The 16 kHz filterbank on 129 FFT bins has empty low triangles: torchaudio gives -100 dB there.
    assert np.all(ref[:, 0] == -100.0) and np.abs(out[:, 0] + 100.0).max() < 1e-4


@pytest.mark.multibackend
def test_tone_lands_in_the_right_mel_bin():
    sr, n_fft, k = 22050, 256, 20  # a tone exactly on FFT bin 20 (1722.7 Hz at 22.05 kHz)
    t = np.arange(59049) / sr
    tone = (0.5 * np.sin(2 * np.pi * k * sr / n_fft * t)).astype("float32")[None]
    out = keras.ops.convert_to_numpy(LogMelSpectrogram()(tone))[0]
    ref = reference_log_mel(tone)[0]
    # The 16 kHz filterbank reads bin 20 as 20 * 8000 / 128 = 1250 Hz; the HTK triangles
    # are centred at mel i * mel(8000) / 129 (i = 1..128), so the peak is the nearest one.
    mel_1250 = 2595.0 * math.log10(1 + 1250 / 700)
    expected_bin = round(mel_1250 / (2595.0 * math.log10(1 + 8000 / 700) / 129)) - 1
    assert np.argmax(ref.mean(axis=1)) == expected_bin
    assert np.argmax(out.mean(axis=1)) == expected_bin
    # float32 arithmetic leaks ~1e-7 of the peak amplitude into every bin, so bins more than
    # ~60 dB under the peak are only float32-accurate; everything within 60 dB is within 1e-3 dB.
    near = ref >= ref.max() - 60.0
    assert near.sum() > 500
    assert np.abs(out - ref)[near].max() <= 1e-3
    assert np.abs(out - ref).max() <= 0.5


@pytest.mark.skipif(
    keras.backend.backend() == "jax", reason="JAX runs float32 unless x64 is enabled"
)
def test_float64_computation_is_exact_to_the_definition():
    sr = 22050
    t = np.arange(4000) / sr
    rng = np.random.default_rng(1)
    audio = np.stack([np.sin(2 * np.pi * 1000.0 * t), rng.standard_normal(4000)])
    out = keras.ops.convert_to_numpy(LogMelSpectrogram(dtype="float64")(audio))
    assert out.shape == (2, 128, 1 + 4000 // 128)
    np.testing.assert_allclose(out, reference_log_mel(audio), atol=1e-7, rtol=0)


def test_other_parameters_and_filterbank_rate():
    layer = LogMelSpectrogram(n_fft=512, hop_length=160, n_mels=40, sample_rate=22050)
    audio = np.random.default_rng(2).standard_normal((1, 3000)).astype("float32")
    out = keras.ops.convert_to_numpy(layer(audio))
    assert out.shape == (1, 40, 1 + 3000 // 160) == layer.compute_output_shape((1, 3000))
    ref = reference_log_mel(audio, n_fft=512, hop=160, n_mels=40, sample_rate=22050)
    assert np.abs(out - ref).max() <= 1e-3


def test_bad_input_and_config():
    layer = LogMelSpectrogram()
    with pytest.raises(ValueError, match="mono audio"):
        layer(np.zeros((1, 1000, 1), "float32"))
    with pytest.raises(ValueError, match="Reflect padding"):
        layer(np.zeros((1, 100), "float32"))
    with pytest.raises(ValueError, match="f_min"):
        LogMelSpectrogram(f_min=9000.0)


def test_config_round_trip():
    layer = LogMelSpectrogram(n_fft=128, hop_length=64, n_mels=32, sample_rate=22050, f_min=30.0)
    clone = LogMelSpectrogram.from_config(layer.get_config())
    audio = np.random.default_rng(3).standard_normal((1, 1000)).astype("float32")
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(layer(audio)), keras.ops.convert_to_numpy(clone(audio))
    )
    assert clone.get_config() == layer.get_config()
