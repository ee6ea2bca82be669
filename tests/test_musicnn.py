"""musicnn / VGG taggers: the log-mel frontend against librosa's numbers and a float64 numpy
reference, the architecture, and (with the musicnn wheel installed) the converted weights
against the original TF1 graph."""

import importlib.util
import json
import os

import keras
import numpy as np
import pytest

from keras_clmr.models.musicnn import (
    MSD_VGG_POOLS,
    VGG_POOLS,
    Musicnn,
    MusicnnLogMel,
    musicnn_tagger,
    slaney_mel_filterbank,
)

HAVE_WHEEL = importlib.util.find_spec("musicnn") is not None
needs_wheel = pytest.mark.skipif(
    not HAVE_WHEEL,
    reason="the musicnn wheel is not installed "
    "(pip install --no-deps musicnn==0.1.0); it holds the weights",
)


def _tone_signal():
    sr, n = 16000, 8000
    t = np.arange(n) / sr
    return (
        0.3 * np.sin(2 * np.pi * 440 * t)
        + 0.1 * np.sin(2 * np.pi * 3000 * t) * np.linspace(0, 1, n)
    ).astype(np.float32)


def test_filterbank_matches_librosa():
    # Frozen from librosa 0.11.0: librosa.filters.mel(sr=16000, n_fft=512, n_mels=96)
    # (rows = mel bands).
    fb = slaney_mel_filterbank().T
    assert fb.shape == (96, 257)
    np.testing.assert_allclose(fb.sum(), 3.071913957595825, rtol=1e-6)
    assert fb.argmax(axis=1)[[0, 10, 50, 95]].tolist() == [1, 11, 59, 248]
    np.testing.assert_allclose(
        fb.max(axis=1)[[0, 10, 50, 95]],
        [0.03199922293424606, 0.030413499101996422, 0.01307774055749178, 0.0039845602586865425],
        rtol=1e-5,
    )


@pytest.mark.multibackend
def test_logmel_matches_librosa_and_numpy_reference():
    from keras_clmr.conversion.musicnn import reference_logmel

    audio = _tone_signal()
    exact = keras.ops.convert_to_numpy(MusicnnLogMel(float16_rounding=False)(audio[None]))[0]
    assert exact.shape == (32, 96)
    # Frozen from librosa 0.11.0: log10(1 + 10000 * melspectrogram(..., pad_mode="reflect")).
    for (frame, band), value in {
        (0, 5): 3.767293,
        (0, 20): 3.4366,
        (10, 20): 0.013958,
        (31, 70): 1.248469,
        (31, 0): 3.459409,
    }.items():
        assert abs(exact[frame, band] - value) < 1e-3, (frame, band, exact[frame, band], value)
    # With musicnn's float16 rounding of the mel power, against the float64 numpy reference.
    rounded = keras.ops.convert_to_numpy(MusicnnLogMel()(audio[None]))[0]
    np.testing.assert_allclose(rounded, reference_logmel(audio), atol=2e-3)
    assert np.abs(rounded - exact).max() > 0  # the rounding is really applied


def test_architectures_shapes_and_round_trip(tmp_path):
    musicnn = Musicnn()
    assert musicnn.input_samples == 47616 and musicnn.embedding_dim == 200
    assert musicnn.count_params() == 782_029
    vgg = Musicnn(architecture="vgg")
    assert vgg.embedding_dim == 256 and vgg.count_params() == 594_180
    assert Musicnn(architecture="vgg", vgg_pools=MSD_VGG_POOLS).embedding_dim == 256
    tagger = musicnn_tagger("musicnn", tags=[f"t{i}" for i in range(50)])
    assert tagger.count_params() == 792_079
    audio = (0.1 * np.random.default_rng(0).standard_normal((2, 47616))).astype(np.float32)
    # musicnn pools over time, so it also takes longer inputs; the VGG needs exactly one patch.
    assert tuple(musicnn(np.zeros((1, 2 * 47616), np.float32)).shape) == (1, 200)
    with pytest.raises(ValueError, match="exactly 47616 samples"):
        vgg(np.zeros((1, 40000), np.float32))
    path = str(tmp_path / "tagger.keras")
    tagger.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(restored(audio)),
        keras.ops.convert_to_numpy(tagger(audio)),
        atol=1e-6,
    )


@needs_wheel
def test_vgg_pools_come_from_the_saved_graphs():
    from keras_clmr.conversion.musicnn import graph_vgg_pools

    assert graph_vgg_pools("MTT_vgg") == VGG_POOLS
    # musicnn 0.1.0's models.vgg would build VGG_POOLS for MSD_vgg; its training graph says
    # otherwise.
    assert graph_vgg_pools("MSD_vgg") == MSD_VGG_POOLS


@needs_wheel
@pytest.mark.large  # four full-size conversions
@pytest.mark.parametrize("name", ["MTT_musicnn", "MSD_musicnn", "MTT_vgg", "MSD_vgg"])
def test_conversion_parity_with_original_graph(name, request):
    from keras_clmr.conversion.musicnn import OriginalGraph, convert_musicnn, parity_audio

    # MTT_musicnn: the session's one conversion (conftest), shared with the cache-based tests.
    converted = request.getfixturevalue("musicnn_mtt_converted") if name == "MTT_musicnn" else None
    tagger, meta = converted or convert_musicnn(name)
    assert meta["parity"]["passed"]
    assert max(meta["parity"]["max_abs_diff"].values()) <= 1e-4
    assert meta["parameter_counts"]["checkpoint_variables"] == meta["parameter_counts"]["keras"]
    assert "Adam optimizer state" in meta["keys"]["ignored_keys"]
    # Independent check on a different clip: the original graph vs the Keras tagger.
    audio = parity_audio(seconds=3.2, seed=11)[: tagger.input_samples][None]
    patches = keras.ops.convert_to_numpy(tagger.backbone.frontend(audio))
    graph = OriginalGraph(name)
    try:
        expected = graph(patches)
        expected_features = graph.features(patches)
    finally:
        graph.close()
    got = keras.ops.convert_to_numpy(tagger(audio))
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert expected.std() > 1e-3  # not a degenerate output
    # The extractor's intermediate features too (float32 agreement relative to their scale).
    features = tagger.backbone.features(audio)
    assert set(expected_features) <= set(features)
    for key, value in expected_features.items():
        value_keras = keras.ops.convert_to_numpy(features[key])
        assert value_keras.shape == value.shape, key
        scale = max(1.0, float(np.abs(value).max()))
        assert float(np.abs(value_keras - value).max()) <= 1e-5 * scale, key
    assert len(tagger.tags) == 50 and tagger.tags[0] == (
        "guitar" if name.startswith("MTT") else "rock"
    )


@needs_wheel
@pytest.mark.large  # the musicnn-mtt conversion behind the cache
def test_load_pretrained_offline_from_the_wheel(musicnn_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from keras_clmr.conversion.musicnn import parity_audio
    from keras_clmr.hub import load_pretrained
    from keras_clmr.inference import tag

    tagger = load_pretrained("musicnn-mtt", task="tag")
    folder = musicnn_cache / "presets" / "musicnn-mtt-tag"
    metadata = json.loads((folder / "metadata.json").read_text())
    assert metadata["evaluation"]["conversion"]["parity"]["passed"]
    assert metadata["evaluation"]["reported_scores"]["scores"][0]["value"] == 90.67
    result = tag(parity_audio(seconds=7.0), model=tagger, sample_rate=16000, top_k=3)
    assert result.probabilities.shape == (2, 50)  # 7 s at 16 kHz = two 47616-sample windows
    assert len(result.top) == 3 and all(name in tagger.tags for name, _ in result.top)
    # Second use: served from the cache, not rebuilt.
    stamp = os.path.getmtime(folder / "model.weights.h5")
    backbone = load_pretrained("musicnn-mtt", task="embed")
    assert type(backbone).__name__ == "Musicnn" and backbone.embedding_dim == 200
    assert os.path.getmtime(folder / "model.weights.h5") == stamp
