"""musicnn presets window as musicnn 0.1.0's extractor: one log-mel of the whole file, patches
of 187 frames every 187 frames (its ``batch_data``), no clipping of decoded audio, and the same
windows when the file is streamed in blocks.

The reference below is an independent numpy formulation of musicnn's extractor (librosa 0.6/0.7
``melspectrogram`` with numpy 1's arithmetic), run on real music (tests/data/README.md).
"""

import math
import os
import tracemalloc

import keras
import numpy as np
import pytest
import soundfile

import keras_clmr
from keras_clmr.audio import AudioFileNotFoundError
from keras_clmr.inference.windows import ClipTooShortError, WindowStream, musicnn_patching
from keras_clmr.models.musicnn import musicnn_tagger

MUSIC = os.path.join(os.path.dirname(__file__), "data", "awakening_16k.ogg")
SR, N_FFT, HOP, N_MELS = 16000, 512, 256, 96  # musicnn's configuration.py
# musicnn's extractor: n_frames = librosa.time_to_frames(3, sr, n_fft, hop) + 1
N_FRAMES = math.floor((3 * SR - N_FFT // 2) / HOP) + 1


def _slaney_mel(sr, n_fft, n_mels):
    """librosa.filters.mel(sr, n_fft, n_mels) (Slaney scale, area norm), [n_mels, 1 + n_fft/2]."""

    def hz_to_mel(f):
        f = np.asarray(f, np.float64)
        linear = f / (200.0 / 3)
        log = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
        return np.where(f >= 1000.0, log, linear)

    def mel_to_hz(m):
        m = np.asarray(m, np.float64)
        return np.where(m >= 15.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (m - 15.0)), m * 200 / 3)

    fft_freqs = np.linspace(0, sr / 2, 1 + n_fft // 2)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sr / 2), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    weights = np.zeros((n_mels, len(fft_freqs)))
    for i in range(n_mels):
        weights[i] = np.maximum(0, np.minimum(-ramps[i] / fdiff[i], ramps[i + 2] / fdiff[i + 1]))
    return weights * (2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels]))[:, None]


def musicnn_extractor_patches(audio, overlap=N_FRAMES):
    """musicnn's ``batch_data`` on 16 kHz audio: (patches [n, 187, 96], patch start frames)."""
    y = np.pad(np.asarray(audio, np.float32), N_FFT // 2, mode="reflect")  # center=True
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)  # periodic Hann
    count = 1 + (len(y) - N_FFT) // HOP
    frames = np.stack([y[t * HOP : t * HOP + N_FFT] for t in range(count)], axis=1)
    stft = np.fft.rfft(window[:, None] * frames, axis=0).astype(np.complex64)
    power = np.abs(stft) ** 2
    mel = np.dot(_slaney_mel(SR, N_FFT, N_MELS).astype(np.float32), power)
    audio_rep = mel.T.astype(np.float16)
    # np.log10(10000 * audio_rep + 1) as numpy 1 computes it: float16 * 10000 -> float32.
    audio_rep = np.log10(np.float32(10000) * audio_rep.astype(np.float32) + np.float32(1))
    starts = list(range(0, audio_rep.shape[0] - N_FRAMES + 1, overlap))
    patches = np.stack([audio_rep[t : t + N_FRAMES] for t in starts])
    return patches, np.asarray(starts)


def network_on_patches(tagger, patches):
    """The Keras tagger's network on log-mel patches (no audio frontend)."""
    embedding = tagger.backbone.logmel_embedding(keras.ops.convert_to_tensor(patches), False)
    probabilities = tagger.activation(tagger.head(embedding, training=False))
    return keras.ops.convert_to_numpy(probabilities), keras.ops.convert_to_numpy(embedding)


@pytest.fixture(scope="module")
def music():
    audio, rate = soundfile.read(MUSIC, dtype="float32")
    assert rate == SR and audio.ndim == 1
    return audio


@pytest.fixture(scope="module")
def tagger():
    """Random weights (the network is checked against the wheel in test_musicnn); its BatchNorm
    statistics are set from the music so the outputs are not saturated."""
    keras.utils.set_random_seed(7)
    model = musicnn_tagger("musicnn", tags=[f"t{i}" for i in range(50)])
    patches, _ = musicnn_extractor_patches(soundfile.read(MUSIC, dtype="float32")[0])
    model.backbone.bn_input.moving_mean.assign(np.full(1, patches.mean(), np.float32))
    model.backbone.bn_input.moving_variance.assign(np.full(1, patches.var(), np.float32))
    return model


def _patches_of(source, model, block_seconds=30.0, hop=None, short="pad"):
    patching = musicnn_patching(model)
    stream = WindowStream(
        source,
        SR,
        model.input_samples,
        patching.hop_samples(hop),
        short,
        max(model.input_samples, int(block_seconds * SR)),
        patching=patching,
    )
    starts, patches = zip(*[(start, patch.copy()) for start, patch in stream])
    return np.stack(patches), np.asarray(starts), stream


def test_patches_are_the_whole_file_logmel_of_musicnn(music, tagger):
    reference, frames = musicnn_extractor_patches(music)
    patches, starts, stream = _patches_of(MUSIC, tagger)
    assert len(reference) == 6  # 19.7 s: 1232 frames -> 6 whole patches, the rest dropped
    np.testing.assert_array_equal(starts, frames * HOP)
    # float32 matmuls in another order may round the float16 mel power one step apart.
    difference = np.abs(patches - reference)
    assert difference.max() < 2e-3 and (difference > 1e-5).mean() < 1e-3
    assert stream.total == len(music) and not stream.padded


def test_tag_equals_the_extractor_formulation(music, tagger, tmp_path):
    excerpt = music[: 8 * SR]  # two patches (the network is slow on 2 cores)
    path = str(tmp_path / "excerpt.wav")
    soundfile.write(path, excerpt, SR, subtype="FLOAT")
    reference, frames = musicnn_extractor_patches(excerpt)
    expected, _ = network_on_patches(tagger, reference)
    assert expected.std() > 0.05  # not saturated: the comparison can fail
    result = keras_clmr.tag(path, model=tagger, progress=False)
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-4)
    np.testing.assert_allclose(result.clip, expected.mean(axis=0), atol=1e-4)
    np.testing.assert_allclose(result.times, frames * HOP / SR)
    assert result.window_seconds == (N_FRAMES - 1) * HOP / SR  # first to last frame centre
    assert result.hop_seconds == N_FRAMES * HOP / SR


def test_embed_equals_the_extractor_formulation(music, tagger):
    excerpt = music[SR : 9 * SR]
    reference, frames = musicnn_extractor_patches(excerpt)
    _, expected = network_on_patches(tagger, reference)
    embedded = keras_clmr.embed(excerpt, model=tagger.backbone, progress=False)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(embedded.embeddings, expected, atol=1e-4 * scale)
    np.testing.assert_allclose(embedded.times, frames * HOP / SR)


@pytest.mark.parametrize("samples", [47616, 47871, 47872 + 47615, 47872 * 2 + 47616])
def test_window_counts_at_patch_edges(music, tagger, samples):
    audio = np.resize(music, samples)
    reference, frames = musicnn_extractor_patches(audio)
    _, starts, _ = _patches_of(audio, tagger)
    assert len(starts) == len(reference)
    np.testing.assert_array_equal(starts, frames * HOP)


def test_hop_is_in_whole_frames_as_input_overlap(music, tagger):
    # musicnn's extractor(input_overlap=1): librosa.time_to_frames(1) = 61 frames between starts.
    overlap = math.floor((1 * SR - N_FFT // 2) / HOP)
    excerpt = music[:72000]  # 282 frames: patches at frames 0 and 61
    reference, frames = musicnn_extractor_patches(excerpt, overlap=overlap)
    assert len(frames) == 2
    result = keras_clmr.tag(excerpt, model=tagger, hop=overlap * HOP / SR, progress=False)
    np.testing.assert_allclose(result.times, frames * HOP / SR)
    np.testing.assert_allclose(
        result.probabilities, network_on_patches(tagger, reference)[0], atol=1e-4
    )
    with pytest.raises(ValueError, match="at least one mel frame"):
        keras_clmr.tag(music, model=tagger, hop=0.005, progress=False)


def test_streamed_blocks_give_the_whole_file_windows(music, tagger, tmp_path):
    long = np.concatenate([music, 0.5 * music[::-1], music])  # ~59 s
    path = str(tmp_path / "long.wav")
    soundfile.write(path, long, SR, subtype="FLOAT")
    whole, whole_starts, _ = _patches_of(long, tagger, block_seconds=120.0)
    streamed, streamed_starts, _ = _patches_of(path, tagger, block_seconds=3.0)
    np.testing.assert_array_equal(streamed_starts, whole_starts)
    np.testing.assert_allclose(streamed, whole, atol=1e-6)
    reference, frames = musicnn_extractor_patches(long)
    np.testing.assert_array_equal(whole_starts, frames * HOP)
    np.testing.assert_allclose(whole, reference, atol=2e-3)
    # tag() in 3 s blocks (a 6.5 s file: 2 patches) against the extractor on the whole file.
    short = long[: 6 * SR + SR // 2]
    soundfile.write(path, short, SR, subtype="FLOAT")
    expected, _ = network_on_patches(tagger, musicnn_extractor_patches(short)[0])
    streamed_tags = keras_clmr.tag(path, model=tagger, block_seconds=3.0, progress=False)
    np.testing.assert_allclose(streamed_tags.probabilities, expected, atol=1e-4)


def test_streaming_memory_does_not_grow_with_the_file(music, tagger, tmp_path):
    patching = musicnn_patching(tagger)

    def peak_bytes(minutes):
        long = np.resize(music, minutes * 60 * SR)
        path = str(tmp_path / f"{minutes}.wav")
        soundfile.write(path, long, SR)
        stream = WindowStream(
            path, SR, tagger.input_samples, patching.hop_samples(None), "pad", 3 * SR,
            patching=patching,
        )  # fmt: skip
        tracemalloc.start()
        try:
            count = sum(1 for _ in stream)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert count == (1 + len(long) // HOP - N_FRAMES) // N_FRAMES + 1
        return peak

    one, four = peak_bytes(1), peak_bytes(4)
    # Four minutes of float32 audio are 15 MB and their log-mel 5.8 MB; in 3 s blocks the
    # stream holds a few blocks and their FFT temporaries whatever the length.
    assert four < 1.2 * one + 2e5, (one, four)
    assert four < 4e6, four


def test_decoded_audio_is_not_clipped(music, tagger, tmp_path):
    loud = 3.0 * music
    assert np.abs(loud).max() > 1.5
    path = str(tmp_path / "loud.wav")
    soundfile.write(path, loud, SR, subtype="FLOAT")
    reference, _ = musicnn_extractor_patches(loud)
    clipped, _ = musicnn_extractor_patches(np.clip(loud, -1, 1))
    for source in (path, loud):
        patches, _, _ = _patches_of(source, tagger)
        assert np.abs(patches - reference).max() < 2e-3
        assert np.abs(patches - clipped).max() > 0.1


def test_short_clips_pad_or_refuse_like_other_models(music, tagger):
    short = music[: N_FRAMES * HOP - HOP - 1]  # one sample short of 187 frames
    with pytest.warns(UserWarning, match="zero-padded"):
        result = keras_clmr.tag(short, model=tagger, progress=False)
    assert result.padded and result.probabilities.shape == (1, 50)
    padded = np.pad(short, (0, tagger.input_samples - len(short)))
    expected, _ = network_on_patches(tagger, musicnn_extractor_patches(padded)[0])
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-4)
    with pytest.raises(ClipTooShortError):
        keras_clmr.tag(short, model=tagger, short="error", progress=False)


def test_bad_inputs_raise_typed_errors(tagger, tmp_path):
    with pytest.raises(AudioFileNotFoundError):
        keras_clmr.tag(str(tmp_path / "missing.ogg"), model=tagger, progress=False)
    with pytest.raises(ValueError, match="float"):
        keras_clmr.tag(np.zeros(SR * 4, np.int16), model=tagger, progress=False)
    with pytest.raises(ValueError, match="onnxruntime"):
        keras_clmr.tag(np.zeros(SR * 4, np.float32), model=tagger, engine="onnxruntime")
    skipped = keras_clmr.tag(
        [str(tmp_path / "missing.ogg")], model=tagger, on_error="skip", progress=False
    )[0]
    assert skipped.error and skipped.probabilities.shape == (0, 50)


@pytest.mark.large  # converts the wheel's MTT_musicnn (~40 s on 2 cores)
def test_released_weights_on_real_music(music, musicnn_mtt_converted):
    model, _ = musicnn_mtt_converted
    reference, frames = musicnn_extractor_patches(music)
    expected, _ = network_on_patches(model, reference)
    result = keras_clmr.tag(MUSIC, model=model, progress=False)
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-4)
    np.testing.assert_allclose(result.times, frames * HOP / SR)
