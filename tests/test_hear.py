"""keras_clmr.hear: the HEAR 2021 API, checked by the hearvalidator package and against the
encoder run directly on the same windows."""

import keras
import numpy as np
import pytest
from hearvalidator import validate

from keras_clmr import hear
from keras_clmr.hub import save_preset

from conftest import tiny_sample_cnn


@pytest.fixture
def tiny_preset(tmp_path):
    return str(save_preset(tiny_sample_cnn(), tmp_path / "tiny"))


@pytest.mark.multibackend
def test_hearvalidator_accepts_a_sample_cnn_preset(tiny_preset, capsys):
    validate.ValidateModel("keras_clmr.hear", tiny_preset, device="cpu")()
    out = capsys.readouterr().out
    assert "Checking get_scene_embeddings" in out
    expected = "torch" if keras.backend.backend() == "torch" else "tensorflow"
    assert f"Received {expected}" in out


@pytest.mark.multibackend
def test_embeddings_equal_the_encoder_on_centred_windows(tiny_preset):
    model = hear.load_model(tiny_preset, hop_ms=5.0)
    encoder, window, hop = model.encoder, model.window, model.hop_samples
    rng = np.random.default_rng(0)
    audio = rng.uniform(-1, 1, (2, 700)).astype(np.float32)

    embeddings, times = hear.get_timestamp_embeddings(audio, model)
    embeddings = keras.ops.convert_to_numpy(embeddings)
    times = keras.ops.convert_to_numpy(times)
    count = 700 // hop + 1
    assert embeddings.shape == (2, count, model.timestamp_embedding_size)
    np.testing.assert_allclose(times[0], np.arange(count) * hop * 1000 / 22050, rtol=1e-6)
    # Window k covers samples [k*hop - window//2, k*hop - window//2 + window), zeros outside.
    for row in range(2):
        for k in (0, count // 2, count - 1):
            start = k * hop - window // 2
            frame = np.zeros(window, np.float32)
            lo, hi = max(start, 0), min(start + window, 700)
            frame[lo - start : hi - start] = audio[row, lo:hi]
            direct = keras.ops.convert_to_numpy(encoder(frame[None]))[0]
            scale = max(1.0, np.abs(direct).max())
            assert np.abs(embeddings[row, k] - direct).max() <= 1e-5 * scale

    scene = keras.ops.convert_to_numpy(hear.get_scene_embeddings(audio, model))
    n_windows = -(-700 // window)
    windows = np.pad(audio, ((0, 0), (0, n_windows * window - 700))).reshape(2, n_windows, window)
    direct = np.stack([keras.ops.convert_to_numpy(encoder(w)).mean(0) for w in windows])
    assert np.abs(scene - direct).max() <= 1e-5 * max(1.0, np.abs(direct).max())


def test_bad_audio_and_settings_are_named(tiny_preset):
    model = hear.load_model(tiny_preset)
    with pytest.raises(hear.HearModelError, match="n_sounds, n_samples"):
        hear.get_scene_embeddings(np.zeros((3,), np.float32), model)
    with pytest.raises(hear.HearModelError, match="NaN"):
        hear.get_scene_embeddings(np.full((1, 300), np.nan, np.float32), model)
    with pytest.raises(hear.HearModelError, match="hop_ms"):
        hear.load_model(tiny_preset, hop_ms=0)


@pytest.mark.large
def test_hearvalidator_accepts_musicnn_mtt(musicnn_cache, capsys):
    validate.ValidateModel("keras_clmr.hear", "musicnn-mtt", device="cpu")()
    assert "Checking get_scene_embeddings" in capsys.readouterr().out
